"""Tests for bigflax.data: tokenizers, TFDS builders and step-indexed batches."""

import math
import pathlib
import sysconfig

import ml_collections
import numpy as np
import pytest

from bigflax.data import pipeline, sources, stdlib_corpus, tiny_shakespeare, tokenizers
from bigflax.tasks import lm

SHAKESPEARE_DIR = pathlib.Path(__file__).parents[2] / "shared/data/tiny_shakespeare"
SHAKESPEARE_CHARS = 1_115_394
TEXT = "Héllo, wörld — 日本語 🙂\n    def f(x):\n\treturn  x  # two spaces\n"


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  """One TFDS data_dir per module, so each dataset is prepared only once."""
  return tmp_path_factory.mktemp("tfds")


def test_byte_tokenizer_round_trips_and_skips_special_ids():
  tok = tokenizers.ByteTokenizer()
  ids = tok.encode(TEXT)
  assert tok.encode("Az") == [ord("A") + 3, ord("z") + 3]
  assert len(ids) == len(TEXT.encode("utf-8"))
  assert all(3 <= i < tok.vocab_size for i in ids)
  assert tok.vocab_size == 259
  assert tok.decode([tok.bos_id] + ids + [tok.eos_id, tok.pad_id]) == TEXT
  assert tok.encode_batch([TEXT, "", "Az"]) == [ids, [], tok.encode("Az")]
  assert tok.decode([0xFF + 3, ord("a") + 3]) == "\ufffda"  # Invalid UTF-8.


def test_byte_tokenizer_save_load(tmp_path):
  tokenizers.ByteTokenizer().save(tmp_path)
  assert isinstance(tokenizers.load(tmp_path), tokenizers.ByteTokenizer)


def _shakespeare_lines(n=3000):
  return (SHAKESPEARE_DIR / "input.txt").read_text().splitlines(keepends=True)[:n]


def test_sentencepiece_trains_round_trips_and_build_reloads(tmp_path):
  config = ml_collections.ConfigDict({"kind": "sentencepiece", "vocab_size": 1000})
  tok = tokenizers.build(config, _shakespeare_lines, tmp_path)
  assert (tok.vocab_size, tok.pad_id, tok.bos_id, tok.eos_id) == (1000, 0, 1, 2)
  ids = tok.encode(TEXT)
  assert tok.decode([tok.bos_id] + ids + [tok.eos_id]) == TEXT  # Byte fallback.
  assert tok.encode_batch([TEXT, "ROMEO:"]) == [ids, tok.encode("ROMEO:")]

  def must_not_train():
    raise AssertionError("build() retrained instead of loading")

  reloaded = tokenizers.build(config, must_not_train, tmp_path)
  text = "".join(_shakespeare_lines(200))
  assert reloaded.vocab_size == tok.vocab_size
  assert reloaded.encode(text) == tok.encode(text)
  assert len(tok.encode(text)) < len(text) / 2  # It learned real pieces.

  with pytest.raises(ValueError, match="tokenizer.kind"):
    tokenizers.build(ml_collections.ConfigDict({"kind": "byte"}), must_not_train, tmp_path)


def test_build_byte_and_unknown_kind(tmp_path):
  byte = ml_collections.ConfigDict({"kind": "byte"})
  assert isinstance(tokenizers.build(byte, None, tmp_path), tokenizers.ByteTokenizer)
  assert isinstance(tokenizers.load(tmp_path), tokenizers.ByteTokenizer)
  with pytest.raises(ValueError, match="tokenizer.kind='wordpiece'"):
    tokenizers.build(ml_collections.ConfigDict({"kind": "wordpiece"}), None, tmp_path / "x")


def test_stdlib_corpus_splits_by_file_disjoint_and_stable(tfds_dir):
  builder = stdlib_corpus.StdlibCorpus(data_dir=tfds_dir)
  builder.download_and_prepare(file_format="array_record")
  paths = {}
  for split in ("train", "validation"):
    source = builder.as_data_source(split=split)
    paths[split] = {example["path"].decode() for example in source}
  train, validation = paths["train"], paths["validation"]

  root = pathlib.Path(sysconfig.get_paths()["stdlib"])
  assert not train & validation
  assert train | validation == set(stdlib_corpus.source_files(root))
  assert "os.py" in train and "collections/__init__.py" in train
  assert not any("site-packages" in p or p.startswith("test/") for p in train)
  # A fixed hash of the relative path: these answers never change.
  assert {"chunk.py", "opcode.py", "token.py", "email/__init__.py"} <= validation
  assert 0.03 < len(validation) / (len(train) + len(validation)) < 0.08

  texts = pipeline.load_text_split("stdlib_corpus", "validation", tfds_dir)
  assert texts[0] == (root / sorted(validation)[0]).read_text()


def test_tiny_shakespeare_is_the_file_split_90_10(tfds_dir):
  train = pipeline.load_text_split("tiny_shakespeare", "train", tfds_dir, SHAKESPEARE_DIR)
  validation = pipeline.load_text_split("tiny_shakespeare", "validation", tfds_dir)
  assert len("".join(train)) == int(0.9 * SHAKESPEARE_CHARS) == 1_003_854
  assert len("".join(validation)) == SHAKESPEARE_CHARS - 1_003_854
  assert "".join(train + validation) == (SHAKESPEARE_DIR / "input.txt").read_text()
  assert 300 < len(train) < 500 and all(t.endswith("\n") for t in train[:-1])


def test_tiny_shakespeare_rejects_a_corrupt_file(tmp_path):
  source = tmp_path / "source"
  source.mkdir()
  data = bytearray((SHAKESPEARE_DIR / "input.txt").read_bytes())
  data[1000] ^= 1
  (source / "input.txt").write_bytes(data)
  builder = tiny_shakespeare.TinyShakespeare(data_dir=tmp_path / "tfds", source_dir=source)
  with pytest.raises(ValueError, match=r"source/input.txt: sha256"):
    builder.download_and_prepare(file_format="array_record")


def test_unknown_dataset_name(tmp_path):
  with pytest.raises(ValueError, match="data.name='c4'.*stdlib_corpus"):
    pipeline.load_text_split("c4", "train", tmp_path)


def test_sources_say_their_kind_and_classes(tmp_path):
  assert sources.kind("imagenet2012") == "image"  # experiments/vit_b16.py plans on it
  assert sources.kind("two_blobs") == "features"
  assert sources.class_names("sst2") == ("negative", "positive")
  assert sources.class_names("imagenet2012") is None  # classes by index
  with pytest.raises(
    ValueError,
    match="data.name='sst2' holds labelled_text examples, not image: choose one of .*fashion_mnist",
  ):
    pipeline.load_labelled_images("sst2", "train", tmp_path)
  with pytest.raises(ValueError, match="'imagenet2012' has no loader here"):
    pipeline.load_labelled_images("imagenet2012", "validation", tmp_path)


def test_pack_documents_hand_computed():
  windows = pipeline.pack_documents([[5, 6, 7], [8], [9, 10]], eos_id=2, seq_len=3)
  # Stream 5 6 7 2 8 2 9 10 2 -> two windows of 4; the final 2 is dropped.
  np.testing.assert_array_equal(windows, [[5, 6, 7, 2], [8, 2, 9, 10]])
  assert windows.dtype == np.int32


def test_unigram_entropy():
  assert lm.unigram_entropy(np.array([[0, 1], [2, 3]]), 8) == pytest.approx(math.log(4))
  assert lm.unigram_entropy(np.zeros((3, 5), np.int32), 8) == 0


def _windows(num_windows=12, seq_len=3):
  return np.arange(num_windows * (seq_len + 1), dtype=np.int32).reshape(num_windows, -1)


def _stack(batches):
  return {k: np.stack([b[k] for b in batches]) for k in ("inputs", "targets")}


def test_lm_batches_are_a_function_of_seed_and_step():
  windows = _windows()
  a = lm.lm_batches(windows, 4, seed=7, shuffle=True)
  b = lm.lm_batches(windows, 4, seed=7, shuffle=True)
  batch = a.batch(5)
  assert batch["inputs"].shape == batch["targets"].shape == (4, 3)
  assert batch["inputs"].dtype == np.int32
  np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
  for step in (0, 5, 1000):
    np.testing.assert_array_equal(a.batch(step)["inputs"], b.batch(step)["inputs"])
  other_seed = lm.lm_batches(windows, 4, seed=8, shuffle=True)
  assert not np.array_equal(other_seed.batch(0)["inputs"], a.batch(0)["inputs"])


def test_lm_batches_iterate_resumes_at_any_step():
  batches = lm.lm_batches(_windows(), 4, seed=0, shuffle=True)
  iterator = batches.iterate(start_step=7)
  got = _stack([next(iterator) for _ in range(6)])
  want = _stack([batches.batch(s) for s in range(7, 13)])
  for k in want:
    np.testing.assert_array_equal(got[k], want[k])


def test_lm_batches_processes_split_the_global_batch():
  windows = _windows()
  whole = lm.lm_batches(windows, 4, seed=3, shuffle=True)
  parts = [
    lm.lm_batches(windows, 4, seed=3, shuffle=True, process_index=p, process_count=2)
    for p in range(2)
  ]
  for step in (0, 3, 10):
    for k in ("inputs", "targets"):
      joined = np.concatenate([part.batch(step)[k] for part in parts])
      np.testing.assert_array_equal(joined, whole.batch(step)[k])


def test_lm_batches_reshuffle_each_epoch():
  windows = _windows(num_windows=8)
  batches = lm.lm_batches(windows, 4, seed=0, shuffle=True)
  assert batches.steps_per_epoch == 2

  def epoch(e):  # Row order of one epoch, as window indices.
    rows = np.concatenate([batches.batch(s)["inputs"] for s in (2 * e, 2 * e + 1)])
    return rows[:, 0] // 4

  assert sorted(epoch(0)) == sorted(epoch(1)) == list(range(8))
  assert list(epoch(0)) != list(epoch(1))


def test_lm_batches_unshuffled_for_validation():
  windows = _windows(num_windows=10)
  batches = lm.lm_batches(windows, 4, seed=0, shuffle=False)
  np.testing.assert_array_equal(batches.batch(0)["inputs"], windows[0:4, :-1])
  np.testing.assert_array_equal(batches.batch(1)["targets"], windows[4:8, 1:])


def test_lm_batches_errors_name_the_config_field():
  with pytest.raises(ValueError, match="data.global_batch_size=6.*process count 4"):
    lm.lm_batches(_windows(), 6, seed=0, shuffle=True, process_count=4)
  with pytest.raises(ValueError, match="3 examples.*data.global_batch_size=4"):
    lm.lm_batches(_windows(num_windows=3), 4, seed=0, shuffle=False)


def test_make_lm_batches_on_tiny_shakespeare(tfds_dir):
  config = ml_collections.ConfigDict(
    {
      "name": "tiny_shakespeare",
      "data_dir": str(tfds_dir),
      "source_dir": str(SHAKESPEARE_DIR),
      "seq_len": 64,
      "global_batch_size": 8,
      "seed": 0,
    }
  )
  tok = tokenizers.ByteTokenizer()
  validation = lm.make_lm_batches(config, tok, "validation", process_index=0, process_count=1)
  text = (SHAKESPEARE_DIR / "input.txt").read_text()[1_003_854:]
  assert tok.decode(validation.batch(0)["inputs"][0]) == text[:64]
  assert validation.batch(0)["inputs"][0].tolist() == tok.encode(text[:64])

  train = lm.make_lm_batches(config, tok, "train", process_index=1, process_count=2)
  assert train.batch(0)["inputs"].shape == (4, 64)
  assert len(train.arrays["targets"]) == (1_003_854 + 1) // 65  # One eos after the split.
  assert 2.5 < lm.unigram_entropy(train.arrays["targets"], tok.vocab_size) < 4
