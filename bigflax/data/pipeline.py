"""Step-indexed batches: language-model windows, labelled sentences and images.

The batch for step s is a pure function of (seed, s): a killed run resumes
bit for bit by asking for `iterate(start_step=restored_step)`, with no iterator
state in the checkpoint.
"""

import functools
import itertools
import os
import sys
from typing import Callable, Iterator, Sequence

import grain
import ml_collections
import numpy as np

from bigflax.data import fashion_mnist
from bigflax.data import feedback
from bigflax.data import multi30k
from bigflax.data import sst2
from bigflax.data import stdlib_corpus
from bigflax.data import stdlib_qa
from bigflax.data import tiny_shakespeare
from bigflax.data import tokenizers

DATASET_NAMES = ("stdlib_corpus", "tiny_shakespeare", "sst2", "stdlib_qa", "feedback",
                 "fashion_mnist", "multi30k")
# Datasets of labelled images (image, label, index) -> their split rule.
IMAGE_CLASSIFICATION = {"fashion_mnist": fashion_mnist.SPLITS}
# Class names of the labelled datasets, for confusion matrices.
CLASS_NAMES = {"sst2": sst2.LABELS, "fashion_mnist": fashion_mnist.LABELS}
# Datasets of labelled sentences (sentence, label, index), not documents (path, text).
_SENTENCE_CLASSIFICATION = frozenset({"sst2"})
# Datasets of (prompt, answer) pairs for supervised fine-tuning.
_PROMPT_ANSWER = frozenset({"stdlib_qa", "feedback"})
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
  if name == "stdlib_qa":
    return stdlib_qa.StdlibQa(data_dir=data_dir)
  if name == "feedback":
    # Feedback keeps arriving: each state of the directory is its own prepared dataset.
    snapshot = feedback.snapshot_name(source_dir)
    return feedback.Feedback(source_dir=source_dir, data_dir=os.path.join(
        data_dir or os.path.join(source_dir, ".tfds"), snapshot))
  if name == "fashion_mnist":
    return fashion_mnist.FashionMnist(data_dir=data_dir, source_dir=source_dir)
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


def load_prompt_answers(name: str, split: str, data_dir=None,
                        source_dir=None) -> list[tuple[str, str]]:
  """(prompt, answer) pairs of one split of a fine-tuning dataset, in id order."""
  if name not in _PROMPT_ANSWER:
    raise ValueError(f"data.name={name!r} is not a prompt/answer dataset "
                     f"({sorted(_PROMPT_ANSWER)}).")
  examples = _load_examples(name, split, data_dir, source_dir, "id")
  return [(e["prompt"].decode("utf-8"), e["answer"].decode("utf-8")) for e in examples]


def load_labelled_images(
    name: str, split: str, data_dir=None, source_dir=None
) -> tuple[np.ndarray, np.ndarray]:
  """(uint8 images (N, H, W, C), int32 labels) of one split, in file order.

  `split` is a name in the dataset's split rule, e.g. fashion_mnist's validation is the
  end of the TFDS train split.
  """
  if name not in IMAGE_CLASSIFICATION:
    raise ValueError(f"data.name={name!r} is not an image-classification dataset "
                     f"({sorted(IMAGE_CLASSIFICATION)})")
  if split not in IMAGE_CLASSIFICATION[name]:
    raise ValueError(f"{name} has no split {split!r}; choose one of "
                     f"{sorted(IMAGE_CLASSIFICATION[name])}.")
  tfds_split, start, stop = IMAGE_CLASSIFICATION[name][split]
  examples = _load_examples(name, tfds_split, data_dir, source_dir, "index")[start:stop]
  return (np.stack([example["image"] for example in examples]),
          np.array([example["label"] for example in examples], np.int32))


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
      order = functools.lru_cache(maxsize=2)(lambda epoch: length_grouped_order(
          lengths, global_batch_size, seed, epoch))
      steps = self.steps_per_epoch
      batch_indices = grain.MapDataset.range(sys.maxsize).map(
          lambda step: order(step // steps)[step % steps])
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
    read_options = grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)
    return iter(self._batches[start_step:].to_iter_dataset(read_options))


def length_grouped_order(lengths: np.ndarray, global_batch_size: int, seed: int,
                         epoch: int, pool: int = 50) -> np.ndarray:
  """One epoch's batches [steps_per_epoch, B] of example indices, grouped by length.

  A random permutation is cut into pools of `pool` batches; each pool is sorted by
  length and cut into batches, and the batches are shuffled: every batch is random but
  its rows have similar lengths, so little of it is padding (as in fairseq / HF's
  group_by_length).
  """
  rng = np.random.default_rng([seed, epoch])
  steps = len(lengths) // global_batch_size
  indices = rng.permutation(len(lengths))[:steps * global_batch_size]
  size = pool * global_batch_size
  pools = [indices[i:i + size] for i in range(0, len(indices), size)]
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


def frame_prompt_answers(
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]], seq_len: int, *, eos_id: int,
    pad_id: int,
) -> tuple[np.ndarray, np.ndarray]:
  """[eos] prompt answer [eos] + padding as int32 windows [N, seq_len + 1], and float32
  weights [N, seq_len] that are 1 where the target (window[1:]) is an answer token or the
  closing eos: the loss of supervised fine-tuning. Cut at seq_len + 1 tokens."""
  windows = np.full((len(pairs), seq_len + 1), pad_id, np.int32)
  weights = np.zeros((len(pairs), seq_len), np.float32)
  for i, (prompt, answer) in enumerate(pairs):
    ids = ([eos_id] + list(prompt) + list(answer) + [eos_id])[:seq_len + 1]
    windows[i, :len(ids)] = ids
    weights[i, len(prompt):len(ids) - 1] = 1.0
  return windows, weights


def make_sft_batches(
    data_config: ml_collections.ConfigDict,
    tokenizer: tokenizers.Tokenizer,
    split: str,
    *,
    process_index: int,
    process_count: int,
) -> Batches:
  """Prompt/answer batches: inputs, targets and weights (1 on answer tokens).

  On 'train', `data_config.replay_name` (a second prompt/answer dataset, e.g. the one the
  model was fine-tuned on before) is mixed in to make up `replay_fraction` of the
  examples, drawn with a fixed seed: continued training on new data that keeps the old
  skills. Other splits are in id order, padded with weight-0 rows to whole batches.
  """
  load = lambda name, split: load_prompt_answers(
      name, split, data_config.data_dir,
      data_config.get("source_dir") if name == data_config.name else None)
  pairs = load(data_config.name, split)
  replay_name, fraction = data_config.get("replay_name"), data_config.get("replay_fraction", 0)
  if split == "train" and replay_name and fraction:
    replay = load(replay_name, "train")
    count = round(len(pairs) * fraction / (1 - fraction))
    rng = np.random.default_rng(data_config.seed)
    pairs += [replay[i] for i in rng.choice(len(replay), count, replace=count > len(replay))]
  if not pairs:
    raise ValueError(f"data.name={data_config.name!r} has no {split} examples.")
  encoded = [(tokenizer.encode(p), tokenizer.encode(a)) for p, a in pairs]
  windows, weights = frame_prompt_answers(encoded, data_config.seq_len,
                                          eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
  shuffle = split == "train"
  if not shuffle:
    padding = -len(windows) % data_config.global_batch_size
    windows = np.pad(windows, ((0, padding), (0, 0)), constant_values=tokenizer.pad_id)
    weights = np.pad(weights, ((0, padding), (0, 0)))
  return Batches({"inputs": windows[:, :-1], "targets": windows[:, 1:], "weights": weights},
                 data_config.global_batch_size, seed=data_config.seed, shuffle=shuffle,
                 process_index=process_index, process_count=process_count)


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
  buckets = data_config.get("length_buckets")
  if not buckets:
    return Batches(arrays, data_config.global_batch_size, seed=data_config.seed,
                   shuffle=shuffle, process_index=process_index, process_count=process_count)
  trim = lambda step, batch: trim_to_bucket(batch, buckets, ("tokens", "mask", "segments"))
  return Batches(arrays, data_config.global_batch_size, seed=data_config.seed,
                 shuffle=shuffle, process_index=process_index, process_count=process_count,
                 transform=trim, lengths=mask.sum(axis=1))


def make_image_classification_batches(
    data_config: ml_collections.ConfigDict,
    split: str,
    *,
    process_index: int,
    process_count: int,
    transform: Callable[[int, dict], dict] | None = None,
) -> Batches:
  """Labelled-image batches of one split: image (uint8), label, weight.

  'train' is shuffled, endless and passed through `transform` (augmentation); other
  splits are in file order, padded with weight-0 black images to whole global batches,
  so `steps_per_epoch` steps evaluate every example exactly once.
  """
  images, labels = load_labelled_images(
      data_config.name, split, data_config.data_dir, data_config.get("source_dir")
  )
  weights = np.ones(len(images), np.float32)
  shuffle = split == "train"
  if not shuffle:
    num_padding = -len(images) % data_config.global_batch_size
    images = np.pad(images, [(0, num_padding)] + [(0, 0)] * (images.ndim - 1))
    labels = np.pad(labels, (0, num_padding))
    weights = np.pad(weights, (0, num_padding))
  return Batches({"image": images, "label": labels, "weight": weights},
                 data_config.global_batch_size, seed=data_config.seed, shuffle=shuffle,
                 process_index=process_index, process_count=process_count,
                 transform=transform if shuffle else None)


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
    return bucket_width(valid, range(multiple, valid.shape[1] + 1, multiple))
  source, target = length(batch["source_mask"]), length(batch["target_weights"])
  return {k: v[:, :source] if k.startswith("source") else v[:, :target]
          for k, v in batch.items()}
