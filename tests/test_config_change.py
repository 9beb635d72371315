"""A resume under another config than the run's: refused with the diff, unless
train.allow_config_change says so; then run_info.json keeps what changed. A longer
train.num_steps extends a run without asking."""

import copy
import json

from etils import epath
import pytest

from bigflax import configs, run_info
from experiments import gpt_tiny
from helpers import TINY, run


@pytest.mark.slow
def test_a_resume_under_another_data_config_is_refused_unless_allowed(tfds_dir, tmp_path):
  args = [*TINY, f"--config.data.data_dir={tfds_dir}", "--config.train.checkpoint_every=2"]
  first = run("train", tmp_path, *args, "--config.train.num_steps=2")
  assert first.returncode == 0, first.stderr
  before = {
    name: (tmp_path / name).read_text()
    for name in ("config.json", "metrics.jsonl", "run_info.json")
  }

  other = ["--config.data.global_batch_size=4", "--config.seed=1"]
  refused = run("train", tmp_path, *args, *other, "--config.train.num_steps=2")
  assert refused.returncode == 2 and "Traceback" not in refused.stderr
  assert "\n  data.global_batch_size: 8 -> 4\n  seed: 0 -> 1\n" in refused.stderr
  assert "--config.train.allow_config_change=True" in refused.stderr
  assert {name: (tmp_path / name).read_text() for name in before} == before

  allowed = run(
    "train",
    tmp_path,
    *args,
    *other,
    "--config.train.num_steps=3",
    "--config.train.allow_config_change=True",
  )
  assert allowed.returncode == 0, allowed.stderr
  assert "restored the checkpoint of step 2" in allowed.stdout
  assert "train.num_steps 2 -> 3: the learning rate follows the 3-step schedule" in allowed.stdout
  assert json.loads((tmp_path / "config.json").read_text())["data"]["global_batch_size"] == 4
  history = run_info.load(str(tmp_path))
  assert [h["config_changes"] for h in history] == [
    {},
    {
      "data.global_batch_size": [8, 4],
      "seed": [0, 1],
      "train.allow_config_change": [False, True],
      "train.num_steps": [2, 3],
    },
  ]


def changed(config, fields: dict):
  new = copy.deepcopy(config)
  new.update_from_flattened_dict(fields)
  return new


def test_what_a_resume_may_change_and_what_needs_allow_config_change(tmp_path):
  saved = gpt_tiny.get_config()
  free = {
    "train.num_steps": 5000,
    "train.eval_every": 7,
    "mesh.shape.data": 2,
    "data.data_dir": "/elsewhere",
    "sample.temperature": 0.0,
  }
  assert set(configs.check_resumable(saved, changed(saved, free), str(tmp_path))) == set(free)
  for field, value in [
    ("task.name", "sft"),
    ("data.name", "tinyshakespeare"),
    ("data.global_batch_size", 4),
    ("distill.teacher", "/runs/big"),
    ("init_from", "/runs/other"),
    ("seed", 3),
  ]:
    new = changed(saved, {field: value})
    with pytest.raises(configs.UsageError, match=f"\n  {field}: .* -> "):
      configs.check_resumable(saved, new, str(tmp_path))
    new.train.allow_config_change = True
    assert field in configs.check_resumable(saved, new, str(tmp_path))
  new = changed(saved, {"model.num_layers": 9, "train.allow_config_change": True})
  with pytest.raises(configs.UsageError, match="another model.*\n  model.num_layers: 4 -> 9"):
    configs.check_resumable(saved, new, str(tmp_path))


def test_config_json_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
  old = gpt_tiny.get_config()
  configs.save(old, str(tmp_path))
  path_type = type(epath.Path(tmp_path))
  write_text = path_type.write_text

  def full_disk(self, text, *args, **kwargs):
    write_text(self, text[: len(text) // 2], *args, **kwargs)
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(path_type, "write_text", full_disk)
  with pytest.raises(OSError):
    configs.save(changed(old, {"seed": 7}), str(tmp_path))
  monkeypatch.undo()
  assert json.loads(configs.load(str(tmp_path)).to_json()) == json.loads(old.to_json())
