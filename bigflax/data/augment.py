"""Image augmentation on the host, per global batch, as a pure function of (seed, step):
a resumed run sees exactly the augmented batches it would have seen (`Batches`' transform)."""

import numpy as np


def crop_and_flip(step: int, batch: dict, *, seed: int, padding: int, flip: bool) -> dict:
  """Each image zero-padded by `padding` pixels and cropped back to its size at a random
  offset; with `flip`, mirrored left-right with probability 1/2."""
  images = batch["image"]
  n, h, w, _ = images.shape
  rng = np.random.default_rng([seed, step])
  padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  top = rng.integers(0, 2 * padding + 1, n)
  left = rng.integers(0, 2 * padding + 1, n)
  rows = (top[:, None] + np.arange(h))[:, :, None]  # (n, h, 1)
  cols = (left[:, None] + np.arange(w))[:, None, :]  # (n, 1, w)
  if flip:
    mirrored = rng.random(n) < 0.5
    cols = np.where(mirrored[:, None, None], cols[:, :, ::-1], cols)
  return dict(batch, image=padded[np.arange(n)[:, None, None], rows, cols])
