"""Training state and its sharded creation."""

from collections.abc import Callable
import re
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import numpy as np
import optax

from bigflax.train import optim, partitioning


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array  # base key; step s uses fold_in(rng, s), so a resume replays the same noise


def _boxed_state_fn(init_params, optimizer, rng):
  params_rng, state_rng = jax.random.split(rng)

  def boxed_state():
    params = init_params(params_rng)
    return TrainState(
      step=jax.numpy.zeros((), jax.numpy.int32),
      params=params,
      opt_state=optimizer.init(params),
      rng=state_rng,
    )

  return boxed_state


def layout(
  init_params: Callable[[jax.Array], Any],
  optimizer: optax.GradientTransformation,
  rng: jax.Array,
  mesh,
  rules,
):
  """(abstract state, shardings) without allocating anything: the state's
  ShapeDtypeStructs carrying their shardings, and the shardings tree jit uses."""
  boxed = jax.eval_shape(_boxed_state_fn(init_params, optimizer, rng))
  shapes = nn.unbox(boxed)
  # Spread each sharding over its subtree: flax gives one for an empty optimizer-state
  # node (optax's MaskedNode of a frozen parameter), which then keeps the state's shape.
  shardings = jax.tree.map(
    lambda sharding, subtree: jax.tree.map(lambda _: sharding, subtree),
    partitioning.logical_shardings(boxed, mesh, rules),
    shapes,
  )
  return abstract(shardings, shapes), shardings


def create(
  init_params: Callable[[jax.Array], Any],
  optimizer: optax.GradientTransformation,
  rng: jax.Array,
  shardings,
):
  """Initialises the state directly in its sharded layout (`layout`'s shardings).

  `init_params(rng)` returns parameters boxed with logical axis names (what flax's
  `model.init(...)['params']` gives). The state is unboxed.
  """
  boxed_state = _boxed_state_fn(init_params, optimizer, rng)
  return jax.jit(lambda: nn.unbox(boxed_state()), out_shardings=shardings)()


def param_layout(init_params: Callable[[jax.Array], Any], mesh, rules):
  """(abstract parameters, their shardings) of a model, nothing allocated: what inference
  restores a checkpoint's parameters onto."""
  boxed = jax.eval_shape(init_params, jax.random.key(0))
  shardings = partitioning.logical_shardings(boxed, mesh, rules)
  return abstract(shardings, nn.unbox(boxed)), shardings


def abstract(state_shardings, shapes) -> Any:
  """ShapeDtypeStructs carrying shardings: the target a checkpoint restores onto."""
  return jax.tree.map(
    lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, state_shardings
  )


def num_params(params) -> int:
  return sum(x.size for x in jax.tree.leaves(params))


def merge_params(target, source: dict, new: str = "", optional: str = "") -> tuple[object, dict]:
  """Takes every parameter of `target` from `source` (same path and shape), except those
  whose path matches the regex `new`, which keep their fresh initialisation, and those
  matching the regex `optional` that `source` lacks (e.g. LoRA adapters), which do too.

  Returns (params, report); report lists 'restored', 'new' and 'unused' (source
  parameters the target has no place for, e.g. a pretraining head). A target parameter
  neither in `source` nor matched by `new`, or one whose shape differs, is an error.
  """
  flat_source = {optim.param_path(p): x for p, x in jax.tree_util.tree_leaves_with_path(source)}
  report = {"restored": [], "new": [], "unused": []}
  problems = []

  def take(path, x):
    name = optim.param_path(path)
    if (new and re.search(new, name)) or (
      optional and re.search(optional, name) and name not in flat_source
    ):
      report["new"].append(name)
      return x
    if name not in flat_source:
      problems.append(f"{name}: not in the source and not matched by init.new={new!r}")
      return x
    value = flat_source[name]
    if tuple(value.shape) != tuple(x.shape):
      problems.append(f"{name}: source shape {tuple(value.shape)} != model {tuple(x.shape)}")
      return x
    report["restored"].append(name)
    return jax.device_put(np.asarray(value, x.dtype), x.sharding)

  params = jax.tree_util.tree_map_with_path(take, target)
  if problems:
    raise ValueError("Cannot initialise from the given parameters:\n  " + "\n  ".join(problems))
  used = set(report["restored"])
  report["unused"] = sorted(k for k in flat_source if k not in used)
  return params, report
