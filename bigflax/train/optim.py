"""Optimizer: AdamW with warmup + decay, global-norm clipping and a weight-decay mask."""

import re

import jax
import ml_collections
import optax


def schedule(config: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
  """Linear warmup to `lr`, then cosine or linear decay to `lr * final_lr_fraction`."""
  warmup = config.warmup_steps
  decay_steps = max(num_steps - warmup, 1)
  end = config.lr * config.final_lr_fraction
  if config.decay == "cosine":
    decay = optax.cosine_decay_schedule(config.lr, decay_steps, alpha=config.final_lr_fraction)
  elif config.decay == "linear":
    decay = optax.linear_schedule(config.lr, end, decay_steps)
  elif config.decay == "constant":
    decay = optax.constant_schedule(config.lr)
  else:
    raise ValueError(f"optim.decay={config.decay!r}; choose 'cosine', 'linear' or 'constant'.")
  if warmup == 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, config.lr, warmup), decay], [warmup])


def param_path(path) -> str:
  """'layer_0/mlp/up/kernel' from a jax key path (box wrappers skipped)."""
  return "/".join(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def path_mask(params, pattern: str, match: bool = True):
  """A tree of bools: does each parameter's path match the regex `pattern`?"""
  regex = re.compile(pattern)
  return jax.tree_util.tree_map_with_path(
    lambda path, _: bool(regex.search(param_path(path))) == match, params
  )


def make(config: ml_collections.ConfigDict, num_steps: int, train_only: str = ""):
  """Returns (optax transformation, learning-rate schedule).

  Parameters whose path matches the regex `config.freeze`, or does not match the regex
  `train_only` (if given; LoRA trains its adapters alone), get no updates and no optimizer
  state.
  """
  lr = schedule(config, num_steps)
  tx = optax.chain(
    optax.clip_by_global_norm(config.clip_norm) if config.clip_norm else optax.identity(),
    optax.adamw(
      lr,
      b1=config.b1,
      b2=config.b2,
      eps=config.eps,
      weight_decay=config.weight_decay,
      mask=lambda params: path_mask(params, config.no_decay, match=False),
    ),
  )
  if config.get("freeze") or train_only:
    labels = lambda params: jax.tree.map(
      lambda t: "trained" if t else "frozen", trained_mask(config, params, train_only)
    )
    tx = optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, labels)
  return tx, lr


def trained_mask(config: ml_collections.ConfigDict, params, train_only: str = ""):
  """A tree of bools: which parameters `make(config, ..., train_only)` updates."""

  def trained(path, _):
    name = param_path(path)
    frozen = bool(config.get("freeze")) and re.search(config.freeze, name) is not None
    return not frozen and (not train_only or re.search(train_only, name) is not None)

  return jax.tree_util.tree_map_with_path(trained, params)
