"""`bigflax prepare`: corpora tokenized once into ArrayRecord shards, read back by index."""

import hashlib
import json

import numpy as np
import pytest

from bigflax.data import prepare, shards, tokenizers
from bigflax.tasks import lm
from helpers import WINDOW, data_config, make_text_corpus, read_all, reference_windows, text_corpus


def test_prepare_writes_the_windows_an_independent_packing_gives(tmp_path, monkeypatch):
  # Documents tokenized ~3 at a time: windows that straddle chunks are cut as from the
  # whole shard.
  monkeypatch.setattr(prepare, "_ENCODE_CHUNK_CHARS", 1000)
  texts = make_text_corpus(tmp_path / "src")
  config = data_config(tmp_path / "prepared", {"code": text_corpus(tmp_path / "src")})
  manifest = prepare.prepare(config)["code"]

  # Shards: consecutive files (sorted paths) of >= 2000 bytes each.
  paths, groups, size = sorted(texts), [[]], 0
  for p in paths:
    groups[-1].append(p)
    size += len(texts[p].encode())
    if size >= 2000:
      groups.append([])
      size = 0
  groups = [g for g in groups if g]
  assert len(manifest["shards"]) == len(groups) > 3
  want = reference_windows([[(p, texts[p]) for p in g] for g in groups], 0.2)
  for split in ("train", "validation"):
    np.testing.assert_array_equal(read_all(tmp_path / "prepared", "code", split), want[split])
    assert manifest["windows"][split] == len(want[split])
  assert len(want["validation"]) > 0

  on_disk = json.loads((tmp_path / "prepared" / "code" / "manifest.json").read_text())
  assert on_disk == manifest
  files = [
    json.loads(line)
    for line in (tmp_path / "prepared" / "code" / "sources.jsonl").read_text().splitlines()
  ]
  assert [f["path"] for f in files] == paths
  assert all(
    f["sha256"] == hashlib.sha256((tmp_path / "src" / f["path"]).read_bytes()).hexdigest()
    and f["bytes"] == len(texts[f["path"]].encode())
    for f in files
  )
  assert manifest["sources"] == {
    "file": "sources.jsonl",
    "files": len(paths),
    "bytes": sum(f["bytes"] for f in files),
  }
  assert manifest["tokenizer"] == tokenizers.fingerprint(tokenizers.ByteTokenizer())
  assert manifest["window"] == WINDOW and manifest["dtype"] == "uint16"
  assert manifest["documents"] == len(texts)
  assert manifest["tokens"] == sum(len(t.encode()) for t in texts.values())


def test_rerun_skips_finished_shards_and_redoes_a_changed_one(tmp_path, capsys):
  texts = make_text_corpus(tmp_path / "src")
  config = data_config(tmp_path / "prepared", {"code": text_corpus(tmp_path / "src")})
  manifest = prepare.prepare(config)["code"]
  out = tmp_path / "prepared" / "code"
  stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.array_record")}
  capsys.readouterr()

  assert prepare.prepare(config)["code"] == manifest
  assert f"{len(manifest['shards'])} already done, 0 to tokenize" in capsys.readouterr().out
  assert stamps == {p.name: p.stat().st_mtime_ns for p in out.glob("*.array_record")}

  last = sorted(texts)[-1]
  (tmp_path / "src" / last).write_text(texts[last] + " # changed", encoding="utf-8")
  again = prepare.prepare(config)["code"]
  assert f"{len(manifest['shards']) - 1} already done, 1 to tokenize" in capsys.readouterr().out
  last_shard = len(manifest["shards"]) - 1
  changed = {name for name, stamp in stamps.items() if (out / name).stat().st_mtime_ns != stamp}
  assert changed == {
    f"train-{last_shard:05d}.array_record",
    f"validation-{last_shard:05d}.array_record",
  }
  assert again["tokens"] == manifest["tokens"] + len(" # changed")


@pytest.mark.slow  # two spawned workers start Python and import bigflax: ~10 s
def test_worker_processes_write_what_one_process_writes(tmp_path):
  make_text_corpus(tmp_path / "src")
  one = data_config(tmp_path / "one", {"code": text_corpus(tmp_path / "src")})
  two = data_config(tmp_path / "two", {"code": text_corpus(tmp_path / "src")})
  two.data.prepare_workers = 2
  assert prepare.prepare(one) == prepare.prepare(two)
  for split in ("train", "validation"):
    np.testing.assert_array_equal(
      read_all(tmp_path / "one", "code", split), read_all(tmp_path / "two", "code", split)
    )


def test_training_refuses_shards_of_another_tokenizer_or_window(tmp_path):
  make_text_corpus(tmp_path / "src")
  config = data_config(tmp_path / "prepared", {"code": text_corpus(tmp_path / "src")})
  prepare.prepare(config)
  byte = tokenizers.ByteTokenizer()
  batches = lm.make_lm_batches(config.data, byte, "train", process_index=0, process_count=1)
  assert batches.batch(0)["inputs"].shape == (8, WINDOW - 1)

  longer = data_config(tmp_path / "prepared", {"code": text_corpus(tmp_path / "src")}, seq_len=64)
  with pytest.raises(
    ValueError,
    match=r"window length \(seq_len \+ 1\) 33, but this config "
    r"gives 65",
  ):
    lm.make_lm_batches(longer.data, byte, "train", process_index=0, process_count=1)
  with pytest.raises(ValueError, match=r"window length .* 33, but this config gives 65"):
    prepare.prepare(longer)  # nor is a prepared_dir overwritten with another make

  gpt2 = tokenizers.GPT2Tokenizer()
  with pytest.raises(
    ValueError,
    match=f"tokenizer {tokenizers.fingerprint(byte)}, but this "
    f"config gives {tokenizers.fingerprint(gpt2)}",
  ):
    lm.make_lm_batches(config.data, gpt2, "train", process_index=0, process_count=1)

  manifest_path = tmp_path / "prepared" / "code" / shards.MANIFEST
  manifest = json.loads(manifest_path.read_text())
  del manifest["windows_per_record"]  # as an older bigflax wrote it: a window a record
  manifest_path.write_text(json.dumps(manifest))
  with pytest.raises(ValueError, match="holds 1 window.s. a record, the layout of an older"):
    lm.make_lm_batches(config.data, byte, "train", process_index=0, process_count=1)


def test_config_mistakes_are_named(tmp_path):
  make_text_corpus(tmp_path / "src")
  corpus = text_corpus(tmp_path / "src")
  cases = [
    (dict(corpus, format="csv"), {}, r"data.corpora.code.format='csv'"),
    (dict(corpus, path=str(tmp_path / "nope")), {}, r"data.corpora.code.path=.* is not a"),
    (dict(format="jsonl", path=str(tmp_path / "src")), {}, r"code.text_column is needed"),
    (corpus, {"web": 1.0}, r"data.mixture names \['web'\]"),
    (dict(corpus, patterns=["*.md"]), {}, r"no files matching \('\*.md',\)"),
  ]
  for bad, mixture, message in cases:
    with pytest.raises(ValueError, match=message):
      prepare.prepare(data_config(tmp_path / "p", {"code": bad}, mixture))
  config = data_config(tmp_path / "p", {"code": corpus})
  config.tokenizer.kind = "sentencepiece"
  with pytest.raises(ValueError, match="tokenizer.kind='sentencepiece'"):
    prepare.prepare(config)
  config = data_config(tmp_path / "never_prepared", {"code": corpus})
  with pytest.raises(ValueError, match="run `python -m bigflax prepare"):
    lm.make_lm_batches(
      config.data, tokenizers.ByteTokenizer(), "train", process_index=0, process_count=1
    )
