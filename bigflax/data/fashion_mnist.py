"""TFDS builder: Zalando's Fashion-MNIST, 28x28 grayscale clothing images in 10 classes,
read from the four gzipped IDX files."""

import gzip

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from bigflax.data import checked, local_builder

# split -> (images file, labels file); with the sha256 of each .gz file.
FILES = {
  "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
  "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
SHA256 = {
  "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
  "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
  "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
  "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}
# The Debian package's files: upstream's .gz differ in their gzip header only.
_URL = "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/"
LABELS = (
  "T-shirt/top",
  "Trouser",
  "Pullover",
  "Dress",
  "Coat",
  "Sandal",
  "Shirt",
  "Sneaker",
  "Bag",
  "Ankle boot",
)
IMAGE_SHAPE = (28, 28, 1)
# bigflax split -> (TFDS split, first and last + 1 IDX row). Validation is the last 5,000
# train images, so model selection never looks at test.
SPLITS = {
  "train": ("train", 0, 55_000),
  "validation": ("train", 55_000, 60_000),
  "test": ("test", 0, 10_000),
}
_IDX_MAGIC = {3: 2051, 1: 2049}  # rank -> magic number (uint8 data)


def read_idx(path, rank: int, sha256: str | None = None) -> np.ndarray:
  """The uint8 array of a gzipped IDX file (big-endian int32 magic, then the dims);
  checks the .gz is byte for byte the known file when `sha256` is given."""
  data = (
    epath.Path(path).read_bytes()
    if sha256 is None
    else checked.read_bytes(path, sha256, "Fashion-MNIST")
  )
  data = gzip.decompress(data)
  header = np.frombuffer(data, ">i4", count=1 + rank)
  if header[0] != _IDX_MAGIC[rank]:
    raise ValueError(f"{path}: IDX magic {header[0]} is not {_IDX_MAGIC[rank]} (rank {rank}).")
  shape = tuple(int(n) for n in header[1:])
  array = np.frombuffer(data, np.uint8, offset=4 * (1 + rank))
  if array.size != np.prod(shape):
    raise ValueError(f"{path}: {array.size} values, but the header says {shape}.")
  return array.reshape(shape)


class FashionMnist(local_builder.LocalBuilder):
  """Fashion-MNIST train (60,000) and test (10,000).

  Reads the IDX .gz files from `source_dir` if given, else downloads them.
  """

  # 2.0.0: the TFDS catalogue's own fashion_mnist 3.0.1 (an Image feature, no 'index')
  # is a different dataset layout, even if it shares the data_dir.
  VERSION = tfds.core.Version("2.0.0")
  RELEASE_NOTES = {"2.0.0": "uint8 Tensor images (no TensorFlow needed), 'index' = IDX row."}

  FEATURES = {
    # A Tensor, not tfds.features.Image: Image encodes a numpy array through
    # TensorFlow.
    "image": tfds.features.Tensor(shape=IMAGE_SHAPE, dtype=np.uint8),
    "label": tfds.features.ClassLabel(names=LABELS),
    "index": tfds.features.Scalar(dtype=np.int32),
  }
  INFO = dict(
    description=(
      "Zalando's Fashion-MNIST: 28x28 grayscale images of clothing, 10 classes, "
      "6,000 train and 1,000 test images each. `index` is the row in the IDX "
      "file: sort by it to undo TFDS's shuffle by key hash."
    ),
    supervised_keys=("image", "label"),
    homepage="https://github.com/zalandoresearch/fashion-mnist",
    license="MIT",
    citation="Xiao, Rasul and Vollgraf, arXiv:1708.07747, 2017.",
  )

  def _split_generators(self, dl_manager):
    if self._source_dir is not None:
      paths = {name: epath.Path(self._source_dir) / name for name in SHA256}
      checksums = SHA256
    else:  # upstream's files, whose gzip headers differ from the checked copy's
      paths = dl_manager.download({name: _URL + name for name in SHA256})
      checksums = dict.fromkeys(SHA256)
    return {
      split: self._generate_examples(
        *(read_idx(paths[name], rank, checksums[name]) for name, rank in zip(names, (3, 1)))
      )
      for split, names in FILES.items()
    }

  def _generate_examples(self, images, labels):
    if len(images) != len(labels):
      raise ValueError(f"{len(images)} images but {len(labels)} labels.")
    for index, (image, label) in enumerate(zip(images, labels)):
      yield index, {"image": image[..., None], "label": int(label), "index": index}
