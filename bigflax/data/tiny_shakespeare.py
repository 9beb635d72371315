"""TFDS builder: Karpathy's Tiny Shakespeare, 90/10 train/validation by characters."""

from etils import epath
import tensorflow_datasets as tfds

from bigflax.data import checked, local_builder

FILE_NAME = "input.txt"
SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
_URL = (
  "https://raw.githubusercontent.com/karpathy/char-rnn/"
  "6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e/data/tinyshakespeare/input.txt"
)
TRAIN_FRACTION = 0.9
# ~400 examples of ~2.8 kB instead of one 1 MB string per split.
LINES_PER_CHUNK = 100


def split_text(text: str) -> dict[str, str]:
  """The usual split: first 90% of characters train, the rest validation."""
  cut = int(len(text) * TRAIN_FRACTION)
  return {"train": text[:cut], "validation": text[cut:]}


def read_checked(path) -> str:
  """The file's text, after checking it is byte for byte the known file."""
  return checked.read_bytes(path, SHA256, "Tiny Shakespeare").decode("utf-8")


class TinyShakespeare(local_builder.LocalBuilder):
  """Tiny Shakespeare in chunks of whole lines.

  Reads `source_dir/input.txt` if `source_dir` is given, else downloads it.
  """

  # 2.0.0, not 1.0.0: the TFDS catalogue's own tiny_shakespeare 1.0.0 (one
  # example per split, no 'path') may sit in the same data_dir.
  VERSION = tfds.core.Version("2.0.0")
  RELEASE_NOTES = {
    "2.0.0": "Chunks of 100 lines with a 'path' key; train/validation 90/10 by characters.",
  }

  FEATURES = {
    "path": tfds.features.Text(),
    "text": tfds.features.Text(),
  }
  INFO = dict(
    description=(
      "40,000 lines of Shakespeare (char-rnn's input.txt). Train is the "
      "first 90% of characters, validation the last 10%; each is cut into "
      f"chunks of {LINES_PER_CHUNK} lines whose paths sort in text order."
    ),
    homepage="https://github.com/karpathy/char-rnn",
    license="Public domain",
  )

  def _split_generators(self, dl_manager):
    if self._source_dir is not None:
      path = epath.Path(self._source_dir) / FILE_NAME
    else:
      path = dl_manager.download(_URL)
    splits = split_text(read_checked(path))
    return {name: self._generate_examples(name, text) for name, text in splits.items()}

  def _generate_examples(self, split, text):
    lines = text.splitlines(keepends=True)
    for i in range(0, len(lines), LINES_PER_CHUNK):
      path = f"{split}/{i // LINES_PER_CHUNK:05d}"
      yield path, {"path": path, "text": "".join(lines[i : i + LINES_PER_CHUNK])}
