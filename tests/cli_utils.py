"""Run the real command line in subprocesses, as a user would."""

import os
import subprocess
import sys

from bigflax.train import writers
from conftest import REPO

TINY = ["--config", "experiments/gpt_tiny.py", "--config.model.num_layers=2",
        "--config.model.embed_dim=64", "--config.model.num_heads=4",
        "--config.model.mlp_dim=128", "--config.model.max_len=64", "--config.data.seq_len=64",
        "--config.data.global_batch_size=8", "--config.optim.warmup_steps=2",
        "--config.train.log_every=1", "--config.train.eval_every=0",
        "--config.sample.max_new_tokens=8"]


def env(devices: int) -> dict:
  e = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
           PYTHONUNBUFFERED="1")
  e.pop("JAX_NUM_CPU_DEVICES", None)
  return e


def start(command, workdir, *args, devices=2, **kwargs) -> subprocess.Popen:
  return subprocess.Popen(
      [sys.executable, "-m", "bigflax", command, "--workdir", str(workdir), *args],
      cwd=REPO, env=env(devices), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True, **kwargs)


def run(command, workdir, *args, devices=2, timeout=300) -> subprocess.CompletedProcess:
  return subprocess.run(
      [sys.executable, "-m", "bigflax", command, "--workdir", str(workdir), *args],
      cwd=REPO, env=env(devices), capture_output=True, text=True, timeout=timeout)


def losses(workdir) -> dict:
  return {step: r["loss"] for step, r in writers.read(str(workdir)).items()}
