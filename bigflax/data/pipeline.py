"""Step-indexed language-model batches.

The batch for step s is a pure function of (seed, s): a killed run resumes
bit for bit by asking for `iterate(start_step=restored_step)`, with no iterator
state in the checkpoint.
"""

from typing import Iterator, Sequence

import grain
import ml_collections
import numpy as np

from bigflax.data import stdlib_corpus
from bigflax.data import tiny_shakespeare
from bigflax.data import tokenizers

DATASET_NAMES = ("stdlib_corpus", "tiny_shakespeare")
# Datasets whose examples are consecutive chunks of one text: an eos between
# chunks would teach the model document ends that aren't there.
_CHUNKED_SINGLE_TEXT = frozenset({"tiny_shakespeare"})


def _builder(name: str, data_dir, source_dir):
  if name == "stdlib_corpus":
    return stdlib_corpus.StdlibCorpus(data_dir=data_dir)
  if name == "tiny_shakespeare":
    return tiny_shakespeare.TinyShakespeare(data_dir=data_dir, source_dir=source_dir)
  raise ValueError(f"data.name={name!r} is not one of {list(DATASET_NAMES)}")


def load_text_split(name: str, split: str, data_dir=None, source_dir=None) -> list[str]:
  """The texts of one split, sorted by path; prepares the dataset if needed.

  `data_dir` None means TFDS's default. `source_dir` is where
  tiny_shakespeare's input.txt lives (None: download it).
  """
  builder = _builder(name, data_dir, source_dir)
  try:
    builder.download_and_prepare(file_format="array_record")
  except FileExistsError:
    # Another process sharing data_dir finished first (TFDS renames a temporary
    # directory into place); the builders are deterministic, so use its copy.
    builder = _builder(name, data_dir, source_dir)
  source = builder.as_data_source(split=split)
  examples = source.__getitems__(range(len(source)))
  # TFDS writes examples in key-hash order; sort to get the documents' order.
  examples.sort(key=lambda example: example["path"])
  return [example["text"].decode("utf-8") for example in examples]


def pack_documents(
    token_lists: Sequence[Sequence[int]], eos_id: int, seq_len: int
) -> np.ndarray:
  """Documents, each followed by eos, cut into int32[num_windows, seq_len + 1].

  A window gives inputs w[:-1] and targets w[1:]; the tail is dropped.
  """
  eos = np.array([eos_id], np.int32)
  stream = np.concatenate(
      [part for ids in token_lists for part in (np.asarray(ids, np.int32), eos)]
  )
  num_windows = len(stream) // (seq_len + 1)
  return stream[: num_windows * (seq_len + 1)].reshape(num_windows, seq_len + 1)


def unigram_entropy(windows: np.ndarray, vocab_size: int) -> float:
  """Nats/token of the tokens' unigram distribution: the loss to beat."""
  p = np.bincount(windows.ravel(), minlength=vocab_size) / windows.size
  return float(-np.sum(p[p > 0] * np.log(p[p > 0])))


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
  ):
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

    dataset = grain.MapDataset.range(num_examples)
    if shuffle:
      dataset = dataset.shuffle(seed=seed)
    # Every process materialises the whole global batch and keeps its rows: a
    # gather from memory, cheap next to a training step, and the simplest way
    # to make the processes' rows provably the one-process batch.
    self._batches = (
        dataset.repeat()
        .batch(global_batch_size, drop_remainder=True)
        .map(lambda indices: local_rows({k: v[indices] for k, v in arrays.items()}))
    )

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's rows of global batch `step`: arrays [B / process_count, ...]."""
    return self._batches[step]

  def iterate(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """batch(start_step), batch(start_step + 1), ..., prepared in the background."""
    read_options = grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)
    return iter(self._batches[start_step:].to_iter_dataset(read_options))


def make_lm_batches(
    data_config: ml_collections.ConfigDict,
    tokenizer: tokenizers.Tokenizer,
    split: str,
    *,
    process_index: int,
    process_count: int,
) -> Batches:
  """LM batches of one split; 'train' is shuffled, other splits are not.

  `data_config` has name, data_dir, source_dir, seq_len, global_batch_size, seed.
  """
  texts = load_text_split(
      data_config.name, split, data_config.data_dir, data_config.get("source_dir")
  )
  if data_config.name in _CHUNKED_SINGLE_TEXT:
    texts = ["".join(texts)]
  windows = pack_documents(
      tokenizer.encode_batch(texts), tokenizer.eos_id, data_config.seq_len
  )
  return lm_batches(
      windows,
      data_config.global_batch_size,
      seed=data_config.seed,
      shuffle=split == "train",
      process_index=process_index,
      process_count=process_count,
  )


def lm_batches(windows: np.ndarray, global_batch_size: int, **kwargs) -> Batches:
  """{'inputs': w[:-1], 'targets': w[1:]} batches of packed windows (views, no copy)."""
  return Batches({"inputs": windows[:, :-1], "targets": windows[:, 1:]},
                 global_batch_size, **kwargs)
