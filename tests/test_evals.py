"""Evaluators as data: the task's defaults stand in for an absent `config.evals` (old run
directories), and a bad entry is refused naming the field and the fix."""

import json

import pytest

from bigflax import configs, evals, tasks
from bigflax.configs import UsageError


def test_without_evals_a_run_has_the_tasks_defaults():
  config = configs.base()
  kinds = lambda name: [e["kind"] for e in evals.specs(config, tasks.get(name))]
  assert kinds("lm") == ["sums"]
  assert kinds("seq2seq") == ["sums", "predictions"]
  assert kinds("classify") == ["sums", "report"]
  config.harness.every = 100
  assert kinds("lm") == ["sums", "harness"]
  config.evals = [dict(kind="sums", every=7)]
  assert evals.specs(config, tasks.get("lm")) == [{"kind": "sums", "every": 7}]


def test_an_old_run_directory_without_evals_resumes(tmp_path):
  saved = json.loads(configs.base().to_json())
  del saved["evals"]  # config.json written before evaluators were data
  (tmp_path / "config.json").write_text(json.dumps(saved))
  old = configs.load(str(tmp_path))
  assert old.evals is None
  assert configs.check_resumable(old, configs.base(), str(tmp_path)) == {}
  listed = configs.base()
  listed.evals = [dict(kind="sums", every=10)]  # evaluators may change on resume
  assert list(configs.check_resumable(old, listed, str(tmp_path))) == ["evals"]


def test_a_bad_entry_names_the_field_and_the_fix():
  with pytest.raises(
    UsageError,
    match=r"evals\[1\].*kind='sum' is not an evaluator kind.*"
    r"'predictions'.*evals.register",
  ):
    evals.build([dict(kind="sums"), dict(kind="sum")], context=None)
  with pytest.raises(UsageError, match=r"evals\[0\].*'evry'; kind 'sums' takes every\."):
    evals.build([dict(kind="sums", evry=5)], context=None)
