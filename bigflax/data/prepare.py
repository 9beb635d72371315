"""`bigflax prepare`: tokenize a corpus once into ArrayRecord shards of token windows.

  python -m bigflax prepare --config experiments/gpt_site_packages.py

For each corpus in `config.data.corpora`, the files are grouped (in path order) into shards
of about `data.shard_bytes` of source text; worker processes (`data.prepare_workers`, 0 =
one per core) tokenize one shard each: every document of the shard, followed by eos, is
cut into windows of seq_len + 1 tokens, written to `train-NNNNN.array_record` and
`validation-NNNNN.array_record` (one window a record), then `shard-NNNNN.json` (what went
in, what came out) marks it done. A rerun skips a shard whose files are unchanged (size and
mtime). `manifest.json` holds the tokenizer and its hash, the window length and the counts,
and `sources.jsonl` beside it every source file with its sha256; training reads it
(`shards.py`) and refuses shards made with another tokenizer or window length.

Workers are spawned (the parent has imported JAX): a script that calls `prepare()` itself
needs Python's `if __name__ == "__main__":` guard, as with any multiprocessing.

Directory layout: data.prepared_dir/{tokenizer/, <corpus>/{manifest.json, sources.jsonl,
shard-*.json, train-*.array_record, validation-*.array_record}}.
"""

import contextlib
import json
import multiprocessing
import os
import tempfile
import time

from array_record.python.array_record_module import ArrayRecordWriter
import ml_collections
import numpy as np

from bigflax.data import documents, packing, shards, tokenizers

DEFAULT_SHARD_BYTES = 32 << 20
# Documents tokenized together: bounds a worker's lists of Python ints.
_ENCODE_CHUNK_CHARS = 1 << 20
# Each record (shards.WINDOWS_PER_RECORD windows) is one chunk, so a read decompresses one
# record; zstd keeps writing fast.
_WRITER_OPTIONS = "group_size:1,zstd:1"


def prepare(config: ml_collections.ConfigDict) -> dict:
  """Prepares every corpus of `config.data.corpora`; returns {name: manifest}."""
  data = config.data
  shards.check_config(data)
  for name, corpus in data.corpora.items():
    documents.check(name, corpus)
  if config.tokenizer.kind not in ("byte", "hf", "gpt2"):
    raise ValueError(
      f"tokenizer.kind={config.tokenizer.kind!r}: prepared corpora take a "
      f"tokenizer that needs no training on the data ('byte', 'hf' or "
      f"'gpt2'), so that the training run builds the very same one."
    )
  tokenizer_dir = os.path.join(data.prepared_dir, shards.TOKENIZER_DIR)
  with tempfile.TemporaryDirectory() as scratch:
    tokenizer = tokenizers.build(config.tokenizer, None, scratch)
  tokenizer.save(tokenizer_dir)
  made_with = {
    "tokenizer": tokenizers.fingerprint(tokenizer),
    "window": data.seq_len + 1,
    "dtype": shards.token_dtype(tokenizer.vocab_size),
    "windows_per_record": shards.WINDOWS_PER_RECORD,
  }
  return {
    name: prepare_corpus(name, corpus, data, tokenizer_dir, made_with)
    for name, corpus in data.corpora.items()
  }


def plan_shards(units: list[dict], shard_bytes: int) -> list[list[dict]]:
  """Consecutive files grouped into shards of at least `shard_bytes` (the last may be
  smaller); a file is never split."""
  planned, current, size = [], [], 0
  for unit in units:
    current.append(unit)
    size += unit["bytes"]
    if size >= shard_bytes:
      planned.append(current)
      current, size = [], 0
  return planned + [current] if current else planned


def prepare_corpus(name, corpus, data, tokenizer_dir, made_with) -> dict:
  out = os.path.join(data.prepared_dir, name)
  os.makedirs(out, exist_ok=True)
  _refuse_other_make(out, made_with)
  planned = plan_shards(documents.files(corpus), data.get("shard_bytes") or DEFAULT_SHARD_BYTES)
  done = {
    i: record
    for i, files in enumerate(planned)
    if (record := _finished_shard(out, i, files, made_with))
  }
  todo = [
    (corpus.to_dict(), i, files, out, tokenizer_dir, made_with)
    for i, files in enumerate(planned)
    if i not in done
  ]
  workers = min(data.get("prepare_workers") or os.cpu_count(), max(len(todo), 1))
  start = time.time()
  print(
    f"bigflax prepare: {name}: {len(planned)} shards, {len(done)} already done, "
    f"{len(todo)} to tokenize on {workers} worker(s)",
    flush=True,
  )
  # spawn, not fork: the parent has imported JAX, whose threads a fork would copy.
  with (
    multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else contextlib.nullcontext()
  ) as pool:
    results = pool.imap_unordered(_prepare_shard, todo) if pool else map(_prepare_shard, todo)
    for count, record in enumerate(results, 1):
      done[record["index"]] = record
      print(
        f"bigflax prepare: {name}: shard {record['index']} done ({count}/{len(todo)}, "
        f"{record['train_windows']} + {record['validation_windows']} windows, "
        f"{time.time() - start:.0f} s)",
        flush=True,
      )
  records = [done[i] for i in range(len(planned))]
  _write_sources(os.path.join(out, shards.SOURCES), records)
  manifest = _manifest(name, corpus, made_with, records)
  _write_json(os.path.join(out, shards.MANIFEST), manifest)
  print(
    f"bigflax prepare: {name}: {manifest['documents']} documents, "
    f"{manifest['tokens']} tokens -> {manifest['windows']['train']} train and "
    f"{manifest['windows']['validation']} validation windows of "
    f"{made_with['window']} tokens in {out}",
    flush=True,
  )
  return manifest


def _refuse_other_make(out: str, made_with: dict) -> None:
  """An existing manifest made with another tokenizer or window is never mixed into."""
  path = os.path.join(out, shards.MANIFEST)
  if os.path.exists(path):
    with open(path) as f:
      shards.check_made_with(json.load(f), path, made_with)


def _finished_shard(out, index, files, made_with) -> dict | None:
  path = os.path.join(out, f"shard-{index:05d}.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    record = json.load(f)
  same_files = [(u["path"], u["bytes"], u["mtime_ns"]) for u in record["files"]] == [
    (u["path"], u["bytes"], u["mtime_ns"]) for u in files
  ]
  same_make = all(record.get(key) == value for key, value in made_with.items())
  return record if same_files and same_make else None


def _prepare_shard(job) -> dict:
  """Tokenizes one shard's documents into its two ArrayRecord files, a chunk at a time (a
  worker holds one chunk, whatever the shard's size); runs in a worker."""
  corpus, index, files, out, tokenizer_dir, made_with = job
  corpus = ml_collections.ConfigDict(corpus)
  tokenizer = tokenizers.load(tokenizer_dir)
  fraction = corpus.get("validation_fraction", 0.0)
  paths = {split: os.path.join(out, shards.shard_file(split, index)) for split in shards.SPLITS}
  writers = {
    split: ArrayRecordWriter(f"{path}.tmp", _WRITER_OPTIONS) for split, path in paths.items()
  }
  texts = {split: [] for split in shards.SPLITS}
  pending = dict.fromkeys(shards.SPLITS, 0)  # characters in texts[split]
  carry = {split: np.zeros(0, np.int32) for split in shards.SPLITS}
  unwritten = {
    split: np.zeros((0, made_with["window"]), made_with["dtype"]) for split in shards.SPLITS
  }  # fewer than a record's worth
  windows_written = dict.fromkeys(shards.SPLITS, 0)
  counts = {"documents": 0, "validation_documents": 0, "tokens": 0}

  def encode(split, last=False):
    token_lists = tokenizer.encode_batch(texts[split])
    counts["tokens"] += sum(map(len, token_lists))
    windows, carry[split] = packing.cut_windows(
      carry[split], token_lists, tokenizer.eos_id, made_with["window"]
    )
    windows = np.concatenate([unwritten[split], windows.astype(made_with["dtype"])])
    whole = len(windows) if last else len(windows) - len(windows) % shards.WINDOWS_PER_RECORD
    for start in range(0, whole, shards.WINDOWS_PER_RECORD):
      writers[split].write(windows[start : min(start + shards.WINDOWS_PER_RECORD, whole)].tobytes())
    unwritten[split] = windows[whole:]
    windows_written[split] += whole
    texts[split].clear()
    pending[split] = 0

  for unit in files:
    for doc_id, text in documents.read(corpus, unit["path"]):
      split = "validation" if packing.held_out(doc_id, fraction) else "train"
      texts[split].append(text)
      pending[split] += len(text)
      counts["documents"] += 1
      counts["validation_documents"] += split == "validation"
      if pending[split] >= _ENCODE_CHUNK_CHARS:
        encode(split)
    unit["sha256"] = documents.sha256(corpus, unit)
  for split, path in paths.items():
    encode(split, last=True)  # the tail that fills no window is dropped
    writers[split].close()
    os.replace(f"{path}.tmp", path)
  record = {
    "index": index,
    "files": files,
    **made_with,
    **counts,
    **{f"{split}_windows": n for split, n in windows_written.items()},
  }
  _write_json(os.path.join(out, f"shard-{index:05d}.json"), record)
  return record


def _manifest(name, corpus, made_with, records) -> dict:
  return {
    "corpus": name,
    "format": corpus.format,
    "path": corpus.get("path") or corpus.get("tfds_name"),
    "validation_fraction": corpus.get("validation_fraction", 0.0),
    **made_with,
    "documents": sum(r["documents"] for r in records),
    "validation_documents": sum(r["validation_documents"] for r in records),
    "tokens": sum(r["tokens"] for r in records),
    "windows": {split: sum(r[f"{split}_windows"] for r in records) for split in shards.SPLITS},
    "shards": [
      {
        key: r[key]
        for key in ("index", "documents", "tokens", "train_windows", "validation_windows")
      }
      for r in records
    ],
    "sources": {
      "file": shards.SOURCES,
      "files": sum(len(r["files"]) for r in records),
      "bytes": sum(u["bytes"] for r in records for u in r["files"]),
    },
  }


def _write_sources(path: str, records) -> None:
  """One JSON line per source file (path, bytes, sha256): beside the manifest, not in it,
  so that a training process reading the manifest never loads a million-file list."""
  with open(f"{path}.tmp", "w") as f:
    for record in records:
      for unit in record["files"]:
        f.write(json.dumps({key: unit[key] for key in ("path", "bytes", "sha256")}) + "\n")
  os.replace(f"{path}.tmp", path)


def _write_json(path: str, value) -> None:
  temporary = f"{path}.tmp"
  with open(temporary, "w") as f:
    json.dump(value, f, indent=1)
  os.replace(temporary, path)
