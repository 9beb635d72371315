"""Every test process sees 8 virtual CPU devices, so sharding tests need no special setup.
Must run before jax initialises its backend. The environment set here is inherited by the
`python -m bigflax` subprocesses the tests start."""

import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# JAX's persistent compilation cache: the tests compile the same tiny steps again and again,
# in this process and in the subprocesses. A stable directory (not the session's tmp) so that
# the slow tier reuses the fast tier's compiles and a rerun starts warm; keys hold the jax
# version, the flags and the devices, so a stale entry is never used. A size limit makes JAX
# take a file lock around each read and write: two xdist workers share the directory safely.
# Only compiles of 0.5 s or more (steps, decoders): each write lists the whole directory, and
# the hundreds of eager ops (85 % of entries at 0 s) would make that the cost.
os.environ.setdefault(
  "JAX_COMPILATION_CACHE_DIR", str(pathlib.Path.home() / ".cache" / "bigflax-tests-jax")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 * 2**30))
# Transparent huge pages for malloc: ~13 % off a train step. Only a process started after
# this line gets it (glibc reads it at exec): the subprocesses; CI exports it for pytest.
if "glibc.malloc.hugetlb" not in os.environ.get("GLIBC_TUNABLES", ""):
  os.environ["GLIBC_TUNABLES"] = ":".join(
    filter(None, [os.environ.get("GLIBC_TUNABLES"), "glibc.malloc.hugetlb=1"])
  )

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
# The shared datasets sit next to the checkout; BIGFLAX_SHARED_DATA points elsewhere (a
# worktree one level deeper).
SHARED_DATA = pathlib.Path(os.environ.get("BIGFLAX_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
  """One TFDS data dir for the whole session: the corpora are prepared once."""
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="session")
def tiny_gpt_run(tfds_dir, tmp_path_factory):
  """A tiny byte-level GPT trained for 30 steps through the CLI (export and serve tests)."""
  from helpers import TINY, run  # pylint: disable=import-outside-toplevel

  workdir = tmp_path_factory.mktemp("tiny_gpt")
  result = run(
    "train",
    workdir,
    *TINY,
    f"--config.data.data_dir={tfds_dir}",
    "--config.train.num_steps=30",
    "--config.train.checkpoint_every=30",
    "--config.train.eval_every=30",
    "--config.train.eval_steps=2",
  )
  assert result.returncode == 0, result.stderr
  return workdir


@pytest.fixture(scope="session")
def tiny_classifier_runs(tmp_path_factory):
  """Two runs of the seed classifier (MLP, 2 features), after 5 and after 40 steps."""
  from helpers import start  # pylint: disable=import-outside-toplevel

  runs = [tmp_path_factory.mktemp(f"classifier_{steps}") for steps in (5, 40)]
  processes = [
    start(
      "train",
      workdir,
      "--config",
      "experiments/seed_classifier.py",
      f"--config.train.num_steps={steps}",
      f"--config.train.eval_every={steps}",
      f"--config.train.checkpoint_every={steps}",
      "--config.optim.lr=0.005",
    )
    for workdir, steps in zip(runs, (5, 40))
  ]
  for process in processes:
    output = process.communicate(timeout=300)[0]
    assert process.returncode == 0, output[-3000:]
  return runs
