"""Every test process sees 8 virtual CPU devices, so sharding tests need no special setup.
Must run before jax initialises its backend."""

import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
# The shared datasets sit next to the checkout; BIGFLAX_SHARED_DATA points elsewhere (a
# worktree one level deeper).
SHARED_DATA = pathlib.Path(os.environ.get("BIGFLAX_SHARED_DATA",
                                          REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
  """One TFDS data dir for the whole session: the corpora are prepared once."""
  return str(tmp_path_factory.mktemp("tfds"))
