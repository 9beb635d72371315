"""One writer per run directory: a second `train` on a workdir in use refuses at once (exit
2, naming the holder) and touches nothing there; the lock of a killed `train` is taken over
with a warning, and the run resumes; the lock goes when `train` ends."""

import json
import os
import platform
import signal
import subprocess
import time

import pytest

from bigflax.train import checkpoint, lock, writers
from helpers import TINY, run, start

LONG = "--config.train.num_steps=100000"


def wait_for(predicate, proc, timeout=240):
  deadline = time.time() + timeout
  while not predicate():
    assert proc.poll() is None, proc.stdout.read()
    assert time.time() < deadline, "timed out"
    time.sleep(0.05)


def logged_steps(workdir) -> list[int]:
  """The step of every complete line of metrics.jsonl, in file order (strict JSON)."""
  text = (workdir / "metrics.jsonl").read_text() if (workdir / "metrics.jsonl").exists() else ""
  reject = lambda constant: pytest.fail(f"bare {constant} in metrics.jsonl")
  return [
    json.loads(line, parse_constant=reject)["step"]
    for line in text.splitlines(keepends=True)
    if line.endswith("\n")
  ]


@pytest.mark.slow
def test_a_second_writer_refuses_and_a_killed_writers_lock_is_taken_over(tfds_dir, tmp_path):
  workdir = tmp_path / "run"
  args = [*TINY, f"--config.data.data_dir={tfds_dir}", "--config.train.checkpoint_every=4"]
  first = start("train", workdir, *args, LONG)
  wait_for(
    lambda: (workdir / "checkpoints" / "4").is_dir() and len(logged_steps(workdir)) > 5, first
  )
  config = (workdir / "config.json").read_text()

  second = run("train", workdir, *args, LONG, timeout=120)
  assert second.returncode == 2, second.stdout + second.stderr
  assert f"`train` PID {first.pid} on host {platform.node()} since " in second.stderr
  assert "Traceback" not in second.stderr and "restored" not in second.stdout
  assert (workdir / "config.json").read_text() == config
  assert json.loads((workdir / "train.lock").read_text())["pid"] == first.pid

  first.kill()  # SIGKILL: its lock stays behind
  first.communicate()
  steps = logged_steps(workdir)
  assert steps == list(range(1, len(steps) + 1))  # one writer: every step once, in order
  with open(workdir / "metrics.jsonl", "a") as f:  # a crash in the middle of a line
    f.write('{"step": 100001, "split": "tr')

  latest = checkpoint.latest_step(workdir / "checkpoints")
  resumed = start("train", workdir, *args, LONG)
  # Past the partial line (dropped when the resume truncates the file) and a step further.
  wait_for(
    lambda: (
      "100001" not in (workdir / "metrics.jsonl").read_text()
      and max(logged_steps(workdir)) > latest + 1
    ),
    resumed,
  )
  resumed.send_signal(signal.SIGTERM)  # save and stop: the lock goes too
  output = resumed.communicate(timeout=120)[0]
  assert f"taking over {workdir / 'train.lock'}, left by PID {first.pid}" in output
  assert f"restored the checkpoint of step {latest}" in output
  assert "metrics.jsonl line" in output and "is not JSON" in output
  assert not (workdir / "train.lock").exists()
  steps = logged_steps(workdir)
  assert steps == list(range(1, len(steps) + 1)) and steps[-1] > latest + 1
  assert sorted(writers.read(str(workdir))) == steps


def dead_pid() -> int:
  child = subprocess.Popen(["true"])
  child.wait()
  return child.pid


def test_a_live_holder_is_refused_a_dead_one_taken_over_and_the_lock_goes_on_error(
  tmp_path, capsys
):
  path = tmp_path / "train.lock"
  alive = {"host": platform.node(), "pid": os.getppid(), "since": "2026-01-01T00:00:00+00:00"}
  path.write_text(json.dumps(alive))
  with pytest.raises(lock.Held, match=f"PID {os.getppid()} on host .* since 2026-01-01"):
    lock.acquire(str(tmp_path))
  other_host = dict(alive, host="elsewhere", pid=dead_pid())  # cannot be checked: refused
  path.write_text(json.dumps(other_host))
  with pytest.raises(lock.Held, match=f"delete {path}"):
    lock.acquire(str(tmp_path))

  path.write_text(json.dumps(dict(alive, pid=dead_pid())))
  with pytest.raises(RuntimeError, match="the block failed"), lock.held(str(tmp_path)):
    assert json.loads(path.read_text())["pid"] == os.getpid()
    raise RuntimeError("the block failed")
  assert "taking over" in capsys.readouterr().err
  assert not path.exists()
