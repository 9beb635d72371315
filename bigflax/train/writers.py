"""Metric writers: TensorBoard event files and a JSONL file in the workdir (process 0)."""

import json
import os

import jax
from tensorboardX import SummaryWriter


class MetricWriter:
  """Writes {split}/{name} scalars; `truncate(step)` drops records a resume will redo."""

  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard")) if self.enabled else None

  def truncate(self, step: int):
    """Forgets records after `step` (from a run killed after its last checkpoint)."""
    if not self.enabled or not os.path.exists(self.path):
      return
    with open(self.path) as f:
      kept = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    with open(self.path, "w") as f:
      f.writelines(kept)

  def write(self, step: int, split: str, metrics: dict):
    if not self.enabled:
      return
    metrics = {k: float(v) for k, v in metrics.items()}
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": step, "split": split, **metrics}) + "\n")
    for name, value in metrics.items():
      self.tensorboard.add_scalar(f"{split}/{name}", value, step)

  def close(self):
    if self.enabled:
      self.tensorboard.close()


def read(workdir: str, split: str = "train") -> dict:
  """{step: record} of a workdir's metrics.jsonl, for analysis and tests."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f if line.strip()]
  return {r["step"]: r for r in records if r["split"] == split}
