"""The seeds' small systems run through the very trainer the transformers use."""

import jax
import numpy as np

from bigflax import run as run_lib
from bigflax.train import loop, partitioning, writers
from experiments import seed_classifier, seed_regression


def train(config, workdir):
  mesh = partitioning.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  run = run_lib.build_training(config, str(workdir), mesh=mesh).job
  return loop.train(run)


def test_linear_regression_recovers_the_generating_weights(tmp_path):
  state = train(seed_regression.get_config(), tmp_path)
  params = state.params["output"]
  np.testing.assert_allclose(params["kernel"][:, 0], [3.0, -2.0], atol=0.03)
  np.testing.assert_allclose(params["bias"], [0.5], atol=0.03)
  validation = writers.read(str(tmp_path), "validation")[400]
  assert 0.007 < validation["mse"] < 0.013  # the noise variance is 0.01


def test_sigmoid_classifier_reaches_near_bayes_accuracy(tmp_path):
  train(seed_classifier.get_config(), tmp_path)
  records = writers.read(str(tmp_path), "validation")
  assert records[100]["loss"] > records[300]["loss"]
  assert records[300]["accuracy"] > 0.96  # Bayes-optimal: 98.3 %
  assert abs(records[300]["f1/class_1"] - records[300]["accuracy"]) < 0.05
