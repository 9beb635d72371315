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


@pytest.fixture(scope="session")
def tiny_gpt_run(tfds_dir, tmp_path_factory):
  """A tiny byte-level GPT trained for 30 steps through the CLI (export and serve tests)."""
  from cli_utils import TINY, run  # pylint: disable=import-outside-toplevel
  workdir = tmp_path_factory.mktemp("tiny_gpt")
  result = run("train", workdir, *TINY, f"--config.data.data_dir={tfds_dir}",
               "--config.train.num_steps=30", "--config.train.checkpoint_every=30",
               "--config.train.eval_every=30", "--config.train.eval_steps=2")
  assert result.returncode == 0, result.stderr
  return workdir


@pytest.fixture(scope="session")
def tiny_classifier_runs(tmp_path_factory):
  """Two runs of the seed classifier (MLP, 2 features), after 5 and after 40 steps."""
  from cli_utils import start  # pylint: disable=import-outside-toplevel
  runs = [tmp_path_factory.mktemp(f"classifier_{steps}") for steps in (5, 40)]
  processes = [start("train", workdir, "--config", "experiments/seed_classifier.py",
                     f"--config.train.num_steps={steps}", f"--config.train.eval_every={steps}",
                     f"--config.train.checkpoint_every={steps}", "--config.optim.lr=0.005")
               for workdir, steps in zip(runs, (5, 40))]
  for process in processes:
    output = process.communicate(timeout=300)[0]
    assert process.returncode == 0, output[-3000:]
  return runs
