"""A run directory's layout, named once. Every run directory is self-describing: `sample`,
`eval`, `export` and `serve` need only its path.

  config.json            the resolved config (configs.save / configs.load)
  run_info.json          one record per start of `train` (run_info.py)
  train.lock             held by the one `train` writing here (train/lock.py)
  checkpoints/           orbax: train state, rng and data position per step
  tokenizer/             the run's tokenizer, trained or copied on first use
  metrics.jsonl          every logged metric, one JSON object per line
  tensorboard/           the same metrics for TensorBoard
  adapters.safetensors   a LoRA run's adapters, written when training ends
  eval_{split}_{step}.*  `bigflax eval` reports
"""

import os

CONFIG = "config.json"
RUN_INFO = "run_info.json"
LOCK = "train.lock"
CHECKPOINTS = "checkpoints"
TOKENIZER = "tokenizer"
METRICS = "metrics.jsonl"
TENSORBOARD = "tensorboard"
ADAPTERS = "adapters.safetensors"


def config(workdir) -> str:
  return os.path.join(workdir, CONFIG)


def run_info(workdir) -> str:
  return os.path.join(workdir, RUN_INFO)


def lock(workdir) -> str:
  return os.path.join(workdir, LOCK)


def checkpoints(workdir) -> str:
  return os.path.join(workdir, CHECKPOINTS)


def tokenizer(workdir) -> str:
  return os.path.join(workdir, TOKENIZER)


def metrics(workdir) -> str:
  return os.path.join(workdir, METRICS)


def tensorboard(workdir) -> str:
  return os.path.join(workdir, TENSORBOARD)


def adapters(workdir) -> str:
  return os.path.join(workdir, ADAPTERS)


def eval_report(workdir, split: str, step: int) -> str:
  """The path, without extension, of the reports of `bigflax eval --split` at `step`."""
  return os.path.join(workdir, f"eval_{split}_{step}")
