"""What a sweep tries: trials, each a dict of config field -> value, and the search space
of an adaptive search. An experiment file builds them in `get_sweep()` (or
`get_search_space()`) and imports only this module, which imports nothing heavy:

  from bigflax import sweep

  def get_sweep():
    return sweep.product(**{"optim.lr": [1e-3, 3e-3], "model.embed_dim": [64, 128]})

`bigflax/sweep/runner.py` runs them.
"""

import dataclasses
import itertools

import numpy as np


def _sweeps(sweeps, fields) -> list[list[dict]]:
  return [list(s) for s in sweeps] + [[{k: v} for v in values] for k, values in fields.items()]


def _merge(*trials: dict) -> dict:
  merged = {}
  for trial in trials:
    for key, value in trial.items():
      if key in merged:
        raise ValueError(f"sweep field {key!r} is set by two of the combined sweeps.")
      merged[key] = value
  return merged


def product(*sweeps, **fields) -> list[dict]:
  """Every combination: product(**{"optim.lr": [1e-3, 3e-4]}, seeds(2)) gives 4 trials."""
  return [_merge(*combination) for combination in itertools.product(*_sweeps(sweeps, fields))]


def zip_(*sweeps, **fields) -> list[dict]:
  """Trial i takes the i-th value of each: zip_(**{"optim.lr": [...], "optim.b2": [...]})."""
  parts = _sweeps(sweeps, fields)
  lengths = sorted({len(p) for p in parts})
  if len(lengths) > 1:
    raise ValueError(f"zip_ needs sweeps of one length; got lengths {lengths}.")
  return [_merge(*combination) for combination in zip(*parts)]


def seeds(n: int, field: str = "seed") -> list[dict]:
  """n trials differing only in `field` (0, 1, ..., n - 1)."""
  return [{field: i} for i in range(n)]


@dataclasses.dataclass(frozen=True)
class LogUniform:
  low: float
  high: float

  def sample(self, rng):
    return float(np.exp(rng.uniform(np.log(self.low), np.log(self.high))))

  def suggest(self, trial, name):
    return trial.suggest_float(name, self.low, self.high, log=True)


@dataclasses.dataclass(frozen=True)
class Uniform:
  low: float
  high: float

  def sample(self, rng):
    return float(rng.uniform(self.low, self.high))

  def suggest(self, trial, name):
    return trial.suggest_float(name, self.low, self.high)


@dataclasses.dataclass(frozen=True)
class IntUniform:
  """An integer in [low, high], both included."""

  low: int
  high: int

  def sample(self, rng):
    return int(rng.integers(self.low, self.high + 1))

  def suggest(self, trial, name):
    return trial.suggest_int(name, self.low, self.high)


@dataclasses.dataclass(frozen=True)
class Choice:
  values: tuple

  def sample(self, rng):
    return self.values[int(rng.integers(len(self.values)))]

  def suggest(self, trial, name):
    return trial.suggest_categorical(name, list(self.values))


def random(n: int, seed: int = 0, **distributions) -> list[dict]:
  """n trials drawn from `distributions` (LogUniform, Uniform, IntUniform, Choice) with a
  fixed seed: random(8, seed=0, **{"optim.lr": LogUniform(1e-4, 1e-2)})."""
  rng = np.random.default_rng(seed)
  return [{k: d.sample(rng) for k, d in distributions.items()} for _ in range(n)]


def format_value(value) -> str:
  """A value as a --config.k=v override reads it back."""
  return repr(value) if isinstance(value, float) else str(value)
