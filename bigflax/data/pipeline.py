"""Examples of each kind of source, framed as tokens, and their step-indexed batches:
token windows (LM), prompt/answer windows (SFT), labelled sentences, images, sentence
pairs (translation) and feature vectors. Which source holds which kind: `sources`.
"""

import itertools
from typing import Callable, Sequence

import ml_collections
import numpy as np

from bigflax.data import mixture, packing, shards, sources, synthetic, tokenizers
from bigflax.data.packing import pack_documents
from bigflax.data.batches import Batches, bucket_width, pad_to_whole_batches, trim_to_bucket


def _text(example, field):
  return example[field].decode("utf-8")


def load_text_split(name: str, split: str, data_dir=None, source_dir=None) -> list[str]:
  """The texts of one split in source order: documents, sentences, or both sides of
  sentence pairs (a joint vocabulary learns from both languages).

  Prepares the dataset if needed. `data_dir` None means TFDS's default. `source_dir` is
  where the source files live (e.g. tiny_shakespeare's input.txt; None: download them).
  """
  kind = sources.check_kind(name, "text", "labelled_text", "translation").kind
  examples = sources.load_examples(name, split, data_dir, source_dir)
  if kind == "translation":
    return [_text(example, lang) for lang in sorted(set(examples[0]) - {"index"})
            for example in examples]
  return [_text(example, "text" if kind == "text" else "sentence") for example in examples]


def load_labelled_sentences(
    name: str, split: str, data_dir=None, source_dir=None
) -> tuple[list[str], np.ndarray]:
  """(sentences, int32 labels) of one split of a sentence-classification dataset, in file order."""
  sources.check_kind(name, "labelled_text")
  examples = sources.load_examples(name, split, data_dir, source_dir)
  return ([_text(example, "sentence") for example in examples],
          np.array([example["label"] for example in examples], np.int32))


def load_prompt_answers(name: str, split: str, data_dir=None,
                        source_dir=None) -> list[tuple[str, str]]:
  """(prompt, answer) pairs of one split of a fine-tuning dataset, in id order."""
  sources.check_kind(name, "prompt_answer")
  examples = sources.load_examples(name, split, data_dir, source_dir)
  return [(_text(e, "prompt"), _text(e, "answer")) for e in examples]


def load_labelled_images(
    name: str, split: str, data_dir=None, source_dir=None
) -> tuple[np.ndarray, np.ndarray]:
  """(uint8 images (N, H, W, C), int32 labels) of one split, in file order.

  `split` is a name in the source's split rule, e.g. fashion_mnist's validation is the
  end of the TFDS train split.
  """
  sources.check_kind(name, "image")
  examples = sources.load_examples(name, split, data_dir, source_dir)
  return (np.stack([example["image"] for example in examples]),
          np.array([example["label"] for example in examples], np.int32))


def load_translation_pairs(
    name: str, split: str, source_lang: str, target_lang: str, data_dir=None,
    source_dir=None,
) -> tuple[list[str], list[str]]:
  """(sources, targets) of one split of a translation dataset, in file order."""
  sources.check_kind(name, "translation")
  examples = sources.load_examples(name, split, data_dir, source_dir)
  for lang in (source_lang, target_lang):
    if lang not in examples[0]:
      raise ValueError(f"{name} has no language {lang!r} (data.source_lang / "
                       f"data.target_lang); it has {sorted(set(examples[0]) - {'index'})}.")
  return ([_text(example, source_lang) for example in examples],
          [_text(example, target_lang) for example in examples])


def unigram_entropy(windows: np.ndarray, vocab_size: int) -> float:
  """Nats/token of the tokens' unigram distribution: the loss to beat."""
  p = np.bincount(windows.ravel(), minlength=vocab_size) / windows.size
  return float(-np.sum(p[p > 0] * np.log(p[p > 0])))


def make_lm_batches(
    data_config: ml_collections.ConfigDict,
    tokenizer: tokenizers.Tokenizer,
    split: str,
    *,
    process_index: int,
    process_count: int,
) -> Batches:
  """LM batches of one split; 'train' is shuffled, other splits are not.

  `data_config` has name, data_dir, source_dir, seq_len, global_batch_size, seed; or,
  for corpora tokenized by `bigflax prepare`, corpora, mixture and prepared_dir. With
  `document_mask` the batches also carry segment_ids and positions (`document_fields`).
  """
  fields = document_fields(data_config, tokenizer.eos_id)
  if data_config.get("corpora"):
    return prepared_lm_batches(data_config, tokenizer, split, process_index=process_index,
                               process_count=process_count, transform=fields)
  windows = packed_windows(data_config, tokenizer, split, data_config.seq_len + 1)
  return lm_batches(
      windows,
      data_config.global_batch_size,
      seed=data_config.seed,
      shuffle=split == "train",
      process_index=process_index,
      process_count=process_count,
      transform=fields,
  )


def document_fields(data_config, eos_id: int):
  """None (GPT-2's windows, which attend across documents), or under data.document_mask
  a batch transform adding segment_ids and positions, so that attention stays within each
  document; data.skip_document_start also zeroes the weight of each document's first
  target (predicted from the eos alone)."""
  if not data_config.get("document_mask"):
    if data_config.get("skip_document_start"):
      raise ValueError("data.skip_document_start needs data.document_mask=True.")
    return None

  def add_fields(step, batch):
    del step
    batch = dict(batch, **packing.document_segments(batch["inputs"], eos_id))
    if data_config.get("skip_document_start"):
      batch["weights"] = (batch["inputs"] != eos_id).astype(np.float32)
    return batch
  return add_fields


def prepared_lm_batches(data_config, tokenizer, split: str, *, process_index: int,
                        process_count: int, transform=None) -> mixture.MixtureBatches:
  """LM batches of a mixture of prepared corpora, windows read from disk by index."""
  shards.check_config(data_config)
  made_with = {"tokenizer": tokenizers.fingerprint(tokenizer), "window": data_config.seq_len + 1}
  weights = shards.mixture_weights(data_config)
  windows = {name: shards.Windows(data_config.prepared_dir, name, split, made_with)
             for name, weight in weights.items() if weight > 0}
  return mixture.MixtureBatches(windows, weights, data_config.global_batch_size,
                                seed=data_config.seed, shuffle=split == "train",
                                process_index=process_index, process_count=process_count,
                                transform=transform)


def packed_windows(data_config, tokenizer, split: str, length: int) -> np.ndarray:
  """The split's documents tokenized, each followed by eos, cut into int32[n, length]."""
  texts = load_text_split(
      data_config.name, split, data_config.data_dir, data_config.get("source_dir")
  )
  if sources.get(data_config.name).one_text:
    texts = ["".join(texts)]
  return pack_documents(tokenizer.encode_batch(texts), tokenizer.eos_id, length - 1)


def lm_batches(windows: np.ndarray, global_batch_size: int, **kwargs) -> Batches:
  """{'inputs': w[:-1], 'targets': w[1:]} batches of packed windows (views, no copy);
  `kwargs` are Batches'."""
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
  Examples are packed several to a row (`packing.pack_examples`), kept apart by
  segment_ids and positions.
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
  arrays = packing.pack_examples(windows, weights, tokenizer.pad_id)
  shuffle = split == "train"
  if not shuffle:
    arrays = pad_to_whole_batches(arrays, data_config.global_batch_size,
                                  {"inputs": tokenizer.pad_id, "targets": tokenizer.pad_id})
  return Batches(arrays, data_config.global_batch_size, seed=data_config.seed,
                 shuffle=shuffle, process_index=process_index, process_count=process_count)


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


def _framed(tokenizer, sentences: Sequence[str], seq_len: int):
  """frame_sentences of the sentences' tokens: (tokens, mask)."""
  return frame_sentences(tokenizer.encode_batch(sentences), seq_len, bos_id=tokenizer.bos_id,
                         eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)


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
  tokens, mask = _framed(tokenizer, sentences, data_config.seq_len)
  arrays = {"tokens": tokens, "mask": mask, "segments": np.zeros_like(tokens),
            "label": labels, "weight": np.ones(len(sentences), np.float32)}
  shuffle = split == "train"
  if not shuffle:
    blank_tokens, blank_mask = _framed(tokenizer, [""], data_config.seq_len)
    arrays = pad_to_whole_batches(arrays, data_config.global_batch_size,
                                  {"tokens": blank_tokens[0], "mask": blank_mask[0]})
  buckets = data_config.get("length_buckets")
  if not buckets:
    return Batches(arrays, data_config.global_batch_size, seed=data_config.seed,
                   shuffle=shuffle, process_index=process_index, process_count=process_count)
  trim = lambda step, batch: trim_to_bucket(batch, buckets, ("tokens", "mask", "segments"))
  return Batches(arrays, data_config.global_batch_size, seed=data_config.seed,
                 shuffle=shuffle, process_index=process_index, process_count=process_count,
                 transform=trim, lengths=arrays["mask"].sum(axis=1))


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
  arrays = {"image": images, "label": labels, "weight": np.ones(len(images), np.float32)}
  shuffle = split == "train"
  if not shuffle:
    arrays = pad_to_whole_batches(arrays, data_config.global_batch_size)
  return Batches(arrays, data_config.global_batch_size, seed=data_config.seed,
                 shuffle=shuffle, process_index=process_index, process_count=process_count,
                 transform=transform if shuffle else None)


def _sentence_pairs(tokenizer, sources_: Sequence[str], targets: Sequence[str],
                    seq_len: int) -> dict:
  source, source_mask = _framed(tokenizer, sources_, seq_len)
  target, target_mask = _framed(tokenizer, targets, seq_len + 1)
  return {"source": source, "source_mask": source_mask, "target_inputs": target[:, :-1],
          "targets": target[:, 1:], "target_weights": target_mask[:, 1:].astype(np.float32)}


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
  pairs = load_translation_pairs(
      data_config.name, split, data_config.source_lang, data_config.target_lang,
      data_config.data_dir, data_config.get("source_dir"))
  arrays = _sentence_pairs(tokenizer, *pairs, data_config.seq_len)
  shuffle = split == "train"
  if not shuffle:
    empty = _sentence_pairs(tokenizer, [""], [""], data_config.seq_len)
    blank = {k: v[0] for k, v in empty.items() if k != "target_weights"}  # weight 0
    arrays = pad_to_whole_batches(arrays, data_config.global_batch_size, blank)
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


def make_feature_batches(data_config: ml_collections.ConfigDict, split: str, *,
                         process_index: int, process_count: int) -> Batches:
  """Batches of a synthetic feature set (`data/synthetic.py`); 'train' is shuffled."""
  sources.check_kind(data_config.name, "features")
  arrays = synthetic.make(data_config.name, split, data_config.num_examples, data_config.seed)
  return Batches(arrays, data_config.global_batch_size, seed=data_config.seed,
                 shuffle=split == "train", process_index=process_index,
                 process_count=process_count)
