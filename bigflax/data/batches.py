"""The batching core: step-indexed batches of in-memory arrays.

The batch for step s is a pure function of (seed, s): a killed run resumes bit for bit by
asking for `iterate(start_step=restored_step)`, with no iterator state in the checkpoint.
Also: batches of similar lengths (length buckets), padding a split to whole batches, and
`split_batches`, the ending every task's batch builder shares.
"""

from collections.abc import Callable, Iterator, Sequence
import functools
import sys

import grain
import numpy as np


class Batches:
  """Batches of a dict of equal-length arrays, indexed by training step.

  Global batch s holds examples [s*B, (s+1)*B) of an endless stream that grain
  reshuffles each epoch (when `shuffle`). Process p gets rows
  [p*B/P, (p+1)*B/P) of it, so P processes together see the one-process batch.
  """

  def __init__(
    self,
    arrays: dict[str, np.ndarray],
    global_batch_size: int,
    *,
    seed: int,
    shuffle: bool,
    process_index: int = 0,
    process_count: int = 1,
    transform: Callable[[int, dict], dict] | None = None,
    lengths: np.ndarray | None = None,
  ):
    """`transform(step, global_batch)`, if given, changes each global batch on the host
    (e.g. MLM masking) before this process takes its rows; seed it from `step` to keep
    the batch a pure function of the step. `lengths` (with `shuffle`): put examples of
    similar length in the same batch (see `length_grouped_order`)."""
    num_examples = len(next(iter(arrays.values())))
    if global_batch_size % process_count:
      raise ValueError(
        f"data.global_batch_size={global_batch_size} is not divisible by the "
        f"process count {process_count}"
      )
    if num_examples < global_batch_size:
      raise ValueError(
        f"The split has {num_examples} examples, fewer than one batch "
        f"(data.global_batch_size={global_batch_size}); lower it or data.seq_len."
      )
    self.arrays = arrays
    self.steps_per_epoch = num_examples // global_batch_size
    local_batch_size = global_batch_size // process_count
    start = process_index * local_batch_size

    def local_rows(batch):
      return {k: v[start : start + local_batch_size] for k, v in batch.items()}

    if lengths is not None and shuffle:
      order = functools.lru_cache(maxsize=2)(
        lambda epoch: length_grouped_order(lengths, global_batch_size, seed, epoch)
      )
      steps = self.steps_per_epoch
      batch_indices = grain.MapDataset.range(sys.maxsize).map(
        lambda step: order(step // steps)[step % steps]
      )
    else:
      dataset = grain.MapDataset.range(num_examples)
      if shuffle:
        dataset = dataset.shuffle(seed=seed)
      batch_indices = dataset.repeat().batch(global_batch_size, drop_remainder=True)
    # Every process materialises the whole global batch and keeps its rows: a
    # gather from memory, cheap next to a training step, and the simplest way
    # to make the processes' rows provably the one-process batch.
    batches = batch_indices.map(lambda indices: {k: v[indices] for k, v in arrays.items()})
    if transform is not None:
      batches = batches.map_with_index(transform)
    self._batches = batches.map(local_rows)

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's rows of global batch `step`: arrays [B / process_count, ...]."""
    return self._batches[step]

  def iterate(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """batch(start_step), batch(start_step + 1), ..., prepared in the background."""
    return prefetched(self._batches[start_step:])


def split_batches(
  arrays: dict[str, np.ndarray],
  data_config,
  split: str,
  *,
  process_index: int,
  process_count: int,
  padding: dict | None = None,
  transform: Callable[[int, dict], dict] | None = None,
  lengths: np.ndarray | None = None,
) -> Batches:
  """Batches of one split's arrays: 'train' is shuffled and endless; other splits keep
  their order and, given `padding` (each key's blank row, default 0; the caller's weight
  row is 0), are padded to whole global batches, so that an evaluation of
  `steps_per_epoch` steps sees every example once. `transform` and `lengths` are Batches';
  `data_config` gives global_batch_size and seed."""
  shuffle = split == "train"
  if not shuffle and padding is not None:
    arrays = pad_to_whole_batches(arrays, data_config.global_batch_size, padding)
  return Batches(
    arrays,
    data_config.global_batch_size,
    seed=data_config.seed,
    shuffle=shuffle,
    process_index=process_index,
    process_count=process_count,
    transform=transform,
    lengths=lengths,
  )


def prefetched(batches: grain.MapDataset) -> Iterator[dict[str, np.ndarray]]:
  """The batches in order, each made by background threads ahead of its use."""
  read_options = grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)
  return iter(batches.to_iter_dataset(read_options))


def length_grouped_order(
  lengths: np.ndarray, global_batch_size: int, seed: int, epoch: int, pool: int = 50
) -> np.ndarray:
  """One epoch's batches [steps_per_epoch, B] of example indices, grouped by length.

  A random permutation is cut into pools of `pool` batches; each pool is sorted by
  length and cut into batches, and the batches are shuffled: every batch is random but
  its rows have similar lengths, so little of it is padding (as in fairseq / HF's
  group_by_length).
  """
  rng = np.random.default_rng([seed, epoch])
  steps = len(lengths) // global_batch_size
  indices = rng.permutation(len(lengths))[: steps * global_batch_size]
  size = pool * global_batch_size
  pools = [indices[i : i + size] for i in range(0, len(indices), size)]
  grouped = np.concatenate([p[np.argsort(lengths[p], kind="stable")] for p in pools])
  return grouped.reshape(steps, global_batch_size)[rng.permutation(steps)]


def bucket_width(valid: np.ndarray, buckets: Sequence[int]) -> int:
  """The smallest bucket width that holds every row's real tokens (`valid` > 0), else the
  full width: a few shapes, so jit compiles a few times, not once per batch."""
  longest = int((valid > 0).sum(axis=1).max())
  return next((b for b in sorted(buckets) if b >= longest), valid.shape[1])


def trim_to_bucket(batch: dict, buckets: Sequence[int], keys: Sequence[str]) -> dict:
  """The batch's `keys` arrays cut to the bucket width of batch['mask']."""
  width = bucket_width(batch["mask"], buckets)
  return {k: v[:, :width] if k in keys else v for k, v in batch.items()}


def pad_to_whole_batches(
  arrays: dict[str, np.ndarray], global_batch_size: int, blank: dict | None = None
) -> dict[str, np.ndarray]:
  """The arrays with rows appended up to a whole number of global batches, each key's row
  `blank[key]` (default 0): an evaluation of `steps_per_epoch` (= ceil(N / B)) steps sees
  every example once. The caller gives the padding weight 0."""
  padding = -len(next(iter(arrays.values()))) % global_batch_size
  blank = blank or {}
  return {
    k: np.concatenate(
      [v, np.broadcast_to(np.asarray(blank.get(k, 0), v.dtype), (padding, *v.shape[1:]))]
    )
    for k, v in arrays.items()
  }
