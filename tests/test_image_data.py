"""Fashion-MNIST through its TFDS builder (the real IDX files), image batches and the
augmentation's determinism."""

import collections
import gzip
import shutil

import ml_collections
import numpy as np
import pytest

from bigflax.data import augment, fashion_mnist, pipeline
from bigflax.tasks import classify
from conftest import SHARED_DATA

SOURCE = SHARED_DATA / "fashion_mnist"


@pytest.fixture(scope="module")
def fashion_mnist_dir(tfds_dir):
  """The session's TFDS data_dir with fashion_mnist prepared (about 10 s)."""
  fashion_mnist.FashionMnist(data_dir=tfds_dir, source_dir=SOURCE).download_and_prepare(
    file_format="array_record"
  )
  return tfds_dir


def raw_idx(name, offset):
  """The IDX file decoded directly: header bytes skipped, uint8 payload."""
  return np.frombuffer(gzip.open(SOURCE / name).read()[offset:], np.uint8)


def test_builder_reads_every_image_and_label(fashion_mnist_dir):
  builder = fashion_mnist.FashionMnist(data_dir=fashion_mnist_dir)
  assert builder.info.splits["train"].num_examples == 60_000
  assert builder.info.splits["test"].num_examples == 10_000
  assert builder.info.features["label"].names[0] == "T-shirt/top"

  train = [
    pipeline.load_labelled_images("fashion_mnist", split, fashion_mnist_dir)
    for split in ("train", "validation")
  ]
  images = np.concatenate([train[0][0], train[1][0]])
  labels = np.concatenate([train[0][1], train[1][1]])
  assert len(train[0][0]) == 55_000 and len(train[1][0]) == 5_000
  np.testing.assert_array_equal(images.reshape(-1), raw_idx("train-images-idx3-ubyte.gz", 16))
  np.testing.assert_array_equal(labels, raw_idx("train-labels-idx1-ubyte.gz", 8))
  assert collections.Counter(labels.tolist()) == {c: 6_000 for c in range(10)}

  test_images, test_labels = pipeline.load_labelled_images(
    "fashion_mnist", "test", fashion_mnist_dir
  )
  assert test_images.shape == (10_000, 28, 28, 1) and test_images.dtype == np.uint8
  np.testing.assert_array_equal(test_labels, raw_idx("t10k-labels-idx1-ubyte.gz", 8))
  assert collections.Counter(test_labels.tolist()) == {c: 1_000 for c in range(10)}
  assert 60 < test_images.mean() < 90  # mostly black background, not noise or zeros


def test_builder_rejects_a_corrupt_file(tmp_path):
  source = tmp_path / "source"
  shutil.copytree(SOURCE, source)
  data = bytearray((source / "t10k-labels-idx1-ubyte.gz").read_bytes())
  data[100] ^= 1
  (source / "t10k-labels-idx1-ubyte.gz").write_bytes(data)
  builder = fashion_mnist.FashionMnist(data_dir=tmp_path / "tfds", source_dir=source)
  with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte.gz: sha256"):
    builder.download_and_prepare(file_format="array_record")


def test_evaluation_batches_cover_the_split_once(fashion_mnist_dir):
  config = ml_collections.ConfigDict(
    dict(
      name="fashion_mnist",
      data_dir=fashion_mnist_dir,
      source_dir=None,
      global_batch_size=768,
      seed=0,
    )
  )
  batches = classify.make_image_classification_batches(
    config, "test", process_index=1, process_count=2
  )
  assert batches.steps_per_epoch == 14  # ceil(10000 / 768)
  last = batches.batch(13)
  # Process 1's half of the last global batch: rows 10368-10751, all padding.
  assert last["image"].shape == (384, 28, 28, 1) and last["weight"].sum() == 0
  weights = sum(batches.batch(s)["weight"].sum() for s in range(14))
  assert weights == 13 * 384  # the 16 real rows of the last batch are process 0's


def brute_force_crop_and_flip(image, out, padding):
  """Every (top, left, flip) that turns `image` into `out`."""
  padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
  h, w, _ = image.shape
  return [
    (top, left, flip)
    for top in range(2 * padding + 1)
    for left in range(2 * padding + 1)
    for flip in (False, True)
    if np.array_equal(
      (lambda c: c[:, ::-1] if flip else c)(padded[top : top + h, left : left + w]), out
    )
  ]


def test_crop_and_flip_is_a_random_shift_and_mirror_seeded_by_step():
  rng = np.random.default_rng(0)
  images = rng.integers(1, 256, size=(64, 6, 5, 1), dtype=np.uint8)
  batch = {"image": images, "label": np.arange(64)}
  out = augment.crop_and_flip(3, batch, seed=1, padding=2, flip=True)
  np.testing.assert_array_equal(out["label"], batch["label"])
  found = [brute_force_crop_and_flip(i, o, 2) for i, o in zip(images, out["image"])]
  assert all(len(f) == 1 for f in found)  # each output is exactly one crop/flip
  offsets = collections.Counter((top, left) for [(top, left, _)] in found)
  assert len(offsets) > 10 and 20 < sum(flip for [(_, _, flip)] in found) < 44
  again = augment.crop_and_flip(3, batch, seed=1, padding=2, flip=True)
  np.testing.assert_array_equal(again["image"], out["image"])  # a function of the step
  other = augment.crop_and_flip(4, batch, seed=1, padding=2, flip=True)
  assert not np.array_equal(other["image"], out["image"])
  same = augment.crop_and_flip(3, batch, seed=1, padding=0, flip=False)
  np.testing.assert_array_equal(same["image"], images)
