"""Losses against numpy formulas."""

import jax.numpy as jnp
import numpy as np
import pytest

from bigflax import losses


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_matches_numpy(smoothing):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 5, 11)).astype(np.float32) * 4
  labels = rng.integers(0, 11, size=(3, 5))
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  target = np.eye(11)[labels] * (1 - smoothing) + smoothing / 11
  want = -(target * log_p).sum(-1)
  got = losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels), smoothing)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_correct_is_argmax_agreement():
  logits = jnp.array([[0.1, 2.0, -1.0], [3.0, 3.0, 0.0], [0.0, 0.0, 5.0]])
  np.testing.assert_array_equal(
    losses.correct(logits, jnp.array([1, 1, 0])), [True, True, False]
  )  # a tie counts as correct
