"""Small synthetic data sets generated in memory from a seed (the seeds' toy problems)."""

import numpy as np

NAMES = ("linear_regression", "two_blobs")


def make(name: str, split: str, num_examples: int, seed: int) -> dict[str, np.ndarray]:
  """{'features': float32 (N, 2), and 'targets' (regression) or 'label'}; splits draw
  from the same distribution with different seeds."""
  rng = np.random.default_rng([seed, {"train": 0, "validation": 1, "test": 2}[split]])
  features = rng.normal(size=(num_examples, 2)).astype(np.float32)
  if name == "linear_regression":
    # y = 3 x0 - 2 x1 + 0.5 + noise(0.1): the fitted weights should recover these.
    y = features @ np.array([3.0, -2.0], np.float32) + 0.5
    y += 0.1 * rng.normal(size=num_examples).astype(np.float32)
    return {"features": features, "targets": y[:, None].astype(np.float32)}
  if name == "two_blobs":
    labels = rng.integers(0, 2, size=num_examples)
    features += np.where(labels[:, None] == 1, 1.5, -1.5).astype(np.float32)
    return {"features": features, "label": labels.astype(np.int32)}
  raise ValueError(f"data.name={name!r} is not a synthetic data set; choose one of {NAMES}.")
