"""A sweep's trials: each trains as its own `bigflax train` process (here, or on a Cloud TPU
slice through bigflax.launch) in its own run directory, where its status is recorded."""

import contextlib
import json
import pathlib
import subprocess
import sys
import tempfile
import threading
import time

from etils import epath

from bigflax import launch
from bigflax.sweep import space as sweep_space
from bigflax.train import loop, writers

STATUS_FILE = "sweep_trial.json"
LOG_FILE = "train.log"
POLL_SECONDS = 2.0  # how often a running trial's metrics are read (for pruning)


def trial_name(trial: dict) -> str:
  """A readable, filesystem-safe name: 'lr=0.001,embed_dim=64' (last name components,
  unless two swept fields share one)."""
  short = {k: k.split(".")[-1] for k in trial}
  if len(set(short.values())) < len(short):
    short = {k: k for k in trial}
  value = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v).replace("/", "-")
  return ",".join(f"{short[k]}={value(v)}" for k, v in trial.items()) or "default"


def trial_args(config_arg: str, workdir, overrides, trial: dict) -> list[str]:
  return [
    "--config",
    config_arg,
    "--workdir",
    str(workdir),
    *overrides,
    *(f"--config.{k}={sweep_space.format_value(v)}" for k, v in trial.items()),
  ]


class LocalRunner:
  """Trains a trial in a subprocess on this machine."""

  def start(self, train_args: list[str], workdir: epath.Path, log) -> subprocess.Popen:
    return subprocess.Popen(
      [sys.executable, "-m", "bigflax", "train", *train_args], stdout=log, stderr=subprocess.STDOUT
    )

  def stop(self, process: subprocess.Popen, workdir):
    process.terminate()  # SIGTERM: the trainer saves a checkpoint and exits


class TpuRunner:
  """Trains a trial on a Cloud TPU slice (all workers), following worker 0's log."""

  def __init__(self, slice_: launch.Slice, launch_dir: str):
    self.slice, self.launch_dir, self.workdir = slice_, launch_dir, None

  def start(self, train_args, workdir, log) -> "Following":
    start, stream = launch.train_steps(self.slice, train_args, self.launch_dir)
    launch.run_step(start)
    self.workdir = str(workdir)  # training there until `follow` says it ended
    return Following(lambda: stream.action(log))

  def stop(self, process, workdir):
    launch.run_step(launch.stop_step(self.slice, str(workdir), self.launch_dir))


class Following:
  """launch.follow in a thread, as the Popen that run_trial polls: returncode is the
  trainer's status; an error of follow's (StillRunning) is raised by poll and wait."""

  def __init__(self, follow):
    self.returncode, self.error = None, None
    self.thread = threading.Thread(target=self._run, args=(follow,), daemon=True)
    self.thread.start()

  def _run(self, follow):
    try:
      self.returncode = follow()
    except Exception as e:  # pylint: disable=broad-except  (re-raised in the caller's thread)
      self.error = e

  def poll(self):
    if self.error:
      raise self.error
    return None if self.thread.is_alive() else self.returncode

  def wait(self):
    self.thread.join()
    return self.poll()


def final_metrics(workdir) -> dict:
  """{'split/name': value} of the last record of each split in workdir's metrics.jsonl."""
  if not (epath.Path(workdir) / "metrics.jsonl").exists():
    return {}
  out = {}
  for split in ("train", "validation"):
    records = writers.read(str(workdir), split)
    if records:
      last = records[max(records)]
      out[f"{split}/step"] = last["step"]
      out.update({f"{split}/{k}": v for k, v in last.items() if k not in ("step", "split")})
  return out


def run_trial(
  runner, train_args, workdir: epath.Path, metric: str | None = None, should_prune=None
) -> dict:
  """Trains one trial to the end (or until `should_prune(step, value)` says stop) and
  records its status in workdir/sweep_trial.json."""
  workdir.mkdir(parents=True, exist_ok=True)
  log_path = workdir / LOG_FILE
  start = time.time()
  seen = set()
  pruned = False
  with _log_file(log_path) as log:
    process = runner.start(train_args, workdir, log)
    while process.poll() is None:
      time.sleep(POLL_SECONDS)
      if should_prune is None or pruned:
        continue
      for step, value in _new_evals(workdir, metric, seen):
        if should_prune(step, value):
          runner.stop(process, workdir)
          pruned = True
          break
    process.wait()
  status = (
    "pruned"
    if pruned
    else "done"
    if process.returncode == 0
    else "preempted"
    if process.returncode == loop.EXIT_PREEMPTED
    else "failed"
  )
  record = dict(
    status=status,
    returncode=process.returncode,
    args=train_args,
    seconds=round(time.time() - start, 1),
    log=str(log_path),
  )
  (workdir / STATUS_FILE).write_text(json.dumps(record, indent=2))
  return record


@contextlib.contextmanager
def _log_file(path: epath.Path):
  """The trial's log; for a gs:// workdir a local file, copied there when the trial ends."""
  if "://" not in str(path):
    with open(path, "a") as f:
      yield f
    return
  with tempfile.NamedTemporaryFile("w+", suffix=".log") as f:
    try:
      yield f
    finally:
      f.flush()
      path.write_text(pathlib.Path(f.name).read_text())


def _new_evals(workdir, metric, seen):
  split, _, name = metric.partition("/")
  try:
    records = writers.read(str(workdir), split)
  except (FileNotFoundError, json.JSONDecodeError):  # not written yet / mid-write
    return []
  new = [(s, r[name]) for s, r in sorted(records.items()) if s not in seen and name in r]
  seen.update(s for s, _ in new)
  return new


def finished_earlier(workdir: epath.Path, train_args) -> bool:
  status_file = workdir / STATUS_FILE
  if not status_file.exists():
    return False
  status = json.loads(status_file.read_text())
  return status["status"] == "done" and status["args"] == train_args
