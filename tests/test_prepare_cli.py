"""`bigflax prepare` (two spawned workers) then `bigflax train` on the shards, as a user
runs them; a window length other than the shards' is refused in one line."""

import json

import pytest

from helpers import TINY, losses, make_text_corpus, run

pytestmark = pytest.mark.slow

EXPERIMENT = """
from experiments import gpt_tiny

def get_config(arg=None):
  config = gpt_tiny.get_config()
  config.data.corpora = dict(
      code=dict(format="text", path={code!r}, patterns=["*.py"], validation_fraction=0.2),
      notes=dict(format="jsonl", path={notes!r}, text_column="text",
                 validation_fraction=0.2))
  config.data.mixture = dict(code=0.8, notes=0.2)
  config.data.prepared_dir = {prepared!r}
  config.data.shard_bytes = 4000
  config.data.prepare_workers = 2
  return config
"""


def test_prepare_then_train_and_a_refused_window(tmp_path):
  make_text_corpus(tmp_path / "code", num_files=40)
  (tmp_path / "notes").mkdir()
  (tmp_path / "notes" / "a.jsonl").write_text(
    "".join(json.dumps({"text": f"note {i} " + "x" * (i % 50)}) + "\n" for i in range(400))
  )
  experiment = tmp_path / "experiment.py"
  experiment.write_text(
    EXPERIMENT.format(
      code=str(tmp_path / "code"),
      notes=str(tmp_path / "notes"),
      prepared=str(tmp_path / "prepared"),
    )
  )
  args = ["--config", str(experiment), *TINY[2:]]
  first = run("prepare", tmp_path / "unused", *args)
  assert first.returncode == 0, first.stderr
  assert "code: " in first.stdout and "to tokenize on 2 worker(s)" in first.stdout

  trained = run(
    "train",
    tmp_path / "run",
    *args,
    "--config.train.num_steps=2",
    "--config.train.eval_every=2",
    "--config.train.eval_steps=1",
    "--config.train.checkpoint_every=2",
  )
  assert trained.returncode == 0, trained.stderr
  assert "mixture of prepared corpora: code 80.0%" in trained.stdout
  assert sorted(losses(tmp_path / "run")) == [1, 2]

  refused = run("train", tmp_path / "other", *args, "--config.data.seq_len=32")
  assert refused.returncode == 2 and "Traceback" not in refused.stderr
  assert "window length (seq_len + 1) 65, but this config gives 33" in refused.stderr
