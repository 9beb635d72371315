"""Metric writers: TensorBoard event files and a JSONL file in the workdir (process 0).

metrics.jsonl is strict JSON, one object per line: a value that is not finite (a diverged
loss) is written as null, and `read` gives it back as float('nan'). A line that is not
JSON (the partial last line of a crash or a full disk) is dropped with a warning.
"""

import json
import math
import sys
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
    self.lines = [_line(r) for r in _records(self.path) if r["step"] <= step]
    self.path.write_text("".join(self.lines))

  def write(self, step: int, split: str, metrics: dict):
    if not self.enabled:
      return
    metrics = {k: float(v) for k, v in metrics.items()}
    line = _line({"step": step, "split": split, **metrics})
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


def _line(record: dict) -> str:
  """A record as strict JSON (also one read from a file written with bare NaN)."""
  finite = {
    k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()
  }
  return json.dumps(finite, allow_nan=False) + "\n"


def read(workdir: str, split: str = "train") -> dict:
  """{step: record} of a workdir's metrics.jsonl, for analysis and tests."""
  return {
    r["step"]: {k: math.nan if v is None else v for k, v in r.items()}
    for r in records(workdir)
    if r["split"] == split
  }


def records(workdir: str) -> list[dict]:
  """Every record of a workdir's metrics.jsonl, every split, in the order written (a value
  written as null stays None)."""
  return _records(epath.Path(workdir_lib.metrics(workdir)))


def _records(path: epath.Path) -> list[dict]:
  """The records of a metrics.jsonl; lines that are not JSON are dropped with a warning."""
  records = []
  text = path.read_bytes().decode(errors="replace")  # a crash can leave any bytes
  for number, line in enumerate(text.splitlines(), 1):
    if not line.strip():
      continue
    try:
      records.append(json.loads(line))
    except ValueError:
      print(
        f"bigflax: warning: {path} line {number} is not JSON (a crash or a full disk "
        f"while writing?), dropped: {line[:80]!r}",
        file=sys.stderr,
        flush=True,
      )
  return records
