"""The trainer end to end, in-process: sharded layouts agree with one device, gradient
accumulation equals the full batch, loss goes down on Tiny Shakespeare."""

import jax
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from bigflax import run as run_lib
from bigflax.train import loop, partitioning, writers
from conftest import SHARED_DATA
from experiments import gpt_tiny


def tiny_config(tfds_dir, **train):
  config = gpt_tiny.get_config()
  config.model.update(num_layers=2, num_heads=8, embed_dim=64, mlp_dim=128, max_len=32)
  config.data.update(seq_len=32, global_batch_size=8, data_dir=tfds_dir)
  config.optim.warmup_steps = 1
  config.train.update(num_steps=3, log_every=1, eval_every=0, checkpoint_every=100)
  config.train.update(train)
  return config


def train_losses(config, workdir, mesh_shape, num_devices):
  mesh = partitioning.make_mesh(mesh_shape, jax.devices()[:num_devices])
  run = run_lib.build_training(config, str(workdir), mesh=mesh).job
  state = loop.train(run)
  return [r["loss"] for r in writers.read(str(workdir)).values()], state


LAYOUTS = {
  "data": dict(data=8, fsdp=1, tensor=1),
  "fsdp": dict(data=1, fsdp=8, tensor=1),
  "tensor": dict(data=1, fsdp=1, tensor=8),
  "2x2x2": dict(data=2, fsdp=2, tensor=2),
}


@pytest.fixture(scope="module")
def one_device_losses(tfds_dir, tmp_path_factory):
  losses, _ = train_losses(
    tiny_config(tfds_dir), tmp_path_factory.mktemp("one"), dict(data=1, fsdp=1, tensor=1), 1
  )
  return losses


@pytest.mark.parametrize("layout", LAYOUTS)
def test_sharded_layouts_match_one_device(layout, one_device_losses, tfds_dir, tmp_path):
  losses, state = train_losses(tiny_config(tfds_dir), tmp_path, LAYOUTS[layout], 8)
  np.testing.assert_allclose(losses, one_device_losses, atol=1e-5, rtol=0)
  assert len(losses) == 3 and losses[-1] < losses[0]

  # The weights really are laid out as the default rules say: embed over fsdp,
  # mlp/heads/vocab over tensor, replicated over data.
  kernel = state.params["layer_0"]["mlp"]["up"]["kernel"]  # (embed=64, mlp=128)
  assert kernel.sharding.spec == P("fsdp", "tensor")
  shape = LAYOUTS[layout]
  assert kernel.addressable_shards[0].data.shape == (64 // shape["fsdp"], 128 // shape["tensor"])
  mu = state.opt_state[1][0].mu["layer_0"]["mlp"]["up"]["kernel"]
  assert mu.sharding.spec == P("fsdp", "tensor")


def test_gradient_accumulation_equals_full_batch(one_device_losses, tfds_dir, tmp_path):
  losses, _ = train_losses(
    tiny_config(tfds_dir, microbatches=4), tmp_path, dict(data=1, fsdp=1, tensor=1), 1
  )
  np.testing.assert_allclose(losses, one_device_losses, atol=1e-5, rtol=0)


def test_loss_goes_down_on_tiny_shakespeare(tfds_dir, tmp_path):
  config = tiny_config(tfds_dir, num_steps=40, eval_every=40, eval_steps=4)
  config.data.update(
    name="tiny_shakespeare", source_dir=str(SHARED_DATA / "tiny_shakespeare"), global_batch_size=16
  )
  config.optim.lr = 3e-3
  losses, _ = train_losses(config, tmp_path, dict(data=-1, fsdp=1, tensor=1), 2)
  validation = writers.read(str(tmp_path), "validation")[40]["loss"]
  # Starts near uniform (ln 259 = 5.6 nats) and within 40 steps falls by over 2 nats.
  assert np.mean(losses[:3]) > 5.0
  assert np.mean(losses[-5:]) < 3.5 and validation < 3.5


def test_bfloat16_compute_keeps_float32_params(one_device_losses, tfds_dir, tmp_path):
  config = tiny_config(tfds_dir)
  config.model.dtype = "bfloat16"
  losses, state = train_losses(config, tmp_path, dict(data=1, fsdp=1, tensor=1), 1)
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(state.params))
  # Same model and data, lower-precision matmuls: close to the float32 run, not equal.
  np.testing.assert_allclose(losses, one_device_losses, atol=0.05)
  assert losses != one_device_losses
