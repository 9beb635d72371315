"""Knowledge distillation and continued training from another run's checkpoint."""

import jax
import numpy as np
import pytest

from bigflax import configs, losses
from bigflax import run as run_lib
from bigflax.train import checkpoint, loop, partitioning, writers
from conftest import SHARED_DATA
from helpers import minilm_path, tiny_config


def test_distillation_kl_matches_numpy():
  rng = np.random.default_rng(0)
  student, teacher = rng.normal(size=(2, 3, 7)) * 3, rng.normal(size=(2, 3, 7)) * 3
  t = 2.5

  def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)

  p, q = softmax(teacher / t), softmax(student / t)
  expected = t**2 * np.sum(p * np.log(p / q), axis=-1)
  np.testing.assert_allclose(losses.distillation_kl(student, teacher, t), expected, rtol=1e-5)
  assert np.allclose(losses.distillation_kl(teacher, teacher, t), 0, atol=1e-6)
  # The teacher is a target: no gradient reaches it.
  grad = jax.grad(lambda x: losses.distillation_kl(student, x, t).sum())(teacher)
  assert not np.any(grad)


@pytest.fixture(scope="module")
def mesh():
  return partitioning.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])


@pytest.fixture(scope="module")
def teacher(tfds_dir, tmp_path_factory, mesh):
  workdir = str(tmp_path_factory.mktemp("teacher"))
  run = run_lib.build_training(tiny_config(tfds_dir), workdir, mesh=mesh).job
  loop.train(run)
  return workdir


def test_student_moves_toward_the_teacher(tfds_dir, tmp_path, mesh, teacher):
  config = tiny_config(tfds_dir, embed_dim=32, mlp_dim=64, num_heads=2)
  config.distill.update(teacher=teacher, alpha=0.0, temperature=2.0, hidden_weight=1.0)
  config.train.num_steps = 20
  run = run_lib.build_training(config, str(tmp_path), mesh=mesh).job
  assert run.state.params["distill_projection"]["kernel"].shape == (32, 64)
  loop.train(run)
  train = writers.read(str(tmp_path), "train")
  first, last = train[1], train[20]
  assert last["kd_loss"] < 0.7 * first["kd_loss"]
  assert last["hidden_loss"] < first["hidden_loss"]
  # alpha=0: the loss is the distillation terms alone.
  np.testing.assert_allclose(last["loss"], last["kd_loss"] + last["hidden_loss"], rtol=1e-5)


def test_a_teacher_with_another_vocabulary_is_refused(tfds_dir, tmp_path, mesh, teacher):
  config = tiny_config(tfds_dir)
  config.distill.teacher = teacher
  config.tokenizer.update(kind="hf", path=str(minilm_path()))
  with pytest.raises(configs.UsageError, match="another tokenizer"):
    run_lib.build_training(config, str(tmp_path), mesh=mesh)


def moments(opt_state):
  return [x for x in jax.tree.leaves(opt_state) if x.ndim > 0]


def test_continued_training_on_new_data_keeps_or_resets_the_optimizer(
  tfds_dir, tmp_path, mesh, teacher
):
  config = tiny_config(tfds_dir)
  config.data.update(name="tiny_shakespeare", source_dir=str(SHARED_DATA / "tiny_shakespeare"))
  config.init_from = teacher
  source = checkpoint.restore_params(f"{teacher}/checkpoints")

  fresh = run_lib.build_training(config, str(tmp_path / "reset"), mesh=mesh).job
  np.testing.assert_array_equal(
    fresh.state.params["final_norm"]["scale"], source["final_norm"]["scale"]
  )
  assert not any(np.any(x) for x in moments(fresh.state.opt_state))

  config.init_keep_optimizer = True
  kept = run_lib.build_training(config, str(tmp_path / "keep"), mesh=mesh).job
  assert int(kept.state.step) == 0  # a new run: its own schedule and data from the start
  assert np.mean([np.any(x) for x in moments(kept.state.opt_state)]) > 0.9
  loop.train(kept)
  # Shakespeare is new to the model, yet it starts far below a random model's loss.
  assert writers.read(str(tmp_path / "keep"), "train")[1]["loss"] < 0.8 * np.log(256)


def test_the_teacher_is_sharded_by_the_run_rules(tfds_dir, tmp_path, teacher):
  mesh = partitioning.make_mesh(dict(data=2, fsdp=2, tensor=2))
  config = tiny_config(tfds_dir, embed_dim=32, mlp_dim=64, num_heads=2)
  config.distill.teacher = teacher
  config.train.num_steps = 2
  run = run_lib.build_training(config, str(tmp_path), mesh=mesh).job
  up = run.frozen["layer_0"]["mlp"]["up"]["kernel"]  # (embed, mlp) -> (fsdp, tensor)
  assert up.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  assert up.addressable_shards[0].data.shape == (32, 64)  # of (64, 128)
  loop.train(run)
  assert np.isfinite(writers.read(str(tmp_path), "train")[2]["kd_loss"])
