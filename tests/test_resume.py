"""Checkpoints: a run killed at any moment resumes and reproduces the uninterrupted run bit
for bit; SIGTERM saves and exits cleanly; parameters saved on 8 devices restore on 1."""

import os
import re
import signal
import subprocess
import sys
import time

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import numpy as np
import orbax.checkpoint as ocp
import pytest

from bigflax.train import checkpoint
from helpers import TINY, losses, run, start

pytestmark = pytest.mark.slow
STEPS = 16


def args(tfds_dir, *extra):
  return [
    *TINY,
    f"--config.data.data_dir={tfds_dir}",
    f"--config.train.num_steps={STEPS}",
    "--config.train.checkpoint_every=4",
    *extra,
  ]


def final_params(workdir):
  state = ocp.StandardCheckpointer().restore(
    os.path.join(workdir, "checkpoints", str(STEPS), "state")
  )
  return state["params"]


def wait_for(predicate, proc, timeout=240):
  deadline = time.time() + timeout
  while not predicate():
    assert proc.poll() is None, proc.stdout.read()
    assert time.time() < deadline, "timed out"
    time.sleep(0.01)


def test_kill_9_then_resume_matches_uninterrupted_run(tfds_dir, tmp_path):
  # Packed documents (segment ids, restarting positions) are a function of the batch:
  # the resume stays bit-exact with them on.
  packed = args(tfds_dir, "--config.data.document_mask=True")
  reference = start("train", tmp_path / "reference", *packed)  # alongside, for time
  workdir = tmp_path / "killed"
  proc = start("train", workdir, *packed)
  checkpoints = workdir / "checkpoints"
  # Kill as soon as the step-8 save is under way (its temporary directory exists), so the
  # kill usually lands mid-save; the resume must fall back to a committed checkpoint.
  wait_for(
    lambda: checkpoints.exists() and any(p.name.startswith("8") for p in checkpoints.iterdir()),
    proc,
  )
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL

  resumed = run("train", workdir, *packed)
  assert resumed.returncode == 0, resumed.stdout + resumed.stderr
  assert "restored the checkpoint of step" in resumed.stdout
  output = reference.communicate(timeout=300)[0]
  assert reference.returncode == 0, output[-3000:]

  assert losses(workdir) == losses(tmp_path / "reference")  # exact, every step
  want, got = final_params(tmp_path / "reference"), final_params(workdir)
  want, got = list(_leaves(want)), list(_leaves(got))
  assert len(want) == len(got) > 10
  for a, b in zip(want, got):
    np.testing.assert_array_equal(a, b)


def _leaves(tree):
  if isinstance(tree, dict):
    for key in sorted(tree):
      yield from _leaves(tree[key])
  else:
    yield np.asarray(tree)


def test_sigterm_saves_first_and_exits_75(tfds_dir, tmp_path):
  workdir = tmp_path / "run"
  # eval_every: the stop would be an evaluation step; SIGTERM saves and evaluates nothing.
  proc = start(
    "train",
    workdir,
    *args(
      tfds_dir,
      "--config.train.num_steps=100000",
      "--config.train.checkpoint_every=100000",
      "--config.train.eval_every=100000",
      "--config.train.eval_steps=0",
    ),
  )
  wait_for(lambda: (workdir / "metrics.jsonl").exists() and len(losses(workdir)) >= 3, proc)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 75, out
  assert re.search(r"SIGTERM: checkpoint of step \d+ committed [\d.]+ s after the signal", out), out
  assert "rerun the same command to resume (exit status 75)" in out
  last = max(losses(workdir))
  assert ocp.CheckpointManager(workdir / "checkpoints").latest_step() == last
  assert '"split": "validation"' not in (workdir / "metrics.jsonl").read_text()


RESTORE_ON_ONE_DEVICE = """
import sys
import jax
from bigflax.train import checkpoint
params = checkpoint.restore_params(sys.argv[1])
print(len(jax.devices()), float(params["layer"]["kernel"].sum()))
"""


def test_parameters_saved_on_8_devices_initialise_a_run_on_one(tmp_path):
  """`init_from` / a distillation teacher read a pod's checkpoint on a laptop."""
  mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("fsdp", "tensor"))
  kernel = np.arange(64, dtype=np.float32).reshape(8, 8)
  state = {
    "params": {
      "layer": {
        "kernel": jax.device_put(kernel, NamedSharding(mesh, PartitionSpec("fsdp", "tensor")))
      }
    },
    "opt_state": {"mu": jax.device_put(kernel, NamedSharding(mesh, PartitionSpec()))},
  }
  mgr = checkpoint.manager(tmp_path / "checkpoints", keep=1, async_save=False)
  checkpoint.save(mgr, 3, state, {"next_step": 3})
  mgr.close()
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
  result = subprocess.run(
    [sys.executable, "-c", RESTORE_ON_ONE_DEVICE, str(tmp_path / "checkpoints")],
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
    check=False,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.split()[-2:] == ["1", str(float(kernel.sum()))]


def test_keep_checkpoints_0_keeps_every_checkpoint_and_resumes(tfds_dir, tmp_path):
  workdir = tmp_path / "run"
  keep_all = args(
    tfds_dir, "--config.train.keep_checkpoints=0", "--config.train.checkpoint_every=2"
  )
  result = run("train", workdir, *keep_all, "--config.train.num_steps=6")
  assert result.returncode == 0, result.stdout + result.stderr
  assert ocp.CheckpointManager(workdir / "checkpoints").all_steps() == [2, 4, 6]
  resumed = run("train", workdir, *keep_all, "--config.train.num_steps=8")
  assert resumed.returncode == 0, resumed.stdout + resumed.stderr
  assert "restored the checkpoint of step 6" in resumed.stdout
  assert ocp.CheckpointManager(workdir / "checkpoints").all_steps() == [2, 4, 6, 8]
