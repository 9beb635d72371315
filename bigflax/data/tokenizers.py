"""Tokenizers behind one small interface: bytes, or a SentencePiece model.

Every tokenizer has `vocab_size`, `pad_id`, `bos_id`, `eos_id`, `encode`,
`encode_batch`, `decode` and `save(directory)`; `load(directory)` restores what
`save` wrote, so a resumed run or a sampler gets exactly the same vocabulary.
"""

import io
import json
import os
import uuid
from typing import Callable, Iterable, Iterator, Sequence

from etils import epath
import ml_collections
import numpy as np
import sentencepiece as spm

_CONFIG_FILE = "tokenizer.json"
_SPM_FILE = "spm.model"


class ByteTokenizer:
  """UTF-8 bytes, shifted by 3 to make room for pad/bos/eos. Needs no training."""

  kind = "byte"
  pad_id, bos_id, eos_id = 0, 1, 2
  _offset = 3
  vocab_size = 256 + _offset

  def encode(self, text: str) -> list[int]:
    return self._encode_array(text).tolist()

  def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
    return [self._encode_array(text).tolist() for text in texts]

  def decode(self, ids: Sequence[int]) -> str:
    data = bytes(int(i) - self._offset for i in ids if i >= self._offset)
    # Sampled ids need not form valid UTF-8; show the damage, don't crash.
    return data.decode("utf-8", errors="replace")

  def save(self, directory) -> None:
    _write_config(directory, {"kind": self.kind})

  def _encode_array(self, text: str) -> np.ndarray:
    # numpy instead of a Python loop: tokenising 12 MB takes 0.2 s, not 5 s.
    return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32) + self._offset


class SentencePieceTokenizer:
  """A SentencePiece model file (BPE or unigram) behind the common interface."""

  kind = "sentencepiece"

  def __init__(self, model_file):
    self._model_proto = epath.Path(model_file).read_bytes()
    self._sp = spm.SentencePieceProcessor(model_proto=self._model_proto)
    self.vocab_size = self._sp.get_piece_size()
    self.pad_id = self._sp.pad_id()
    self.bos_id = self._sp.bos_id()
    self.eos_id = self._sp.eos_id()

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text)

  def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
    return self._sp.encode(list(texts), num_threads=os.cpu_count())

  def decode(self, ids: Sequence[int]) -> str:
    special = {self.pad_id, self.bos_id, self.eos_id}
    return self._sp.decode([int(i) for i in ids if i not in special])

  def save(self, directory) -> None:
    # Write the bytes we hold: `directory` may already contain our own model file.
    _write_atomically(epath.Path(directory) / _SPM_FILE, self._model_proto)
    _write_config(directory, {"kind": self.kind, "model_file": _SPM_FILE})


Tokenizer = ByteTokenizer | SentencePieceTokenizer


def _training_lines(texts: Iterable[str], max_chars: int) -> Iterator[str]:
  # SentencePiece learns from "sentences": lines here. Code has a few enormous
  # lines (data tables) that the trainer would drop whole; keep their heads.
  for text in texts:
    for line in text.splitlines():
      if line.strip():
        yield line[:max_chars]


def train_sentencepiece(
    texts: Iterable[str],
    vocab_size: int,
    directory,
    *,
    model_type: str = "bpe",
    max_lines: int = 200_000,
    max_line_chars: int = 2048,
) -> SentencePieceTokenizer:
  """Trains a SentencePiece model on `texts` and saves it into `directory`.

  Deterministic: the trainer subsamples lines with a fixed seed of its own.
  """
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=_training_lines(texts, max_line_chars),
      model_writer=model,
      vocab_size=vocab_size,
      model_type=model_type,
      pad_id=0,
      bos_id=1,
      eos_id=2,
      unk_id=3,
      byte_fallback=True,  # Any unseen character still encodes (as bytes).
      character_coverage=0.9995,
      # Round-trip text exactly: no NFKC, keep runs of spaces (indentation).
      normalization_rule_name="identity",
      remove_extra_whitespaces=False,
      add_dummy_prefix=False,
      allow_whitespace_only_pieces=True,
      # A random subset of lines keeps training on 12 MB well under a minute.
      input_sentence_size=max_lines,
      shuffle_input_sentence=True,
      max_sentence_length=4 * max_line_chars,  # In bytes; UTF-8 is <= 4 per char.
      num_threads=os.cpu_count(),
      minloglevel=2,
  )
  model_file = epath.Path(directory) / _SPM_FILE
  _write_atomically(model_file, model.getvalue())
  _write_config(directory, {"kind": SentencePieceTokenizer.kind, "model_file": _SPM_FILE})
  return SentencePieceTokenizer(model_file)


def _write_atomically(path: epath.Path, data: bytes) -> None:
  # Every process of a run may build the same tokenizer into the same
  # directory at once: a reader must see a whole file, never a half-written one.
  path.parent.mkdir(parents=True, exist_ok=True)
  temporary = path.with_name(f"{path.name}.tmp-{uuid.uuid4().hex}")
  temporary.write_bytes(data)
  temporary.replace(path)


def _write_config(directory, config: dict) -> None:
  _write_atomically(epath.Path(directory) / _CONFIG_FILE, json.dumps(config).encode())


def load(directory) -> Tokenizer:
  """Restores a tokenizer written by `save(directory)`."""
  directory = epath.Path(directory)
  config = json.loads((directory / _CONFIG_FILE).read_text())
  if config["kind"] == ByteTokenizer.kind:
    return ByteTokenizer()
  if config["kind"] == SentencePieceTokenizer.kind:
    return SentencePieceTokenizer(directory / config["model_file"])
  raise ValueError(f"{directory / _CONFIG_FILE}: unknown kind {config['kind']!r}")


def build(
    tokenizer_config: ml_collections.ConfigDict,
    texts_fn: Callable[[], Iterable[str]],
    directory,
) -> Tokenizer:
  """Loads the tokenizer saved in `directory`, or builds, saves and returns one.

  Args:
    tokenizer_config: `kind` ('byte' | 'sentencepiece') and, for sentencepiece,
      `vocab_size`.
    texts_fn: returns the training texts; only called if a model must be trained.
    directory: where the tokenizer lives (e.g. inside the run's workdir).
  """
  kind = tokenizer_config.kind
  if kind not in (ByteTokenizer.kind, SentencePieceTokenizer.kind):
    raise ValueError(
        f"tokenizer.kind={kind!r} is not one of "
        f"{[ByteTokenizer.kind, SentencePieceTokenizer.kind]}"
    )
  if (epath.Path(directory) / _CONFIG_FILE).exists():
    tokenizer = load(directory)
    # A resumed run must not silently switch vocabularies under the model.
    if tokenizer.kind != kind or (
        kind == SentencePieceTokenizer.kind
        and tokenizer.vocab_size != tokenizer_config.vocab_size
    ):
      raise ValueError(
          f"{directory} holds a {tokenizer.kind} tokenizer with vocab_size "
          f"{tokenizer.vocab_size}, but the config asks for tokenizer.kind="
          f"{kind!r} (tokenizer.vocab_size={tokenizer_config.get('vocab_size')})"
      )
    return tokenizer
  if kind == ByteTokenizer.kind:
    tokenizer = ByteTokenizer()
    tokenizer.save(directory)
    return tokenizer
  return train_sentencepiece(texts_fn(), tokenizer_config.vocab_size, directory)
