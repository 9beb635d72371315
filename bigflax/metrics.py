"""Metrics shared by training-time evaluation and the offline `eval` command.

An eval function returns *sums* over a batch (e.g. summed loss and a count); sums add up
across batches and hosts exactly, and a task's `finalize` turns the totals into metrics.
"""

import math

import jax
import numpy as np


def accumulate(totals: dict | None, sums: dict) -> dict:
  sums = jax.device_get(sums)
  if totals is None:
    return {k: np.asarray(v, np.float64) for k, v in sums.items()}
  return {k: totals[k] + np.asarray(v, np.float64) for k, v in sums.items()}


def perplexity(mean_nll: float) -> float:
  return math.exp(min(mean_nll, 700.0))  # no overflow for a diverged run
