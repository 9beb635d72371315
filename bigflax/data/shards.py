"""Prepared corpora on disk (written by `prepare.py`): their manifest, its checks, and their
token windows read by index, so that no process holds a corpus in memory."""

import json
import os

import grain
import numpy as np

MANIFEST = "manifest.json"
SOURCES = "sources.jsonl"  # the source files and their sha256, one JSON line each
TOKENIZER_DIR = "tokenizer"
SPLITS = ("train", "validation")
# Windows a record holds. The reader keeps ~60 bytes of index per record in memory, so 16
# windows a record cut that 16x; zstd over 16 windows writes 0.4x the bytes; and a random
# read decompresses 8 KiB (byte windows of 257), which is faster than the larger file's I/O.
WINDOWS_PER_RECORD = 16


def check_config(data) -> None:
  """`config.data`'s prepared_dir, corpora and mixture, checked before any file is read
  (the corpora's sources are `prepare`'s to check: training needs only the shards)."""
  if not data.get("prepared_dir"):
    raise ValueError(
      "data.prepared_dir is needed with data.corpora: the directory that "
      "`bigflax prepare` writes the shards to and training reads them from."
    )
  if not data.corpora:
    raise ValueError("data.corpora is empty: name at least one corpus.")
  weights = mixture_weights(data)
  if set(weights) - set(data.corpora):
    raise ValueError(
      f"data.mixture names {sorted(set(weights) - set(data.corpora))}, "
      f"which are not in data.corpora ({sorted(data.corpora)})."
    )
  if any(not isinstance(w, (int, float)) or w < 0 for w in weights.values()) or not any(
    weights.values()
  ):
    raise ValueError(f"data.mixture={weights}: weights must be non-negative numbers, not all zero.")


def mixture_weights(data) -> dict[str, float]:
  """{corpus: weight} of `data.mixture`; without one, a single corpus has weight 1."""
  mixture = data.get("mixture")
  if mixture:
    return dict(mixture)
  if len(data.corpora) > 1:
    raise ValueError(
      f"data.corpora has {len(data.corpora)} corpora: set data.mixture = "
      f"{{name: weight}} to say how often each is drawn."
    )
  return {next(iter(data.corpora)): 1.0}


def token_dtype(vocab_size: int) -> str:
  """Two bytes a token where the vocabulary allows (bytes, GPT-2): half the disk and I/O."""
  return "uint16" if vocab_size <= 1 << 16 else "int32"


def shard_file(split: str, index: int) -> str:
  return f"{split}-{index:05d}.array_record"


def check_made_with(manifest: dict, where: str, made_with: dict) -> None:
  """Refuses shards made with another tokenizer or window length, naming both."""
  for key, what in (("tokenizer", "tokenizer"), ("window", "window length (seq_len + 1)")):
    if manifest[key] != made_with[key]:
      raise ValueError(
        f"{where} was prepared with {what} {manifest[key]}, but this config "
        f"gives {made_with[key]}: rerun `bigflax prepare` with this config "
        f"into another data.prepared_dir, or train with the config that "
        f"prepared it."
      )


def load_manifest(prepared_dir: str, name: str) -> dict:
  path = os.path.join(prepared_dir, name, MANIFEST)
  if not os.path.exists(path):
    raise ValueError(
      f"{path} does not exist: run `python -m bigflax prepare --config ...` "
      f"first (data.prepared_dir={prepared_dir!r})."
    )
  with open(path) as f:
    return json.load(f)


class Windows:
  """One split of one prepared corpus: int32 windows [n, window] read by index.

  A shard's windows lie WINDOWS_PER_RECORD to a record, in order; its last record may hold
  fewer."""

  def __init__(self, prepared_dir: str, name: str, split: str, made_with: dict):
    where = os.path.join(prepared_dir, name, MANIFEST)
    self.manifest = load_manifest(prepared_dir, name)
    check_made_with(self.manifest, where, made_with)
    per_record = self.manifest.get("windows_per_record", 1)
    if per_record != WINDOWS_PER_RECORD:
      raise ValueError(
        f"{where} holds {per_record} window(s) a record, the layout of an "
        f"older bigflax; this one reads {WINDOWS_PER_RECORD}: rerun `bigflax "
        f"prepare` with the same config (it redoes every shard)."
      )
    kept = [s for s in self.manifest["shards"] if s[f"{split}_windows"]]
    counts = [s[f"{split}_windows"] for s in kept]
    paths = [os.path.join(prepared_dir, name, shard_file(split, s["index"])) for s in kept]
    self._dtype = np.dtype(self.manifest["dtype"])
    self.window = self.manifest["window"]
    self._first_window = np.cumsum([0] + counts)  # of each shard, and the total
    records = -(-np.asarray(counts, np.int64) // WINDOWS_PER_RECORD)
    self._first_record = np.cumsum(np.concatenate([[0], records]))
    self._source = grain.sources.ArrayRecordDataSource(paths) if paths else []
    if len(self._source) != self._first_record[-1]:
      raise ValueError(
        f"{os.path.join(prepared_dir, name)} holds {len(self._source)} "
        f"{split} records, its manifest says {self._first_record[-1]}: rerun "
        f"`bigflax prepare`."
      )

  def __len__(self) -> int:
    return int(self._first_window[-1])

  def read(self, indices) -> np.ndarray:
    """int32[len(indices), window]: the windows at `indices`."""
    indices = np.asarray(indices, np.int64)
    if not len(indices):
      return np.zeros((0, self.window), np.int32)
    shard = np.searchsorted(self._first_window, indices, side="right") - 1
    within = indices - self._first_window[shard]
    record = self._first_record[shard] + within // WINDOWS_PER_RECORD
    wanted, which = np.unique(record, return_inverse=True)
    blocks = [
      np.frombuffer(r, self._dtype).reshape(-1, self.window)
      for r in self._source.__getitems__([int(r) for r in wanted])
    ]
    return np.stack([blocks[w][i] for w, i in zip(which, within % WINDOWS_PER_RECORD)]).astype(
      np.int32
    )
