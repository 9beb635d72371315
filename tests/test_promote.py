"""Eval-gated promotion: better is promoted, worse is kept out, every decision is logged."""

import json
import pathlib

import pytest

from bigflax import promote
from bigflax import registry as registry_lib
from bigflax import run as run_lib
from bigflax.train import loop
from helpers import run, tiny_config


def test_improvement_knows_which_way_each_metric_goes():
  assert registry_lib.improvement("loss", 2.0, 2.5) == pytest.approx(0.5)
  assert registry_lib.improvement("perplexity", 9.0, 8.0) == pytest.approx(-1.0)
  assert registry_lib.improvement("accuracy", 0.9, 0.8) == pytest.approx(0.1)
  assert registry_lib.improvement("f1/macro", 0.7, 0.8) == pytest.approx(-0.1)
  assert registry_lib.decide("loss", {"loss": 2.0}, {"loss": 2.0})["promoted"]  # not worse
  assert not registry_lib.decide("loss", {"loss": 2.0}, {"loss": 2.5}, min_delta=0.6)["promoted"]


def test_better_is_promoted_and_worse_is_kept_out(tfds_dir, tmp_path):
  runs = {}
  for name, steps in (("good", 20), ("poor", 1)):
    config = tiny_config(tfds_dir)
    config.train.update(num_steps=steps, checkpoint_every=steps)
    runs[name] = str(tmp_path / name)
    loop.train(run_lib.build_training(config, runs[name]).job)
  registry = str(tmp_path / "registry")

  kept_out = promote.promote(runs["poor"], runs["good"], "validation", None, 0.0, registry)
  assert not kept_out["promoted"] and kept_out["metric"] == "loss"
  assert kept_out["candidate_metrics"]["loss"] > kept_out["incumbent_metrics"]["loss"]
  assert registry_lib.served(registry) is None

  promoted = promote.promote(runs["good"], runs["poor"], "validation", None, 0.0, registry)
  assert promoted["promoted"]
  assert registry_lib.served(registry)["workdir"] == runs["good"]
  # Scores are the evaluation's, not remembered ones: the same run scores the same.
  assert promoted["candidate_metrics"] == kept_out["incumbent_metrics"]
  log = [
    json.loads(line)
    for line in pathlib.Path(f"{registry}/{registry_lib.LOG}").read_text().splitlines()
  ]
  assert [d["promoted"] for d in log] == [False, True]

  # The served run trains on: the next decision judges the step that is served.
  config = tiny_config(tfds_dir)
  config.train.update(num_steps=24, checkpoint_every=24)
  loop.train(run_lib.build_training(config, runs["good"]).job)
  again = promote.promote(runs["poor"], runs["good"], "validation", None, 0.0, registry)
  assert again["incumbent_step"] == 20
  assert again["incumbent_metrics"] == promoted["candidate_metrics"]


def test_promote_names_a_missing_run(tmp_path):
  result = run(
    "promote", tmp_path, "--candidate", str(tmp_path / "nope"), "--incumbent", str(tmp_path)
  )
  assert result.returncode == 2
  assert "--candidate=" in result.stderr and "is not a run directory" in result.stderr
