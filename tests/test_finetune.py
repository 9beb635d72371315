"""Transfer learning: partial restore by parameter-path patterns, and frozen parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bigflax import configs
from bigflax.train import optim, state


def tree(**leaves):
  return {k: {"kernel": jnp.full(v, 1.0)} for k, v in leaves.items()}


def test_merge_params_reports_restored_new_and_unused():
  target = tree(encoder=(2, 3), classifier=(3, 2))
  source = {"encoder": {"kernel": np.full((2, 3), 7.0)}, "mlm_head": {"kernel": np.ones(4)}}
  params, report = state.merge_params(target, source, new=r"^classifier/")
  np.testing.assert_array_equal(params["encoder"]["kernel"], np.full((2, 3), 7.0))
  np.testing.assert_array_equal(params["classifier"]["kernel"], np.ones((3, 2)))
  assert report == {
    "restored": ["encoder/kernel"],
    "new": ["classifier/kernel"],
    "unused": ["mlm_head/kernel"],
  }


def test_merge_params_errors_name_what_is_unmatched():
  target = tree(encoder=(2, 3), classifier=(3, 2))
  with pytest.raises(
    ValueError,
    match=r"classifier/kernel: not in the source and not "
    r"matched by init.new=''",
  ):
    state.merge_params(target, {"encoder": {"kernel": np.zeros((2, 3))}})
  with pytest.raises(
    ValueError,
    match=r"encoder/kernel: source shape \(3, 3\) != model "
    r"\(2, 3\)",
  ):
    state.merge_params(target, {"encoder": {"kernel": np.zeros((3, 3))}}, new="classifier")


def test_frozen_parameters_get_no_updates():
  config = configs.base().optim
  config.update(lr=0.1, warmup_steps=0, decay="constant", freeze=r"^encoder/")
  tx, _ = optim.make(config, num_steps=10)
  params = tree(encoder=(2, 3), classifier=(3, 2))
  grads = jax.tree.map(jnp.ones_like, params)
  opt_state = tx.init(params)
  updates, _ = tx.update(grads, opt_state, params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_array_equal(new["encoder"]["kernel"], params["encoder"]["kernel"])
  assert not np.allclose(new["classifier"]["kernel"], params["classifier"]["kernel"])
  # Frozen parameters carry no Adam moments.
  moments = [x.size for x in jax.tree.leaves(opt_state)]
  assert sum(moments) < 2 * (6 + 6)


def test_classifier_starts_from_a_bigflax_mlm_checkpoint(tfds_dir, tmp_path):
  from bigflax import run as run_lib
  from bigflax.train import loop, partitioning, writers
  from conftest import SHARED_DATA
  from experiments import bert_mlm_tiny
  from helpers import TINY_MODEL

  mesh = partitioning.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  pretrain = bert_mlm_tiny.get_config()
  pretrain.model.update(**TINY_MODEL)
  pretrain.data.update(seq_len=64, global_batch_size=8, data_dir=tfds_dir)
  pretrain.train.update(num_steps=2, eval_every=0, checkpoint_every=2)
  run = run_lib.build_training(pretrain, str(tmp_path / "mlm"), mesh=mesh).job
  pretrained = loop.train(run).params

  finetune = bert_mlm_tiny.get_config()
  finetune.model.update(**TINY_MODEL, num_classes=2)
  finetune.task.name = "classify"
  finetune.data.update(
    name="sst2",
    source_dir=str(SHARED_DATA / "sst2"),
    seq_len=64,
    global_batch_size=8,
    data_dir=tfds_dir,
  )
  finetune.update(init_from=str(tmp_path / "mlm"), init_new=r"^classifier/")
  finetune.optim.freeze = r"^layer_0/"
  finetune.train.update(num_steps=3, eval_every=3, eval_steps=2, checkpoint_every=3)
  run = run_lib.build_training(finetune, str(tmp_path / "cls"), mesh=mesh).job
  np.testing.assert_array_equal(
    run.state.params["token_embed"]["embedding"], pretrained["token_embed"]["embedding"]
  )
  state = loop.train(run)
  np.testing.assert_array_equal(
    state.params["layer_0"]["mlp"]["up"]["kernel"], pretrained["layer_0"]["mlp"]["up"]["kernel"]
  )  # frozen
  assert not np.array_equal(
    state.params["layer_1"]["mlp"]["up"]["kernel"], pretrained["layer_1"]["mlp"]["up"]["kernel"]
  )
  assert "f1/macro" in writers.read(str(tmp_path / "cls"), "validation")[3]
