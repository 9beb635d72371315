"""MLM masking statistics and a short pretraining run through the shared trainer."""

import jax
import numpy as np

from bigflax import run as run_lib
from bigflax.tasks import mlm
from bigflax.train import loop, partitioning, writers
from experiments import bert_mlm_tiny
from helpers import TINY_MODEL


def test_masking_statistics_follow_bert():
  tokens = np.random.default_rng(0).integers(10, 200, size=(256, 128)).astype(np.int32)
  out = mlm.mask_tokens(7, {"tokens": tokens}, seed=0, rate=0.15, mask_id=300, vocab_size=259)
  chosen = out["weights"] > 0
  assert abs(chosen.mean() - 0.15) < 0.005
  masked = out["inputs"] == 300
  unchanged = out["inputs"] == tokens
  assert not (masked & ~chosen).any() and (unchanged | chosen).all()  # only chosen change
  assert abs(masked[chosen].mean() - 0.8) < 0.01
  assert abs((unchanged & chosen).sum() / chosen.sum() - 0.1 - 1 / 259 * 0.1) < 0.01
  np.testing.assert_array_equal(out["targets"], tokens)
  again = mlm.mask_tokens(7, {"tokens": tokens}, seed=0, rate=0.15, mask_id=300, vocab_size=259)
  np.testing.assert_array_equal(again["inputs"], out["inputs"])  # a function of the step
  other = mlm.mask_tokens(8, {"tokens": tokens}, seed=0, rate=0.15, mask_id=300, vocab_size=259)
  assert not np.array_equal(other["weights"], out["weights"])


def test_mlm_loss_goes_down(tfds_dir, tmp_path):
  config = bert_mlm_tiny.get_config()
  config.model.update(**TINY_MODEL)
  config.data.update(seq_len=64, global_batch_size=16, data_dir=tfds_dir)
  config.train.update(num_steps=40, eval_every=40, eval_steps=4, log_every=1)
  config.optim.update(lr=3e-3, warmup_steps=5)
  mesh = partitioning.make_mesh(dict(data=2, fsdp=1, tensor=1), jax.devices()[:2])
  run = run_lib.build_training(config, str(tmp_path), mesh=mesh).job
  loop.train(run)
  losses = [r["loss"] for r in writers.read(str(tmp_path)).values()]
  assert np.mean(losses[:3]) > 5.0  # ~ln(384) at initialisation
  assert np.mean(losses[-5:]) < 3.6
  assert writers.read(str(tmp_path), "validation")[40]["loss"] < 3.6
