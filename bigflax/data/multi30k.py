"""TFDS builder: Multi30k task 1, English-German image descriptions (Elliott et al., 2016).

Reads the raw (untokenised, original case) files of github.com/multi30k/dataset
`data/task1/raw/{train,val}.{en,de}.gz`, gunzipped, from `source_dir`; each is checked
against its sha256. The test_2016_flickr split is not part of this builder.
"""

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from bigflax.data import checked, local_builder

LANGUAGES = ("de", "en")
# split -> file stem; (stem, language) -> sha256 of the gunzipped raw file.
SPLITS = {"train": "train", "validation": "val"}
SHA256 = {
  ("train", "en"): "460a15fbd157e34a7a9957ee388c1ca247fe47af3ef25fb50442af6c274e0fc6",
  ("train", "de"): "2c2b73fd2b548fbcde3a875e0a78d6ee94d498bfdee6bd3eae3945779e9ddf72",
  ("val", "en"): "1f2a23d992769b5b3d209b0a10dd0b77c08cceb1f20dfb97ed0aafa49d107227",
  ("val", "de"): "660e09eb7e1da2f856ea13ee5ad3cf6d36b3d5b0b733c857e94c5747a3dfc660",
}


def read_lines(path, sha256: str) -> list[str]:
  """The file's lines, after checking it is byte for byte the known file."""
  data = checked.read_bytes(
    path, sha256, "Multi30k", " (the raw, gunzipped task-1 files are expected)"
  )
  return data.decode("utf-8").splitlines()


class Multi30k(local_builder.LocalBuilder):
  """Multi30k task 1 train (29,000 pairs) and validation (1,014 pairs): `de`, `en`, `index`.

  `source_dir` holds {train,val}.{de,en}; sort by `index` for the files' line order.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Raw task-1 train and val as train/validation; 'index' = line."}

  FEATURES = {
    "de": tfds.features.Text(),
    "en": tfds.features.Text(),
    "index": tfds.features.Scalar(dtype=np.int32),
  }
  INFO = dict(
    description="Multi30k task 1: Flickr30k English descriptions with professional "
    "German translations, raw text. `index` is the line in the files.",
    supervised_keys=("de", "en"),
    homepage="https://github.com/multi30k/dataset",
    citation="Elliott, Frank, Sima'an and Specia, Multi30K: Multilingual "
    "English-German Image Descriptions, VL workshop 2016.",
  )

  def _split_generators(self, dl_manager):
    del dl_manager
    if self._source_dir is None:
      raise ValueError(
        "Multi30k is read from local files: set data.source_dir to the "
        "folder holding {train,val}.{de,en} (e.g. ../shared/data/multi30k)."
      )
    directory = epath.Path(self._source_dir)
    return {split: self._generate_examples(directory, stem) for split, stem in SPLITS.items()}

  def _generate_examples(self, directory, stem):
    de, en = (read_lines(directory / f"{stem}.{lang}", SHA256[stem, lang]) for lang in LANGUAGES)
    if len(de) != len(en):
      raise ValueError(f"{directory}/{stem}.de has {len(de)} lines, {stem}.en {len(en)}.")
    for index, (de_line, en_line) in enumerate(zip(de, en)):
      yield index, {"de": de_line, "en": en_line, "index": index}
