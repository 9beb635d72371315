"""TFDS builder: the CPython standard library's own .py sources, one file per example."""

import pathlib
import platform
import sysconfig

import tensorflow_datasets as tfds

from bigflax.data import local_builder, packing

VALIDATION_FRACTION = 0.05
# Third-party code and the test suites are not "the standard library".
_SKIPPED_DIRS = frozenset({"site-packages", "dist-packages", "idle_test"})


def is_validation(relative_path: str) -> bool:
  """Whether a file (path relative to the stdlib root, '/'-separated) is held out.

  A hash of the path, not a random draw, so every run on every machine makes
  the same split, and a file added in a new Python version doesn't move others.
  """
  return packing.held_out(relative_path, VALIDATION_FRACTION)


def source_files(root: pathlib.Path) -> list[str]:
  """Sorted '/'-separated paths, relative to `root`, of the corpus's .py files."""
  paths = []
  for path in root.rglob("*.py"):
    relative = path.relative_to(root)
    dirs = relative.parts[:-1]
    if not any(d in _SKIPPED_DIRS or d.startswith("test") for d in dirs):
      paths.append(relative.as_posix())
  return sorted(paths)


class StdlibCorpus(local_builder.LocalBuilder):
  """Python source code of the standard library of the running interpreter."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {
    "1.0.0": "Stdlib .py files without tests; 5% of files (by path hash) held out.",
  }

  FEATURES = {
    "path": tfds.features.Text(),
    "text": tfds.features.Text(),
  }
  INFO = dict(
    description=(
      "The .py files of the CPython standard library (test directories "
      "and site-packages skipped), split train/validation by file. The "
      "content depends on the Python version that prepares it: "
      f"{platform.python_version()} here."
    ),
    homepage="https://github.com/python/cpython/tree/main/Lib",
    license="PSF-2.0",
  )

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is on local disk.
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    paths = source_files(root)
    return {
      "train": self._generate_examples(root, [p for p in paths if not is_validation(p)]),
      "validation": self._generate_examples(root, [p for p in paths if is_validation(p)]),
    }

  def _generate_examples(self, root, paths):
    for path in paths:
      # Decode with replacement rather than skip: a stray latin-1 byte in a
      # comment shouldn't cost a whole module (CPython 3.11's are all utf-8).
      text = (root / path).read_bytes().decode("utf-8", errors="replace")
      yield path, {"path": path, "text": text}
