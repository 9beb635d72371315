"""Two real processes joined by jax.distributed (the multi-host path) train exactly like
one process with the same number of devices."""

import socket

import numpy as np
import pytest

from cli_utils import TINY, losses, run, start

pytestmark = pytest.mark.slow


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_match_one(tfds_dir, tmp_path):
  args = [*TINY, f"--config.data.data_dir={tfds_dir}", "--config.train.num_steps=6",
          "--config.train.checkpoint_every=3", "--config.mesh.shape.data=4",
          "--config.mesh.shape.fsdp=2"]
  single = run("train", tmp_path / "single", *args, devices=8)
  assert single.returncode == 0, single.stdout + single.stderr

  address = f"127.0.0.1:{free_port()}"
  procs = [start("train", tmp_path / "multi", *args, f"--coordinator_address={address}",
                 "--num_processes=2", f"--process_id={i}", devices=4) for i in range(2)]
  outputs = [p.communicate(timeout=300)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out
  assert "2 process(es)" in outputs[0]

  want, got = losses(tmp_path / "single"), losses(tmp_path / "multi")
  assert sorted(got) == list(range(1, 7))
  np.testing.assert_allclose([got[s] for s in sorted(got)], [want[s] for s in sorted(want)],
                             rtol=0, atol=1e-5)
  assert (tmp_path / "multi" / "checkpoints" / "6").is_dir()
