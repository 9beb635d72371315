"""Run directories record what they ran on; `bigflax diff` shows what two runs differ in."""

import json
import subprocess
import sys

import jax

from bigflax import configs, run_info
from bigflax.train import partitioning
from conftest import REPO
from experiments import gpt_tiny
from helpers import env


def make_run(workdir, mesh_shape, **optim):
  workdir.mkdir()
  config = gpt_tiny.get_config()
  config.optim.update(optim)
  configs.save(config, str(workdir))
  mesh = partitioning.make_mesh(mesh_shape, devices=jax.devices()[:4])
  return run_info.record(str(workdir), mesh)


def test_record_holds_versions_git_mesh_devices_and_history(tmp_path):
  entry = make_run(tmp_path / "a", dict(data=2, fsdp=2, tensor=1))
  assert entry["versions"]["jax"] == jax.__version__
  assert entry["versions"]["python"] == sys.version.split()[0]
  assert set(run_info.PACKAGES) <= set(entry["versions"])
  assert entry["mesh"] == {"data": 2, "fsdp": 2, "tensor": 1}
  assert entry["devices"]["kind"] == jax.devices()[0].device_kind
  assert entry["devices"]["count"] == jax.device_count()
  assert entry["devices"]["process_count"] == 1
  head = subprocess.run(
    ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True
  ).stdout.strip()
  if head:  # a git checkout (CI's is one)
    assert entry["git"]["commit"] == head and isinstance(entry["git"]["dirty"], bool)
  # A resume on other hardware appends; the first start is kept.
  mesh = partitioning.make_mesh(dict(data=-1), devices=jax.devices()[:2])
  run_info.record(str(tmp_path / "a"), mesh, start_step=100)
  history = run_info.load(str(tmp_path / "a"))
  assert [h["start_step"] for h in history] == [0, 100]
  assert history[0]["mesh"]["data"] == 2 and history[1]["mesh"]["data"] == 2
  assert json.loads((tmp_path / "a" / "run_info.json").read_text())["latest"] == history[1]


def test_diff_shows_exactly_the_differing_config_and_environment_keys(tmp_path):
  make_run(tmp_path / "a", dict(data=2, fsdp=2, tensor=1), lr=1e-3)
  make_run(tmp_path / "b", dict(data=4, fsdp=1, tensor=1), lr=3e-4)
  rows = run_info.diff(str(tmp_path / "a"), str(tmp_path / "b"))
  assert [(k, a, b) for k, a, b in rows] == [
    ("config.optim.lr", 1e-3, 3e-4),
    ("env.mesh.data", 2, 4),
    ("env.mesh.fsdp", 2, 1),
  ]

  # The command line: no --workdir, one readable line per difference.
  result = subprocess.run(
    [sys.executable, "-m", "bigflax", "diff", str(tmp_path / "a"), str(tmp_path / "b")],
    cwd=REPO,
    env=env(1),
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 0, result.stderr
  lines = result.stdout.strip().splitlines()
  assert str(tmp_path / "a") in lines[0] and str(tmp_path / "b") in lines[0]
  assert [line.split() for line in lines[1:]] == [
    ["config.optim.lr", "0.001", "0.0003"],
    ["env.mesh.data", "2", "4"],
    ["env.mesh.fsdp", "2", "1"],
  ]


def test_diff_of_a_run_without_run_info_and_of_identical_runs(tmp_path):
  make_run(tmp_path / "a", dict(data=4))
  (tmp_path / "old").mkdir()
  configs.save(gpt_tiny.get_config(), str(tmp_path / "old"))
  rows = dict((k, (a, b)) for k, a, b in run_info.diff(str(tmp_path / "a"), str(tmp_path / "old")))
  assert rows["env.versions.jax"] == (jax.__version__, run_info.MISSING)
  assert not any(k.startswith("config.") for k in rows)
  assert "(absent)" in run_info.format_diff(
    "a", "old", list(run_info.diff(str(tmp_path / "a"), str(tmp_path / "old")))
  )
  assert "same config and environment" in run_info.format_diff(
    "a", "a", run_info.diff(str(tmp_path / "a"), str(tmp_path / "a"))
  )
