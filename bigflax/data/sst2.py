"""TFDS builder: GLUE SST-2, binary sentiment of movie-review sentences and phrases."""

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from bigflax.data import checked, local_builder

# split -> (GLUE file name, sha256 of the file as GLUE ships it).
FILES = {
  "train": ("train.tsv", "48eac26399f8456935f81dd9e3a745c1430adb6c62e233ccfe22db4a0d15d1d1"),
  "validation": ("dev.tsv", "54a9c12c77e402fc14d6a66a506f24d999f596b0176eb777c972cccc2f9cc4b0"),
}
LABELS = ("negative", "positive")
_HEADER = "sentence\tlabel"
_URL = "https://dl.fbaipublicfiles.com/glue/data/SST-2.zip"


def read_checked(path, sha256: str) -> str:
  """The file's text, after checking it is byte for byte the known file."""
  return checked.read_bytes(path, sha256, "GLUE SST-2").decode("utf-8")


def parse_tsv(text: str) -> list[tuple[str, int]]:
  """(sentence, label) rows of a GLUE SST-2 TSV, sentences stripped of GLUE's trailing space."""
  header, *lines = text.splitlines()
  if header != _HEADER:
    raise ValueError(f"SST-2 header {header!r} is not {_HEADER!r}")
  rows = []
  for line in lines:
    sentence, label = line.split("\t")
    rows.append((sentence.strip(), int(label)))
  return rows


class Sst2(local_builder.LocalBuilder):
  """GLUE SST-2 train and validation (GLUE's dev; its test split has no labels).

  Reads `source_dir/{train,dev}.tsv` if `source_dir` is given, else downloads GLUE's zip.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {
    "1.0.0": "GLUE train/dev as train/validation; sentences stripped; 'index' = row number.",
  }

  FEATURES = {
    "sentence": tfds.features.Text(),
    "label": tfds.features.ClassLabel(names=LABELS),
    "index": tfds.features.Scalar(dtype=np.int32),
  }
  INFO = dict(
    description=(
      "The GLUE version of the Stanford Sentiment Treebank with binary labels. "
      "Sentences are lower-cased and PTB-tokenised. `index` is the row in "
      "GLUE's file: sort by it to undo TFDS's shuffle by key hash."
    ),
    supervised_keys=("sentence", "label"),
    homepage="https://gluebenchmark.com/",
    citation="Socher et al., EMNLP 2013; Wang et al., GLUE, ICLR 2019.",
  )

  def _split_generators(self, dl_manager):
    if self._source_dir is not None:
      directory = epath.Path(self._source_dir)
    else:
      directory = dl_manager.download_and_extract(_URL) / "SST-2"
    return {
      split: self._generate_examples(read_checked(directory / name, sha256))
      for split, (name, sha256) in FILES.items()
    }

  def _generate_examples(self, text):
    for index, (sentence, label) in enumerate(parse_tsv(text)):
      yield index, {"sentence": sentence, "label": label, "index": index}
