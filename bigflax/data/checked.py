"""Reading a dataset file that must be byte for byte the published one."""

import hashlib

from etils import epath


def read_bytes(path, sha256: str, dataset: str, expected: str = "") -> bytes:
  """The file's bytes, after checking their sha256 against the known file's.

  `dataset` names the data set in the error; `expected` says which file was meant.
  """
  data = epath.Path(path).read_bytes()
  digest = hashlib.sha256(data).hexdigest()
  if digest != sha256:
    raise ValueError(
      f"{path}: sha256 {digest} is not {dataset}'s {sha256}; the file is "
      f"corrupt or a different file{expected}."
    )
  return data
