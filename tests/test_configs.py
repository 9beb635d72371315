"""Paper-scale configs reproduce published parameter counts (without allocating), and the
optimizer does what the config says."""

import importlib
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bigflax import configs, models
from bigflax.train import optim
from experiments import gpt2_medium, gpt2_small, gpt_tiny

EXPERIMENTS = sorted(
  p.stem
  for p in (pathlib.Path(__file__).parents[1] / "experiments").glob("*.py")
  if p.stem != "__init__"
)


def count_params(config):
  model = models.build(config.model)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
  return sum(x.size for x in jax.tree.leaves(shapes["params"]))


@pytest.mark.parametrize(
  "get_config,published",
  [
    (gpt2_small.get_config, 124_439_808),
    (gpt2_medium.get_config, 354_823_168),
  ],
)
def test_gpt2_parameter_counts(get_config, published):
  assert count_params(get_config()) == published


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiments_validate_and_build(name):
  config = importlib.import_module(f"experiments.{name}").get_config()
  configs.validate(config)
  if config.model.get("vocab_size") == 0:
    config.model.vocab_size = 384
  models.build(config.model)  # every field is one the model has


def test_weight_decay_skips_biases_norms_and_positions():
  config = gpt_tiny.get_config()
  config.model.update(vocab_size=256, position="learned")  # gpt_tiny's own is rope
  params = models.build(config.model).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
  mask = optim.path_mask(params["params"], config.optim.no_decay, match=False)
  flat = {optim.param_path(p): m for p, m in jax.tree_util.tree_leaves_with_path(mask)}
  assert flat["layer_0/mlp/up/kernel"] and flat["token_embed/embedding"]
  assert not flat["layer_0/mlp/up/bias"]
  assert not flat["layer_0/attention_norm/scale"]
  assert not flat["position_embed/embedding"]


def test_schedule_warmup_then_cosine():
  config = configs.base().optim
  config.update(lr=1.0, warmup_steps=10, final_lr_fraction=0.1, decay="cosine")
  schedule = optim.schedule(config, num_steps=110)
  assert schedule(0) == 0 and schedule(5) == pytest.approx(0.5)
  assert schedule(10) == pytest.approx(1.0)
  # halfway through the decay: cosine gives alpha + (1 - alpha) / 2
  assert schedule(60) == pytest.approx(0.1 + 0.9 * 0.5, abs=1e-6)
  assert schedule(110) == pytest.approx(0.1)


def test_clipping_bounds_the_update():
  config = configs.base().optim
  config.update(lr=1.0, warmup_steps=0, decay="constant", weight_decay=0.0, clip_norm=1.0)
  tx, _ = optim.make(config, num_steps=10)
  params = {"w": jnp.zeros(4)}
  grads = {"w": jnp.array([300.0, 400.0, 0.0, 0.0])}  # norm 500 -> clipped to 1
  clipped = optax.clip_by_global_norm(1.0).update(grads, optax.EmptyState())[0]
  np.testing.assert_allclose(clipped["w"], [0.6, 0.8, 0, 0], rtol=1e-6)
  updates, _ = tx.update(grads, tx.init(params), params)
  # Adam's first step moves each coordinate by -lr * sign(g) (for g != 0)
  np.testing.assert_allclose(updates["w"], [-1, -1, 0, 0], atol=1e-4)


def test_a_run_written_before_a_field_existed_loads_with_its_default(tmp_path):
  config = configs.base()
  config.model = dict(name="gpt", num_layers=3)
  saved = json.loads(config.to_json())
  del saved["distill"], saved["optim"]["freeze"]
  (tmp_path / "config.json").write_text(json.dumps(saved))
  loaded = configs.load(str(tmp_path))
  assert loaded.distill.teacher == "" and loaded.optim.freeze == ""
  assert loaded.model.to_dict() == {"name": "gpt", "num_layers": 3}


def test_a_run_from_before_lora_resumes_with_lora_off(tmp_path):
  saved = configs.base()
  saved.model = dict(name="gpt", num_layers=2)
  new = configs.base()
  new.model = dict(name="gpt", num_layers=2, lora=configs.lora())
  configs.check_resumable(saved, new, str(tmp_path))  # rank 0: the same model
  new.model.lora.rank = 8
  with pytest.raises(ValueError, match="model.lora.rank"):
    configs.check_resumable(saved, new, str(tmp_path))


@pytest.mark.parametrize("field", ["keep_checkpoints", "max_skipped_steps"])
def test_negative_counts_are_refused_by_name(field):
  config = gpt_tiny.get_config()
  config.train[field] = -1
  with pytest.raises(ValueError, match=f"train.{field}=-1"):
    configs.validate(config)
