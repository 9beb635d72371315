"""Metric writers: TensorBoard event files and a JSONL file in the workdir (process 0)."""

import json
import time

from etils import epath
import jax
from tensorboardX import SummaryWriter

from bigflax import workdir as workdir_lib

# Object stores (gs://) cannot append to a file: there metrics.jsonl is rewritten whole,
# at most this often (and at the end).
REMOTE_FLUSH_SECONDS = 30.0


class MetricWriter:
  """Writes {split}/{name} scalars; `truncate(step)` drops records a resume will redo."""

  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    self.path = epath.Path(workdir_lib.metrics(workdir))
    self.remote = "://" in str(workdir)
    self.lines, self.flushed = [], time.monotonic()  # remote: the file's whole contents
    self.tensorboard = SummaryWriter(workdir_lib.tensorboard(workdir)) if self.enabled else None

  def truncate(self, step: int):
    """Forgets records after `step` (from a run killed after its last checkpoint)."""
    if not self.enabled or not self.path.exists():
      return
    lines = self.path.read_text().splitlines(keepends=True)
    self.lines = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
    self.path.write_text("".join(self.lines))

  def write(self, step: int, split: str, metrics: dict):
    if not self.enabled:
      return
    metrics = {k: float(v) for k, v in metrics.items()}
    line = json.dumps({"step": step, "split": split, **metrics}) + "\n"
    if self.remote:
      self.lines.append(line)
      if time.monotonic() - self.flushed > REMOTE_FLUSH_SECONDS:
        self._rewrite()
    else:
      with self.path.open("a") as f:
        f.write(line)
    for name, value in metrics.items():
      self.tensorboard.add_scalar(f"{split}/{name}", value, step)

  def _rewrite(self):
    self.path.write_text("".join(self.lines))
    self.flushed = time.monotonic()

  def close(self):
    if self.enabled:
      if self.remote:
        self._rewrite()
      self.tensorboard.close()


def read(workdir: str, split: str = "train") -> dict:
  """{step: record} of a workdir's metrics.jsonl, for analysis and tests."""
  lines = (epath.Path(workdir_lib.metrics(workdir))).read_text().splitlines()
  records = [json.loads(line) for line in lines if line.strip()]
  return {r["step"]: r for r in records if r["split"] == split}
