"""Step-indexed batches: language-model windows and labelled sentences.

The batch for step s is a pure function of (seed, s): a killed run resumes
bit for bit by asking for `iterate(start_step=restored_step)`, with no iterator
state in the checkpoint.
"""

import itertools
from typing import Callable, Iterator, Sequence

import grain
import ml_collections
import numpy as np

from bigflax.data import multi30k
from bigflax.data import sst2
from bigflax.data import stdlib_corpus
from bigflax.data import tiny_shakespeare
from bigflax.data import tokenizers

DATASET_NAMES = ("stdlib_corpus", "tiny_shakespeare", "sst2", "multi30k")
# Datasets of labelled sentences (sentence, label, index), not documents (path, text).
_SENTENCE_CLASSIFICATION = frozenset({"sst2"})
# Datasets of sentence pairs, one feature per language (multi30k: 'de', 'en', 'index').
_TRANSLATION = frozenset({"multi30k"})
# Datasets whose examples are consecutive chunks of one text: an eos between
# chunks would teach the model document ends that aren't there.
_CHUNKED_SINGLE_TEXT = frozenset({"tiny_shakespeare"})


def _builder(name: str, data_dir, source_dir):
  if name == "stdlib_corpus":
    return stdlib_corpus.StdlibCorpus(data_dir=data_dir)
  if name == "tiny_shakespeare":
    return tiny_shakespeare.TinyShakespeare(data_dir=data_dir, source_dir=source_dir)
  if name == "sst2":
    return sst2.Sst2(data_dir=data_dir, source_dir=source_dir)
  if name == "multi30k":
    return multi30k.Multi30k(data_dir=data_dir, source_dir=source_dir)
  raise ValueError(f"data.name={name!r} is not one of {list(DATASET_NAMES)}")


def _load_examples(name: str, split: str, data_dir, source_dir, order_key: str) -> list[dict]:
  """Every example of one split, sorted by `order_key`; prepares the dataset if needed."""
  builder = _builder(name, data_dir, source_dir)
  try:
    builder.download_and_prepare(file_format="array_record")
  except FileExistsError:
    # Another process sharing data_dir finished first (TFDS renames a temporary
    # directory into place); the builders are deterministic, so use its copy.
    builder = _builder(name, data_dir, source_dir)
  source = builder.as_data_source(split=split)
  examples = source.__getitems__(range(len(source)))
  # TFDS writes examples in key-hash order; sort to get the source's order.
  examples.sort(key=lambda example: example[order_key])
  return examples


def load_text_split(name: str, split: str, data_dir=None, source_dir=None) -> list[str]:
  """The texts of one split in source order: documents sorted by path, or sst2's sentences.

  Prepares the dataset if needed. `data_dir` None means TFDS's default.
  `source_dir` is where tiny_shakespeare's input.txt or sst2's TSVs live (None:
  download them).
  """
  if name in _SENTENCE_CLASSIFICATION:
    return load_labelled_sentences(name, split, data_dir, source_dir)[0]
  if name in _TRANSLATION:  # both sides: a joint vocabulary learns from both languages
    examples = _load_examples(name, split, data_dir, source_dir, "index")
    return [example[lang].decode("utf-8") for lang in sorted(set(examples[0]) - {"index"})
            for example in examples]
  examples = _load_examples(name, split, data_dir, source_dir, "path")
  return [example["text"].decode("utf-8") for example in examples]


def load_labelled_sentences(
    name: str, split: str, data_dir=None, source_dir=None
) -> tuple[list[str], np.ndarray]:
  """(sentences, int32 labels) of one split of a sentence-classification dataset, in file order."""
  if name not in _SENTENCE_CLASSIFICATION:
    raise ValueError(
        f"data.name={name!r} is not a text-classification dataset "
        f"({sorted(_SENTENCE_CLASSIFICATION)})"
    )
  examples = _load_examples(name, split, data_dir, source_dir, "index")
  sentences = [example["sentence"].decode("utf-8") for example in examples]
  return sentences, np.array([example["label"] for example in examples], np.int32)


def load_translation_pairs(
    name: str, split: str, source_lang: str, target_lang: str, data_dir=None,
    source_dir=None,
) -> tuple[list[str], list[str]]:
  """(sources, targets) of one split of a translation dataset, in file order."""
  if name not in _TRANSLATION:
    raise ValueError(f"data.name={name!r} is not a translation dataset "
                     f"({sorted(_TRANSLATION)})")
  examples = _load_examples(name, split, data_dir, source_dir, "index")
  for lang in (source_lang, target_lang):
    if lang not in examples[0]:
      raise ValueError(f"{name} has no language {lang!r} (data.source_lang / "
                       f"data.target_lang); it has {sorted(set(examples[0]) - {'index'})}.")
  return ([example[source_lang].decode("utf-8") for example in examples],
          [example[target_lang].decode("utf-8") for example in examples])


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
      transform: Callable[[int, dict], dict] | None = None,
  ):
    """`transform(step, global_batch)`, if given, changes each global batch on the host
    (e.g. MLM masking) before this process takes its rows; seed it from `step` to keep
    the batch a pure function of the step."""
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
    batches = (
        dataset.repeat()
        .batch(global_batch_size, drop_remainder=True)
        .map(lambda indices: {k: v[indices] for k, v in arrays.items()})
    )
    if transform is not None:
      batches = batches.map_with_index(transform)
    self._batches = batches.map(local_rows)

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
  windows = packed_windows(data_config, tokenizer, split, data_config.seq_len + 1)
  return lm_batches(
      windows,
      data_config.global_batch_size,
      seed=data_config.seed,
      shuffle=split == "train",
      process_index=process_index,
      process_count=process_count,
  )


def packed_windows(data_config, tokenizer, split: str, length: int) -> np.ndarray:
  """The split's documents tokenized, each followed by eos, cut into int32[n, length]."""
  texts = load_text_split(
      data_config.name, split, data_config.data_dir, data_config.get("source_dir")
  )
  if data_config.name in _CHUNKED_SINGLE_TEXT:
    texts = ["".join(texts)]
  return pack_documents(tokenizer.encode_batch(texts), tokenizer.eos_id, length - 1)


def lm_batches(windows: np.ndarray, global_batch_size: int, **kwargs) -> Batches:
  """{'inputs': w[:-1], 'targets': w[1:]} batches of packed windows (views, no copy)."""
  return Batches({"inputs": windows[:, :-1], "targets": windows[:, 1:]},
                 global_batch_size, **kwargs)


def frame_sentences(
    token_lists: Sequence[Sequence[int]], seq_len: int, *, bos_id: int, eos_id: int,
    pad_id: int,
) -> tuple[np.ndarray, np.ndarray]:
  """Each sentence as [bos] ids [eos] + padding: int32 tokens and mask (1 = real), [N, seq_len].

  A sentence longer than seq_len - 2 keeps its first seq_len - 2 ids.
  """
  body = seq_len - 2
  lengths = np.array([min(len(ids), body) for ids in token_lists], np.int64)
  tokens = np.full((len(token_lists), seq_len), pad_id, np.int32)
  tokens[:, 0] = bos_id
  # A boolean assignment fills row by row, so each row's first `length` slots get
  # that sentence's ids, in order.
  tokens[:, 1:-1][np.arange(body) < lengths[:, None]] = np.fromiter(
      itertools.chain.from_iterable(ids[:body] for ids in token_lists),
      np.int32, count=lengths.sum(),
  )
  tokens[np.arange(len(tokens)), lengths + 1] = eos_id
  mask = (np.arange(seq_len) < lengths[:, None] + 2).astype(np.int32)
  return tokens, mask


def make_text_classification_batches(
    data_config: ml_collections.ConfigDict,
    tokenizer: tokenizers.Tokenizer,
    split: str,
    *,
    process_index: int,
    process_count: int,
) -> Batches:
  """Labelled-sentence batches of one split: tokens, mask, segments, label, weight.

  tokens are [CLS] ids [SEP] + padding for BERT tokenizers ([bos] ids [eos] for
  the others), mask is 1 at real tokens, segments are 0 (one sentence), weight
  is 1 for a real example. 'train' is shuffled and endless. Other splits are in
  file order, padded with weight-0 empty sentences to whole global batches: an
  evaluation of `steps_per_epoch` (= ceil(N / global_batch_size)) steps sees
  every example exactly once, and sums weighted by `weight` ignore the padding.

  `data_config` has name, data_dir, source_dir, seq_len, global_batch_size, seed.
  """
  sentences, labels = load_labelled_sentences(
      data_config.name, split, data_config.data_dir, data_config.get("source_dir")
  )
  weights = np.ones(len(sentences), np.float32)
  shuffle = split == "train"
  if not shuffle:
    num_padding = -len(sentences) % data_config.global_batch_size
    sentences += [""] * num_padding
    labels = np.pad(labels, (0, num_padding))
    weights = np.pad(weights, (0, num_padding))
  tokens, mask = frame_sentences(
      tokenizer.encode_batch(sentences), data_config.seq_len,
      bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
  )
  arrays = {"tokens": tokens, "mask": mask, "segments": np.zeros_like(tokens),
            "label": labels, "weight": weights}
  return Batches(arrays, data_config.global_batch_size, seed=data_config.seed,
                 shuffle=shuffle, process_index=process_index, process_count=process_count)


def make_translation_batches(
    data_config: ml_collections.ConfigDict,
    tokenizer: tokenizers.Tokenizer,
    split: str,
    *,
    process_index: int,
    process_count: int,
) -> Batches:
  """Sentence-pair batches of one split, padded (or cut) to data.seq_len tokens:
  source ([bos] x [eos]) and source_mask; target_inputs ([bos] y), targets (y [eos]) and
  target_weights (1 at real target tokens: the teacher-forcing loss counts those).

  'train' is shuffled and endless; other splits are in file order, padded with
  weight-0 empty pairs to whole global batches, so `steps_per_epoch` (ceil(N / B)) steps
  see every pair once. `data_config` has name, data_dir, source_dir, source_lang,
  target_lang, seq_len, global_batch_size, seed.
  """
  sources, targets = load_translation_pairs(
      data_config.name, split, data_config.source_lang, data_config.target_lang,
      data_config.data_dir, data_config.get("source_dir"))
  shuffle = split == "train"
  num_padding = 0 if shuffle else -len(sources) % data_config.global_batch_size
  sources, targets = sources + [""] * num_padding, targets + [""] * num_padding
  framing = dict(bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
  source, source_mask = frame_sentences(tokenizer.encode_batch(sources),
                                        data_config.seq_len, **framing)
  target, target_mask = frame_sentences(tokenizer.encode_batch(targets),
                                        data_config.seq_len + 1, **framing)
  weights = target_mask[:, 1:].astype(np.float32)
  weights[len(weights) - num_padding:] = 0
  arrays = {"source": source, "source_mask": source_mask, "target_inputs": target[:, :-1],
            "targets": target[:, 1:], "target_weights": weights}
  # Training batches drop the columns that are padding in every row: a random batch of
  # Multi30k needs ~32 of 48 tokens. Other splits keep one shape (one decoder compile).
  return Batches(arrays, data_config.global_batch_size, seed=data_config.seed,
                 shuffle=shuffle, process_index=process_index, process_count=process_count,
                 transform=trim_pair_padding if shuffle else None)


def trim_pair_padding(step: int, batch: dict, multiple: int = 8) -> dict:
  """A sentence-pair batch cut to its longest source and target, rounded up to a multiple
  of `multiple` (so a run compiles only a few shapes)."""
  del step
  def length(valid):
    longest = int(valid.sum(axis=1).max())
    return min(-(-longest // multiple) * multiple, valid.shape[1])
  source, target = length(batch["source_mask"] > 0), length(batch["target_weights"] > 0)
  return {k: v[:, :source] if k.startswith("source") else v[:, :target]
          for k, v in batch.items()}
