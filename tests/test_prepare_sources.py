"""The corpus formats `prepare` reads: JSONL, Parquet, HF datasets' save_to_disk, TFDS."""

import gzip
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bigflax.data import documents, packing, pipeline, prepare
from helpers import data_config, read_all, reference_windows

RNG = np.random.default_rng(0)


def random_texts(count):
  return [
    " ".join(RNG.choice(["alpha", "beta", "γάμμα", "\n"], size=int(RNG.integers(5, 80))))
    for _ in range(count)
  ]


def prepared_equals_reference(tmp_path, corpus, expected_docs):
  """Prepares `corpus` in one shard; its windows are the reference packing of
  `expected_docs` [(id, text)] in that order."""
  config = data_config(tmp_path / "prepared", {"c": corpus})
  config.data.shard_bytes = 1 << 30
  manifest = prepare.prepare(config)["c"]
  want = reference_windows([expected_docs], corpus["validation_fraction"])
  for split in ("train", "validation"):
    np.testing.assert_array_equal(read_all(tmp_path / "prepared", "c", split), want[split])
  assert manifest["documents"] == len(expected_docs)
  assert (
    manifest["validation_documents"]
    == sum(packing.held_out(i, corpus["validation_fraction"]) for i, _ in expected_docs)
    > 0
  )
  return manifest


def test_jsonl_with_an_id_column(tmp_path):
  texts = random_texts(60)
  (tmp_path / "src").mkdir()
  for part, rows in enumerate((range(0, 25), range(25, 60))):
    lines = [json.dumps({"doc": f"d{i}", "body": texts[i], "other": 1}) for i in rows]
    (tmp_path / "src" / f"part{part}.jsonl").write_text("\n".join(lines) + "\n\n")
  corpus = dict(
    format="jsonl",
    path=str(tmp_path / "src"),
    text_column="body",
    id_column="doc",
    validation_fraction=0.2,
  )
  prepared_equals_reference(tmp_path, corpus, [(f"d{i}", t) for i, t in enumerate(texts)])
  with pytest.raises(ValueError, match="a record's 'text' is NoneType"):
    list(documents.read(documents_config(dict(corpus, text_column="text")), "part0.jsonl"))


def test_gzipped_text_and_jsonl_files_read_as_their_plain_text(tmp_path):
  texts = random_texts(40)
  (tmp_path / "src").mkdir()
  for i, text in enumerate(texts[:20]):
    (tmp_path / "src" / f"page{i:02d}.1.gz").write_bytes(gzip.compress(text.encode()))
  corpus = dict(
    format="text", path=str(tmp_path / "src"), patterns=["*.gz"], validation_fraction=0.2
  )
  prepared_equals_reference(
    tmp_path / "text", corpus, [(f"page{i:02d}.1.gz", t) for i, t in enumerate(texts[:20])]
  )
  lines = [json.dumps({"body": t}) for t in texts[20:]]
  (tmp_path / "json").mkdir()
  (tmp_path / "json" / "dump.jsonl.gz").write_bytes(gzip.compress("\n".join(lines).encode()))
  corpus = dict(
    format="jsonl", path=str(tmp_path / "json"), text_column="body", validation_fraction=0.2
  )  # *.jsonl.gz is a default pattern
  prepared_equals_reference(
    tmp_path / "jsonl", corpus, [(f"dump.jsonl.gz:{i}", t) for i, t in enumerate(texts[20:])]
  )
  whole = (tmp_path / "src" / "page00.1.gz").read_bytes()
  (tmp_path / "src" / "page00.1.gz").write_bytes(whole[: len(whole) // 2])  # truncated
  with pytest.raises(ValueError, match=r"page00.1.gz: a damaged or truncated gzip file"):
    list(
      documents.read(
        documents_config(corpus | dict(format="text", path=str(tmp_path / "src"))), "page00.1.gz"
      )
    )


def documents_config(corpus):
  import ml_collections  # pylint: disable=import-outside-toplevel

  return ml_collections.ConfigDict(corpus)


def test_parquet_with_a_named_text_column_and_row_ids(tmp_path):
  texts = random_texts(50)
  (tmp_path / "src" / "a").mkdir(parents=True)
  pq.write_table(
    pa.table({"content": texts[:30], "n": list(range(30))}),
    tmp_path / "src" / "a" / "0.parquet",
    row_group_size=7,
  )
  pq.write_table(pa.table({"content": texts[30:]}), tmp_path / "src" / "b.parquet")
  corpus = dict(
    format="parquet", path=str(tmp_path / "src"), text_column="content", validation_fraction=0.2
  )
  expected = [(f"a/0.parquet:{i}", t) for i, t in enumerate(texts[:30])] + [
    (f"b.parquet:{i}", t) for i, t in enumerate(texts[30:])
  ]
  prepared_equals_reference(tmp_path, corpus, expected)
  with pytest.raises(ValueError, match=r"has no column 'text' .* it has \['content'\]"):
    list(documents.read(documents_config(dict(corpus, text_column="text")), "b.parquet"))


def test_hugging_face_save_to_disk(tmp_path):
  datasets = pytest.importorskip("datasets")  # the `data` extra
  texts = random_texts(40)
  datasets.DatasetDict(
    train=datasets.Dataset.from_dict({"text": texts[:30], "id": list(range(30))}),
    test=datasets.Dataset.from_dict({"text": texts[30:], "id": list(range(30, 40))}),
  ).save_to_disk(str(tmp_path / "src"))
  corpus = dict(
    format="hf_disk",
    path=str(tmp_path / "src"),
    text_column="text",
    id_column="id",
    validation_fraction=0.25,
  )
  # Files in path order: test/ before train/.
  expected = [(str(i), texts[i]) for i in [*range(30, 40), *range(30)]]
  prepared_equals_reference(tmp_path, corpus, expected)


def test_tfds_builder_documents_keep_their_paths(tfds_dir):
  corpus = documents_config(
    dict(format="tfds", tfds_name="stdlib_corpus", data_dir=tfds_dir, validation_fraction=0.05)
  )
  docs = dict(documents.read(corpus, documents.files(corpus)[0]["path"]))
  train = pipeline.load_text_split("stdlib_corpus", "train", tfds_dir)
  validation = pipeline.load_text_split("stdlib_corpus", "validation", tfds_dir)
  assert sorted(docs.values()) == sorted(train + validation)
  # The builder's own split is the same hash of the path, at its fraction.
  held_out = sorted(t for i, t in docs.items() if packing.held_out(i, 0.05))
  assert held_out == sorted(validation)
  with pytest.raises(ValueError, match="one text in chunks"):
    documents.sha256(documents_config(dict(format="tfds", tfds_name="tiny_shakespeare")), {})


def test_the_split_is_a_hash_of_the_id_not_of_the_order():
  ids = [f"doc{i}" for i in range(2000)]
  held = {i for i in ids if packing.held_out(i, 0.1)}
  assert held == {i for i in reversed(ids) if packing.held_out(i, 0.1)}
  assert 150 < len(held) < 250
  assert {i for i in ids if packing.held_out(i, 0.2)} > held  # a larger fraction adds
