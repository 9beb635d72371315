"""Step-indexed LM batches drawn from prepared corpora in fixed proportions.

The global batch of step s is a pure function of (seed, s), computed in O(batch) from s
alone, so a run resumes exactly on any number of hosts:
- rows per corpus: corpus i has had floor(s * B * w_i) rows before step s (the corpus of
  largest weight takes the rest), so over any run the counts are within a row or two of
  the weights, and step s's counts are the difference of two such totals;
- corpus i's rows are positions of its own endless stream: position p is window
  perm_e(p mod n) of epoch e = p // n, where perm_e is grain's index shuffle (O(1) memory,
  a new permutation every epoch); validation reads the windows in order;
- the step's rows are shuffled by a permutation seeded by (seed, s), and process k of P
  takes rows [k B/P, (k+1) B/P) and reads only those windows.
"""

import sys

import grain
from grain.experimental import index_shuffle
import numpy as np

from bigflax.data import batches as batches_lib
from bigflax.data import shards


def rows_before(weights: np.ndarray, global_batch_size: int, step: int) -> np.ndarray:
  """int64[K]: how many rows each corpus has had in steps [0, step)."""
  total = step * global_batch_size
  counts = np.floor(total * weights).astype(np.int64)
  filler = int(np.argmax(weights))
  counts[filler] = total - (counts.sum() - counts[filler])
  return counts


def check_batch_holds_mixture(weights: np.ndarray, global_batch_size: int) -> None:
  """The largest corpus fills what the others leave: that is never negative when
  B * max(w) >= K - 1."""
  if global_batch_size * weights.max() < len(weights) - 1:
    raise ValueError(
      f"data.global_batch_size={global_batch_size} is too small for a "
      f"mixture of {len(weights)} corpora whose largest weight is "
      f"{weights.max():.3f}: raise it to at least "
      f"{int(np.ceil((len(weights) - 1) / weights.max()))}."
    )


class MixtureBatches:
  """{'inputs', 'targets'} batches [B / process_count, seq_len] of a mixture of corpora."""

  def __init__(
    self,
    windows: dict[str, shards.Windows],
    weights: dict[str, float],
    global_batch_size: int,
    *,
    seed: int,
    shuffle: bool,
    process_index: int = 0,
    process_count: int = 1,
    transform=None,
  ):
    """`transform(step, batch)`, if given, changes this process's rows of each batch; it
    must work row by row (the lm task's document_fields does)."""
    if global_batch_size % process_count:
      raise ValueError(
        f"data.global_batch_size={global_batch_size} is not divisible by "
        f"the process count {process_count}"
      )
    self.names = [name for name in windows if weights.get(name, 0) > 0]
    for name in self.names:
      if not len(windows[name]):
        raise ValueError(
          f"data.mixture draws from {name!r}, but it has no windows in "
          f"this split: give it more text or a larger validation_fraction."
        )
    self.weights = np.array([weights[name] for name in self.names], np.float64)
    self.weights /= self.weights.sum()
    check_batch_holds_mixture(self.weights, global_batch_size)
    self._windows = [windows[name] for name in self.names]
    self._global_batch_size = global_batch_size
    self._seed = seed
    self._local = slice(
      process_index * global_batch_size // process_count,
      (process_index + 1) * global_batch_size // process_count,
    )
    self._shuffle = shuffle
    self._transform = transform
    # A seed of its own per corpus, far from the others': epoch e of a corpus is shuffled
    # with its seed + e, so neighbouring seeds would repeat each other's permutations.
    self._seeds = [
      int(s) for s in np.random.SeedSequence([seed, 1]).generate_state(len(self.names))
    ]
    self.steps_per_epoch = sum(map(len, self._windows)) // global_batch_size
    if not self.steps_per_epoch:
      raise ValueError(
        f"The split has fewer windows than one batch "
        f"(data.global_batch_size={global_batch_size}); lower it or "
        f"data.seq_len."
      )
    self.summary = "mixture of prepared corpora: " + ", ".join(
      f"{name} {w:.1%} ({len(ws)} windows)"
      for name, w, ws in zip(self.names, self.weights, self._windows)
    )

  def positions(self, step: int) -> tuple[np.ndarray, np.ndarray]:
    """(corpus index, position in that corpus's stream) of this process's rows of step
    `step`, int64[B / process_count] each."""
    start = rows_before(self.weights, self._global_batch_size, step)
    stop = rows_before(self.weights, self._global_batch_size, step + 1)
    corpus = np.repeat(np.arange(len(self.names)), stop - start)
    position = np.concatenate([np.arange(a, b) for a, b in zip(start, stop)])
    order = np.random.default_rng([self._seed, step]).permutation(len(corpus))[self._local]
    return corpus[order], position[order]

  def rows(self, step: int) -> np.ndarray:
    """int64[B / process_count, 2]: (corpus index, window index) of this process's rows."""
    corpus, position = self.positions(step)
    window = np.array(
      [self.position_window(c, p) for c, p in zip(corpus, position)], np.int64
    ).reshape(-1)
    return np.stack([corpus, window], axis=1)

  def position_window(self, corpus: int, position: int) -> int:
    """The window at `position` of corpus `corpus`'s endless stream: epoch after epoch,
    each a permutation of its own (grain's index shuffle: O(1) memory, any corpus size)."""
    epoch, index = divmod(int(position), len(self._windows[corpus]))
    if not self._shuffle:
      return index
    return index_shuffle(
      index,
      max_index=len(self._windows[corpus]) - 1,
      seed=(self._seeds[corpus] + epoch) % 2**32,
      rounds=4,
    )

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's rows of global batch `step`."""
    rows = self.rows(step)
    tokens = np.empty((len(rows), self._windows[0].window), np.int32)
    for c, windows in enumerate(self._windows):
      mine = rows[:, 0] == c
      tokens[mine] = windows.read(rows[mine, 1])
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}
    return batch if self._transform is None else self._transform(step, batch)

  def iterate(self, start_step: int = 0):
    """batch(start_step), batch(start_step + 1), ..., prepared in background threads."""
    return batches_lib.prefetched(grain.MapDataset.range(start_step, sys.maxsize).map(self.batch))
