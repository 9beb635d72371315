"""A damaged newest checkpoint (a truncated array file or _METADATA, a flipped byte in an
Adam moment) is named, and `train` and `eval` use the newest intact step instead; with
nothing intact both say which steps they tried, without a traceback."""

import json
import os
import shutil
import subprocess

import jax
import numpy as np
import pytest
import tensorstore as ts

from bigflax.train import checkpoint, hashes
from helpers import TINY, losses, run, start

pytestmark = pytest.mark.slow


def args(tfds_dir):
  return [
    *TINY,
    f"--config.data.data_dir={tfds_dir}",
    "--config.train.num_steps=8",
    "--config.train.checkpoint_every=4",
  ]


@pytest.fixture(scope="module")
def trained(tfds_dir, tmp_path_factory):
  """A tiny run with committed checkpoints at steps 4 and 8."""
  workdir = tmp_path_factory.mktemp("trained")
  result = run("train", workdir, *args(tfds_dir))
  assert result.returncode == 0, result.stderr
  return workdir


def copy(trained, workdir):
  shutil.copytree(trained, workdir)
  return workdir


def finish(process) -> subprocess.CompletedProcess:
  """A started command's result (stdout and stderr together, as `start` has them)."""
  output = process.communicate(timeout=300)[0]
  return subprocess.CompletedProcess(process.args, process.returncode, output, output)


def stored_value(state_dir, key_part: str):
  """(file, offset, length) of the first array chunk whose OCDBT key holds `key_part`."""
  kv = ts.KvStore.open({"driver": "file", "path": f"{state_dir}/"}).result()
  version = ts.ocdbt.dump(kv).result()["versions"][-1]
  assert version["root_height"] == 0  # a tiny model's keys all sit in the root node
  for entry in ts.ocdbt.dump(kv, version["root"]["location"]).result()["entries"]:
    if key_part.encode() in entry["key"] and "indirect_value" in entry:
      _, prefix, name, offset, length = entry["indirect_value"].split(":")
      return state_dir / prefix / name, int(offset), int(length)
  raise AssertionError(f"no stored chunk of {key_part}")


def truncate_array_file(step_dir):
  path, offset, length = stored_value(step_dir / "state", "params.")
  os.truncate(path, offset + length // 2)  # through a chunk of parameters
  return path


def truncate_metadata(step_dir):
  path = step_dir / "state" / "_METADATA"
  os.truncate(path, os.path.getsize(path) // 2)
  return path


def flip_adam_moment(step_dir):
  # A flipped bit near a chunk's end lands in its zstd literals: the chunk still decodes,
  # to another moment (what made a resumed run differ with nothing said).
  path, offset, length = stored_value(step_dir / "state", ".mu.")
  with open(path, "r+b") as f:
    f.seek(offset + length - 9)
    byte = f.read(1)[0]
    f.seek(offset + length - 9)
    f.write(bytes([byte ^ 0x10]))
  return path


@pytest.mark.parametrize("damage", [truncate_array_file, truncate_metadata, flip_adam_moment])
def test_train_and_eval_use_the_previous_intact_step(trained, tfds_dir, tmp_path, damage):
  workdir, evaluated_dir = copy(trained, tmp_path / "train"), copy(trained, tmp_path / "eval")
  named = str(damage(workdir / "checkpoints" / "8").relative_to(workdir / "checkpoints" / "8"))
  damage(evaluated_dir / "checkpoints" / "8")
  evaluating = start("eval", evaluated_dir)  # alongside, for time
  resumed = run("train", workdir, *args(tfds_dir))
  evaluated = finish(evaluating)

  assert evaluated.returncode == 0, evaluated.stderr
  assert json.loads(evaluated.stdout.strip().splitlines()[-1])["step"] == 4
  assert "checkpoint step 8" in evaluated.stderr and named in evaluated.stderr
  assert "restoring step 4 instead" in evaluated.stderr
  assert resumed.returncode == 0, resumed.stderr
  assert "restored the checkpoint of step 4" in resumed.stdout
  assert "checkpoint step 8" in resumed.stderr and named in resumed.stderr
  assert losses(workdir) == losses(trained)  # steps 5-8 again, exactly
  assert (workdir / "checkpoints" / "8.damaged").is_dir()  # kept aside, for a look
  assert checkpoint.latest_step(workdir / "checkpoints") == 8
  assert hashes.problems(workdir / "checkpoints" / "8") == []


def test_nothing_intact_names_the_steps_tried(trained, tfds_dir, tmp_path):
  workdir = copy(trained, tmp_path / "run")
  flip_adam_moment(workdir / "checkpoints" / "8")
  truncate_metadata(workdir / "checkpoints" / "4")
  evaluating = start("eval", workdir)  # neither writes to the workdir
  for result in (run("train", workdir, *args(tfds_dir)), finish(evaluating)):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    error = result.stderr[result.stderr.index("No intact checkpoint") :]
    assert "step 8: state/" in error and "step 4: state/_METADATA" in error
    assert "move them out of" in error and "new --workdir" in error


def test_a_step_without_hashes_is_restored_as_before_and_said(trained, tmp_path, capsys):
  """Checkpoints written before hashes were recorded: still read, the read itself is the
  check, and a step that fails to read is passed over as well."""
  directory = copy(trained, tmp_path / "run") / "checkpoints"
  for step in (4, 8):
    (directory / str(step) / hashes.MANIFEST).unlink()
  assert checkpoint.restore_params_with_step(directory)[0] == 8
  assert "step 8 in" in capsys.readouterr().err  # ... has no content hashes
  truncate_array_file(directory / "8")
  assert checkpoint.restore_params_with_step(directory)[0] == 4
  said = capsys.readouterr().err
  assert "has no content hashes" in said
  assert "checkpoint step 8" in said and "OUT_OF_RANGE" in said


def test_parameters_of_a_damaged_step(trained, tmp_path):
  """The readers of parameters alone (init_from, a distillation teacher): the newest
  intact step by default; a step asked for by number is that step or an error."""
  workdir = copy(trained, tmp_path / "run")
  flip_adam_moment(workdir / "checkpoints" / "8")
  directory = workdir / "checkpoints"
  step, params = checkpoint.restore_params_with_step(directory)
  assert step == 4
  want = checkpoint.restore_params(trained / "checkpoints", step=4)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(want)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match="(?s)No intact checkpoint.*step 8: state/"):
    checkpoint.restore_params(directory, step=8)


@pytest.mark.parametrize("async_save", [True, False])
def test_every_committed_step_holds_its_hashes(tmp_path, async_save):
  state = {"params": {"w": np.arange(6.0).reshape(2, 3)}, "opt_state": {"mu": np.ones(3)}}
  mgr = checkpoint.manager(tmp_path, keep=2, async_save=async_save)
  for step in (1, 2, 3):
    checkpoint.save(mgr, step, state, {"next_step": step})
  mgr.wait_until_finished()
  assert mgr.all_steps() == [2, 3]
  for step in (2, 3):
    recorded = json.loads((tmp_path / str(step) / hashes.MANIFEST).read_text())
    assert any(name.startswith("state/") for name in recorded) and "data/metadata" in recorded
    assert hashes.problems(tmp_path / str(step)) == []
  assert not list(tmp_path.glob("*tmp*"))
