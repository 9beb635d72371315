"""Hyperparameter sweeps: what a sweep tries (space.py), running one trial (trials.py),
the sweep itself (runner.py: `bigflax sweep`) and its results table and plot (results.py).

An experiment file imports only this package, which holds the search-space helpers and
imports nothing heavy:

  from bigflax import sweep

  def get_sweep():
    return sweep.product(**{"optim.lr": [1e-3, 3e-3], "model.embed_dim": [64, 128]})
"""

from bigflax.sweep.space import (  # noqa: F401  pylint: disable=unused-import
  Choice,
  IntUniform,
  LogUniform,
  Uniform,
  format_value,
  product,
  random,
  seeds,
  zip_,
)
