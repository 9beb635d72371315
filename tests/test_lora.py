"""LoRA: the adapted model starts as the base model, trains only its adapters (no optimizer
state for the rest), merges into plain weights with the same outputs, and its adapters
save and load on their own."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from bigflax import configs, models, tasks, workdir
from bigflax.models import gpt, layers, lora
from bigflax.tasks import lm
from bigflax.train import optim
from bigflax.train import step as step_lib
from bigflax.train.state import TrainState

L, D, H, MLP, R = 2, 16, 2, 48, 4
TINY = dict(vocab_size=40, num_layers=L, num_heads=H, embed_dim=D, mlp_dim=MLP, max_len=16)
ALL = r"(query|key|value|out|up|down)/kernel"


def adapted(rank=R, targets=r"attention/(query|value)/kernel", **kwargs):
  config = dict(configs.lora(rank=rank, alpha=8.0, targets=targets))
  return gpt.GPT(**TINY, lora=lora.from_config(config), **kwargs)


def init(model):
  return nn.unbox(jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])


def apply(model, params, x):
  return jax.jit(model.apply)({"params": params}, x)


def tokens():
  return jax.random.randint(jax.random.key(1), (4, 12), 0, 40)


def without_adapters(params) -> dict:
  if not isinstance(params, dict):
    return params
  return {k: without_adapters(v) for k, v in params.items() if not k.startswith("lora_")}


def size(tree) -> int:
  return sum(x.size for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("scan", [False, True])
def test_adapted_model_starts_as_the_base_model(scan):
  base, model = gpt.GPT(**TINY, scan_layers=scan), adapted(targets=ALL, scan_layers=scan)
  params = init(model)
  for path, x in lora.adapters(params).items():
    assert (np.abs(x).max() == 0) == path.endswith("lora_b"), path
  # B = 0: merging changes no weight, and the base model gives the same outputs.
  base_params = lora.merge(params, model.lora)
  jax.tree.map(np.testing.assert_array_equal, base_params, without_adapters(params))
  np.testing.assert_array_equal(apply(model, params, tokens()), apply(base, base_params, tokens()))


@pytest.mark.parametrize(
  "targets,per_layer",
  [
    # Hu et al.'s choice, W_q and W_v: (d + d) r each.
    (r"attention/(query|value)/kernel", 2 * (D + D) * R),
    # every projection: q, k, v, out are d x d; up is d x mlp, down mlp x d.
    (ALL, 4 * (D + D) * R + 2 * (D + MLP) * R),
  ],
)
def test_only_the_adapters_train(targets, per_layer):
  model = adapted(targets=targets)
  params = init(model)
  assert size(lora.adapters(params)) == L * per_layer
  assert size(params) == size(init(gpt.GPT(**TINY))) + L * per_layer

  config = configs.base().optim
  config.update(lr=0.05, warmup_steps=0, decay="constant")
  tx, _ = optim.make(config, num_steps=10, train_only=lora.ADAPTERS)
  opt_state = tx.init(params)
  # Adam's two moments for the adapters and nothing for the frozen weights (scalars are
  # step counts).
  assert sum(x.size for x in jax.tree.leaves(opt_state) if x.ndim) == 2 * L * per_layer

  def train(trained_mask):
    train_step = jax.jit(
      step_lib.make_train_step(
        tasks.trainer_loss(lm, model), tx, optax.constant_schedule(0.05), trained=trained_mask
      )
    )
    state = TrainState(step=jnp.array(0), params=params, opt_state=opt_state, rng=jax.random.key(2))
    batch = {"inputs": tokens()[:, :-1], "targets": tokens()[:, 1:]}
    losses = []
    for _ in range(5):
      state, metrics = train_step(state, batch)
      losses.append(float(metrics["loss"]))
    assert losses[-1] < losses[0]
    return state.params

  trained = train(None)
  # Skipping the frozen weights' gradients changes nothing but the cost (and the float
  # rounding: Adam's steps are 0.05, a wrong gradient would show at 1e-2).
  jax.tree.map(
    functools.partial(np.testing.assert_allclose, atol=1e-4),
    trained,
    train(functools.partial(optim.trained_mask, config, train_only=lora.ADAPTERS)),
  )
  changed = {
    k for k, x in lora.adapters(trained).items() if not np.array_equal(x, lora.adapters(params)[k])
  }
  assert changed == set(lora.adapters(params))
  jax.tree.map(np.testing.assert_array_equal, without_adapters(trained), without_adapters(params))


@pytest.mark.parametrize("scan", [False, True])
def test_merged_weights_give_the_adapted_outputs(scan):
  model = adapted(targets=ALL, scan_layers=scan)
  params = init(model)
  # Trained-looking adapters: both factors nonzero.
  params = jax.tree_util.tree_map_with_path(
    lambda path, x: (
      x + 0.3 * jax.random.normal(jax.random.key(len(str(path))), x.shape)
      if "lora_" in jax.tree_util.keystr(path)
      else x
    ),
    params,
  )
  merged = lora.merge(params, model.lora)
  assert not lora.adapters(merged)
  plain = gpt.GPT(**TINY, scan_layers=scan)
  assert jax.tree.structure(merged) == jax.tree.structure(init(plain))
  adapted_out = apply(model, params, tokens())
  assert not np.allclose(adapted_out, apply(plain, init(plain), tokens()), atol=1e-3)
  np.testing.assert_allclose(apply(plain, merged, tokens()), adapted_out, atol=2e-5)


def test_adapters_save_and_load_alone(tmp_path):
  model = adapted()
  params = jax.tree.map(lambda x: x + 1.0, init(model))
  path = str(tmp_path / "adapters.safetensors")
  lora.save(path, params)
  fresh = init(model)
  loaded = lora.load(path, fresh)
  jax.tree.map(np.testing.assert_array_equal, lora.adapters(loaded), lora.adapters(params))
  # Everything else is the target's own.
  np.testing.assert_array_equal(
    loaded["token_embed"]["embedding"], fresh["token_embed"]["embedding"]
  )
  with pytest.raises(
    ValueError,
    match=r"mis-shaped: layer_0/attention/query/lora_a: "
    r"file \(16, 4\) != model \(16, 2\)",
  ):
    lora.load(path, init(adapted(rank=2)))
  with pytest.raises(ValueError, match=r"missing: layer_0/mlp/up/lora_a"):
    lora.load(path, init(adapted(targets=r"(query|value|up)/kernel")))


def test_lora_config_errors_name_the_field():
  with pytest.raises(ValueError, match=r"model.lora.rank=-1"):
    lora.from_config(configs.lora(rank=-1))
  with pytest.raises(ValueError, match=r"model.lora.targets='\(' is not a regex"):
    lora.from_config(configs.lora(rank=2, targets="("))
  with pytest.raises(ValueError, match=r"model.lora needs exactly the fields"):
    lora.from_config(dict(rank=2))
  assert lora.from_config(configs.lora()) is None  # rank 0 = off
  config = ml_collections.ConfigDict(dict(name="gpt", **TINY, lora=configs.lora(rank=4)))
  assert models.lora_config(models.build(config)) == layers.LoRA(4, 16.0, 0.0, config.lora.targets)
  config.lora.rank = 0
  assert models.lora_config(models.build(config)) is None
  vit = ml_collections.ConfigDict(
    dict(name="vit", num_classes=2, num_layers=1, num_heads=1, embed_dim=8, mlp_dim=8)
  )
  assert models.lora_config(models.build(vit)) is None  # a model that offers no LoRA


@pytest.mark.slow
def test_lora_run_from_a_base_run(tfds_dir, tmp_path):
  """`--config.init_from=RUN --config.model.lora.rank=8`: the base weights come from the
  run, the adapters start fresh, only they train, and adapters.safetensors holds them."""
  from bigflax import run as run_lib
  from bigflax.train import checkpoint
  from experiments import gpt_tiny

  def config(**updates):
    c = gpt_tiny.get_config()
    c.model.update(num_layers=2, embed_dim=32, num_heads=2, mlp_dim=64, max_len=32)
    c.data.update(seq_len=32, global_batch_size=8, data_dir=tfds_dir)
    c.train.update(num_steps=2, eval_every=0, checkpoint_every=2, log_every=1)
    c.optim.update(warmup_steps=0, lr=1e-2)
    c.sample.max_new_tokens = 2
    c.update(updates)
    return c

  run_lib.train(config(), str(tmp_path / "base"))
  base = checkpoint.restore_params(str(tmp_path / "base" / "checkpoints"))
  adapt = config(init_from=str(tmp_path / "base"))
  adapt.model.lora.rank = 8
  run_lib.train(adapt, str(tmp_path / "lora"))
  params = checkpoint.restore_params(str(tmp_path / "lora" / "checkpoints"))

  adapters = lora.adapters(params)
  assert sorted(adapters) == [
    f"layer_{i}/attention/{p}/lora_{ab}"
    for i in range(2)
    for p in ("query", "value")
    for ab in "ab"
  ]
  assert all(np.abs(x).max() > 0 for x in adapters.values())  # B left zero
  jax.tree.map(np.testing.assert_array_equal, without_adapters(params), without_adapters(base))
  saved = lora.load(str(tmp_path / "lora" / workdir.ADAPTERS), jax.tree.map(np.zeros_like, params))
  jax.tree.map(np.testing.assert_array_equal, lora.adapters(saved), adapters)


def test_lora_fine_tune_of_a_classifier_trains_the_new_head_too():
  """sst2_minilm with LoRA: the adapters and the fresh classifier (init_new) train, the
  pretrained BERT does not."""
  from bigflax import run as run_lib
  from experiments import sst2_minilm

  config = sst2_minilm.get_config()
  config.model.update(num_layers=2, lora=configs.lora(rank=4))
  model = models.build(config.model)
  shapes = jax.eval_shape(
    lambda: nn.unbox(
      model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32), head="classify")["params"]
    )
  )
  mask = optim.trained_mask(config.optim, shapes, run_lib.trainable(config, model))
  trained = sorted(optim.param_path(p) for p, t in jax.tree_util.tree_leaves_with_path(mask) if t)
  assert trained == sorted(
    ["classifier/bias", "classifier/kernel"]
    + [
      f"layer_{i}/attention/{p}/lora_{ab}"
      for i in range(2)
      for p in ("query", "value")
      for ab in "ab"
    ]
  )
