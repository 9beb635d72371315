"""The examples of one split of each kind of source, in source order: texts, labelled
sentences, prompt/answer pairs, labelled images, sentence pairs; and a text corpus packed
into token windows. Which source holds which kind: `sources`. Each task builds its batches
from these (`tasks/`), ending in `batches.split_batches`.
"""

import numpy as np

from bigflax.data import sources
from bigflax.data.packing import pack_documents


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
    return [
      _text(example, lang) for lang in sorted(set(examples[0]) - {"index"}) for example in examples
    ]
  return [_text(example, "text" if kind == "text" else "sentence") for example in examples]


def load_labelled_sentences(
  name: str, split: str, data_dir=None, source_dir=None
) -> tuple[list[str], np.ndarray]:
  """(sentences, int32 labels) of one split of a sentence-classification dataset, in file order."""
  sources.check_kind(name, "labelled_text")
  examples = sources.load_examples(name, split, data_dir, source_dir)
  return (
    [_text(example, "sentence") for example in examples],
    np.array([example["label"] for example in examples], np.int32),
  )


def load_prompt_answers(
  name: str, split: str, data_dir=None, source_dir=None
) -> list[tuple[str, str]]:
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
  return (
    np.stack([example["image"] for example in examples]),
    np.array([example["label"] for example in examples], np.int32),
  )


def load_translation_pairs(
  name: str,
  split: str,
  source_lang: str,
  target_lang: str,
  data_dir=None,
  source_dir=None,
) -> tuple[list[str], list[str]]:
  """(sources, targets) of one split of a translation dataset, in file order."""
  sources.check_kind(name, "translation")
  examples = sources.load_examples(name, split, data_dir, source_dir)
  for lang in (source_lang, target_lang):
    if lang not in examples[0]:
      raise ValueError(
        f"{name} has no language {lang!r} (data.source_lang / "
        f"data.target_lang); it has {sorted(set(examples[0]) - {'index'})}."
      )
  return (
    [_text(example, source_lang) for example in examples],
    [_text(example, target_lang) for example in examples],
  )


def packed_windows(data_config, tokenizer, split: str, length: int) -> np.ndarray:
  """The split's documents tokenized, each followed by eos, cut into int32[n, length]."""
  texts = load_text_split(
    data_config.name, split, data_config.data_dir, data_config.get("source_dir")
  )
  if sources.get(data_config.name).one_text:
    texts = ["".join(texts)]
  return pack_documents(tokenizer.encode_batch(texts), tokenizer.eos_id, length - 1)
