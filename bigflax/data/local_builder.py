"""The base of bigflax's own TFDS builders, so each builder file holds only its data."""

import inspect

from etils import epath
import tensorflow_datasets as tfds


class LocalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A TFDS builder defined here, not in the TFDS catalogue.

  A subclass sets VERSION, RELEASE_NOTES, FEATURES (name -> TFDS feature) and INFO (the
  other DatasetInfo fields: description, homepage, ...) and writes _split_generators and
  _generate_examples. `source_dir` is where its source files are (None: download them,
  where the builder can).
  """

  FEATURES: dict = {}
  INFO: dict = {}

  def __init_subclass__(cls, **kwargs):
    # Never registered: some names (tiny_shakespeare) are catalogue datasets too.
    super().__init_subclass__(skip_registration=True, **kwargs)
    # What TFDS would find itself, but its lookup imports importlib_resources,
    # which it doesn't install on Python >= 3.9 (tensorflow/datasets#11212).
    cls.code_path = epath.Path(inspect.getfile(cls))

  def __init__(self, *, source_dir=None, **kwargs):
    self._source_dir = source_dir
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    # Built in place: dataset_info_from_configs wants metadata files next to
    # the module, which only packaged TFDS datasets have.
    return tfds.core.DatasetInfo(
      builder=self, features=tfds.features.FeaturesDict(self.FEATURES), **self.INFO
    )
