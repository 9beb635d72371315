"""Documents of a corpus on disk, file by file: the units `prepare` tokenizes in parallel.

A corpus (`config.data.corpora[name]`) is one of these formats:
  text     a directory of text files, one document per file (`patterns`: glob patterns)
  jsonl    JSON-lines files, one document per line, text in `text_column`
  parquet  Parquet files with a named `text_column`
  hf_disk  a Hugging Face `datasets` save_to_disk directory (its .arrow files)
  tfds     one of bigflax's text datasets (`tfds_name`; `data_dir`, `source_dir`)
Text and JSON-lines files whose names end in .gz are read through gzip (man pages, Debian
changelogs, dumps shipped as .jsonl.gz).

Each document has an id (its path, `id_column`'s value, or file:row) and goes to the
validation split when a hash of that id falls under `validation_fraction` (packing.py): the
same split on every machine, and a new document does not move the others.
"""

from collections.abc import Iterator
import fnmatch
import gzip
import hashlib
import json
import os
import zlib

from bigflax.data import sources

FORMATS = ("text", "jsonl", "parquet", "hf_disk", "tfds")
DEFAULT_PATTERNS = {
  "jsonl": ("*.jsonl", "*.jsonl.gz"),
  "parquet": ("*.parquet",),
  "hf_disk": ("*.arrow",),
}


def check(name: str, corpus) -> None:
  """A corpus config's mistakes, named by field, before any file is read."""
  where = f"data.corpora.{name}"
  kind = corpus.get("format")
  if kind not in FORMATS:
    raise ValueError(f"{where}.format={kind!r}; choose one of {FORMATS}.")
  if kind == "tfds":
    if not corpus.get("tfds_name"):
      raise ValueError(f"{where}.tfds_name is needed with format='tfds' (e.g. stdlib_corpus).")
  elif not corpus.get("path") or not os.path.isdir(corpus.path):
    raise ValueError(f"{where}.path={corpus.get('path')!r} is not a directory.")
  if kind in ("jsonl", "parquet", "hf_disk") and not corpus.get("text_column"):
    raise ValueError(
      f"{where}.text_column is needed with format={kind!r}: the field "
      f"that holds each document's text."
    )
  if not 0 <= corpus.get("validation_fraction", 0.0) < 1:
    raise ValueError(f"{where}.validation_fraction must lie in [0, 1).")


def files(corpus) -> list[dict]:
  """The corpus's units of work, sorted: {'path' (relative), 'bytes', 'mtime_ns'}.

  A TFDS dataset is one unit named after it (its builder prepares it whole)."""
  if corpus.format == "tfds":
    return [{"path": f"tfds:{corpus.tfds_name}", "bytes": 0, "mtime_ns": 0}]
  patterns = tuple(corpus.get("patterns") or DEFAULT_PATTERNS.get(corpus.format, ("*",)))
  units = []
  for directory, subdirs, names in os.walk(corpus.path):
    subdirs.sort()
    for file_name in names:
      if any(fnmatch.fnmatch(file_name, p) for p in patterns):
        stat = os.stat(os.path.join(directory, file_name))
        relative = os.path.relpath(os.path.join(directory, file_name), corpus.path)
        units.append(
          {
            "path": relative.replace(os.sep, "/"),
            "bytes": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
          }
        )
  if not units:
    raise ValueError(
      f"no files matching {patterns} under {corpus.path} (data.corpora.*.path / .patterns)."
    )
  return sorted(units, key=lambda unit: unit["path"])


def sha256(corpus, unit: dict) -> str:
  """The unit's content hash (a TFDS dataset: its builder's name and version)."""
  if corpus.format == "tfds":
    return f"tfds:{corpus.tfds_name}:{_tfds_builder(corpus).info.version}"
  digest = hashlib.sha256()
  with open(os.path.join(corpus.path, unit["path"]), "rb") as f:
    while block := f.read(1 << 22):
      digest.update(block)
  return digest.hexdigest()


def read(corpus, relative_path: str) -> Iterator[tuple[str, str]]:
  """(document id, text) of one unit, in file order."""
  path = os.path.join(corpus.get("path") or "", relative_path)
  try:
    yield from _read(corpus, path, relative_path)
  except (gzip.BadGzipFile, EOFError, zlib.error) as error:
    raise ValueError(
      f"{path}: a damaged or truncated gzip file ({error}); replace it, or "
      f"leave it out through data.corpora.*.patterns."
    ) from error


def _read(corpus, path: str, relative_path: str) -> Iterator[tuple[str, str]]:
  if corpus.format == "text":
    # Replacement, not a skipped file: one stray byte should not cost a whole document.
    with _open(path) as f:
      yield relative_path, f.read().decode("utf-8", errors="replace")
  elif corpus.format == "jsonl":
    with _open(path) as f:
      for row, line in enumerate(f):
        if line.strip():
          record = json.loads(line)
          yield _id(corpus, record, relative_path, row), _text(corpus, record, path)
  elif corpus.format in ("parquet", "hf_disk"):
    yield from _read_arrow(corpus, path, relative_path)
  else:
    yield from _read_tfds(corpus)


def _open(path: str):
  """The file's bytes, decompressed when its name ends in .gz (a stream: memory stays flat)."""
  return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def _id(corpus, record, relative_path: str, row: int) -> str:
  column = corpus.get("id_column")
  return str(record[column]) if column else f"{relative_path}:{row}"


def _text(corpus, record, path) -> str:
  text = record.get(corpus.text_column)
  if not isinstance(text, str):
    raise ValueError(
      f"{path}: a record's {corpus.text_column!r} is {type(text).__name__}, "
      f"not text (data.corpora.*.text_column)."
    )
  return text


def _read_arrow(corpus, path: str, relative_path: str):
  # pyarrow is the `data` extra (and seconds to import): only Parquet and Arrow need it.
  import pyarrow as pa  # pylint: disable=import-outside-toplevel
  import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel

  columns = [c for c in (corpus.text_column, corpus.get("id_column")) if c]
  if corpus.format == "parquet":
    reader = pq.ParquetFile(path)
    schema, batches = reader.schema_arrow, reader.iter_batches(batch_size=1024, columns=columns)
  else:  # datasets' save_to_disk writes Arrow IPC streams
    reader = pa.ipc.open_stream(pa.memory_map(path))
    schema, batches = reader.schema, reader
  for column in columns:
    if column not in schema.names:
      raise ValueError(
        f"{path} has no column {column!r} (data.corpora.*.text_column / "
        f".id_column); it has {schema.names}."
      )
  row = 0
  for batch in batches:
    for record in batch.select(columns).to_pylist():
      yield _id(corpus, record, relative_path, row), _text(corpus, record, path)
      row += 1


def _tfds_source(corpus):
  source = sources.check_kind(corpus.tfds_name, "text")
  if source.one_text:
    raise ValueError(
      f"data.corpora.*.tfds_name={corpus.tfds_name!r} is one text in chunks, "
      f"not documents: use format='text' on its source files."
    )
  return source


def _tfds_builder(corpus):
  return _tfds_source(corpus).builder(corpus.get("data_dir"), corpus.get("source_dir"))


def _read_tfds(corpus):
  _tfds_source(corpus)
  for split in ("train", "validation"):
    for example in sources.load_examples(
      corpus.tfds_name, split, corpus.get("data_dir"), corpus.get("source_dir")
    ):
      yield example["path"].decode("utf-8"), example["text"].decode("utf-8")
