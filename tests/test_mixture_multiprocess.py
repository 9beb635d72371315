"""Resume on any host count: real jax.distributed processes on 127.0.0.1 read the global
batches of a mixture of prepared corpora; a run started on 2 processes x 4 devices and
resumed on 1 x 8 (and the reverse) sees exactly the batches of the uninterrupted run."""

import json
import subprocess
import sys

import numpy as np
import pytest

from bigflax.data import prepare
from conftest import REPO
from helpers import data_config, env, free_port, make_text_corpus, text_corpus

pytestmark = pytest.mark.slow
STEPS, RESUME_AT = 6, 3


def reader_env(devices):
  return dict(env(devices), PYTHONPATH=str(REPO))  # this checkout's bigflax


def readers(config_json, start, stop, out, processes):
  """Popen of the processes that read steps [start, stop) together."""
  command = [
    sys.executable,
    str(REPO / "tests" / "mixture_reader.py"),
    str(config_json),
    str(start),
    str(stop),
    str(out),
  ]
  if processes == 1:
    return [
      subprocess.Popen(
        command,
        cwd=REPO,
        env=reader_env(8),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
      )
    ]
  address = f"127.0.0.1:{free_port()}"
  return [
    subprocess.Popen(
      [*command, address, str(processes), str(i)],
      cwd=REPO,
      env=reader_env(8 // processes),
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(processes)
  ]


def test_resume_on_another_process_count_sees_the_same_batches(tmp_path):
  corpora = {}
  for seed, name in enumerate(("code", "prose")):
    make_text_corpus(tmp_path / name, num_files=30, seed=seed)
    corpora[name] = text_corpus(tmp_path / name)
  config = data_config(tmp_path / "prepared", corpora, {"code": 0.75, "prose": 0.25}, batch=16)
  prepare.prepare(config)
  config_json = tmp_path / "data.json"
  config_json.write_text(json.dumps(config.data.to_dict()))

  runs = {  # name: (start, stop, processes)
    "uninterrupted": (0, STEPS, 1),
    "two_first": (0, RESUME_AT, 2),
    "one_after": (RESUME_AT, STEPS, 1),
    "one_first": (0, RESUME_AT, 1),
    "two_after": (RESUME_AT, STEPS, 2),
  }
  procs = {
    name: readers(config_json, start, stop, tmp_path / f"{name}.npy", processes)
    for name, (start, stop, processes) in runs.items()
  }
  for name, group in procs.items():
    for p in group:
      out = p.communicate(timeout=240)[0]
      assert p.returncode == 0, out
    assert f"on {runs[name][2]} process(es) x {8 // runs[name][2]} devices" in out

  got = {name: np.load(tmp_path / f"{name}.npy") for name in runs}
  assert got["uninterrupted"].shape == (STEPS, 16, 32)
  assert len({got["uninterrupted"][s].tobytes() for s in range(STEPS)}) == STEPS
  for first, after in (("two_first", "one_after"), ("one_first", "two_after")):
    np.testing.assert_array_equal(np.concatenate([got[first], got[after]]), got["uninterrupted"])
