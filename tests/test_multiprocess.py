"""Two real processes joined by jax.distributed (the multi-host path) train exactly like
one process with the same number of devices."""

import re
import signal
import time

import numpy as np
import pytest

from helpers import TINY, free_port, losses, run, start

pytestmark = pytest.mark.slow
STEPS = 120  # enough that a signal sent after step 3 lands mid-run


def test_two_processes_match_one(tfds_dir, tmp_path):
  args = [
    *TINY,
    f"--config.data.data_dir={tfds_dir}",
    "--config.train.num_steps=6",
    "--config.train.checkpoint_every=3",
    "--config.mesh.shape.data=4",
    "--config.mesh.shape.fsdp=2",
  ]
  single = run("train", tmp_path / "single", *args, devices=8)
  assert single.returncode == 0, single.stdout + single.stderr

  address = f"127.0.0.1:{free_port()}"
  procs = [
    start(
      "train",
      tmp_path / "multi",
      *args,
      f"--coordinator_address={address}",
      "--num_processes=2",
      f"--process_id={i}",
      devices=4,
    )
    for i in range(2)
  ]
  outputs = [p.communicate(timeout=300)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out
  assert "2 process(es)" in outputs[0]

  want, got = losses(tmp_path / "single"), losses(tmp_path / "multi")
  assert sorted(got) == list(range(1, 7))
  np.testing.assert_allclose(
    [got[s] for s in sorted(got)], [want[s] for s in sorted(want)], rtol=0, atol=1e-5
  )
  assert (tmp_path / "multi" / "checkpoints" / "6").is_dir()


def test_sigterm_to_both_processes_stops_them_at_one_step_and_resume_matches(tfds_dir, tmp_path):
  # Enough steps that the signal lands mid-run; no periodic checkpoint, so the only one
  # committed before the resume is the preemption's.
  args = [
    *TINY,
    f"--config.data.data_dir={tfds_dir}",
    f"--config.train.num_steps={STEPS}",
    "--config.train.checkpoint_every=100000",
    "--config.mesh.shape.data=4",
    "--config.mesh.shape.fsdp=2",
  ]

  def two_processes(workdir):
    address = f"127.0.0.1:{free_port()}"
    return [
      start(
        "train",
        workdir,
        *args,
        f"--coordinator_address={address}",
        "--num_processes=2",
        f"--process_id={i}",
        devices=4,
      )
      for i in range(2)
    ]

  reference = two_processes(tmp_path / "reference")  # alongside, for time
  workdir = tmp_path / "preempted"
  procs = two_processes(workdir)
  deadline = time.time() + 240
  while not ((workdir / "metrics.jsonl").exists() and len(losses(workdir)) >= 3):
    assert all(p.poll() is None for p in procs), [p.stdout.read() for p in procs]
    assert time.time() < deadline, "timed out"
    time.sleep(0.01)
  for p in procs:
    p.send_signal(signal.SIGTERM)
  outputs = [p.communicate(timeout=240)[0] for p in procs]
  assert [p.returncode for p in procs] == [75, 75], outputs
  stops = [re.findall(r"SIGTERM: checkpoint of step (\d+) committed", out) for out in outputs]
  assert len(stops[0]) == 1 and stops[0] == stops[1], outputs  # one step, the same on both
  stopped_at = int(stops[0][0])
  assert stopped_at < STEPS
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [
    stopped_at
  ]

  procs = two_processes(workdir)
  outputs = [p.communicate(timeout=300)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outputs
  assert f"restored the checkpoint of step {stopped_at}" in outputs[0]
  outputs = [p.communicate(timeout=300)[0] for p in reference]
  assert [p.returncode for p in reference] == [0, 0], outputs
  want, got = losses(tmp_path / "reference"), losses(workdir)
  assert sorted(got) == list(range(1, STEPS + 1))
  assert got == want  # exact, every step
