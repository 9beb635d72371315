"""The command line as a user meets it: mistakes get one clear line naming the fix."""

import json
import os
import subprocess
import sys

import pytest

from bigflax import cli, startup
from bigflax.startup import TUNABLE
from bigflax.train import writers
from conftest import REPO
from helpers import TINY, run


@pytest.mark.parametrize(
  "override,expected",
  [
    ("--config.train.bogus=1", "'bogus' is not a field of config.train"),
    ("--config.trian.num_steps=1", "Did you mean 'config.train'?"),
    ("--config.model.num_layer=1", "Did you mean 'config.model.num_layers'?"),
    ("--config.train.num_steps=abc", "--config.train.num_steps=abc"),
  ],
)
def test_bad_overrides(tmp_path, override, expected):
  result = run("train", tmp_path, "--config", "experiments/gpt_tiny.py", override)
  assert result.returncode == 2
  assert expected in result.stderr
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "config.json").exists()


def test_inconsistent_config_is_named(tmp_path):
  result = run("train", tmp_path, *TINY, "--config.data.seq_len=1000")
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert "data.seq_len=1000 exceeds model.max_len=64" in result.stderr


def test_missing_config_file(tmp_path):
  result = run("train", tmp_path, "--config", "experiments/nope.py")
  assert result.returncode == 2 and "experiments/nope.py" in result.stderr
  assert "Traceback" not in result.stderr


def test_sample_needs_a_run_directory(tmp_path):
  result = run("sample", tmp_path / "missing")
  assert result.returncode == 2 and "does not exist" in result.stderr
  result = run("sample", tmp_path)
  assert result.returncode == 2 and "No config.json" in result.stderr


@pytest.mark.slow
def test_train_then_eval_and_sample(tfds_dir, tmp_path):
  trained = run(
    "train",
    tmp_path,
    *TINY,
    f"--config.data.data_dir={tfds_dir}",
    "--config.train.num_steps=3",
    "--config.train.checkpoint_every=3",
    "--config.train.eval_every=3",
    "--config.train.eval_steps=2",
  )
  assert trained.returncode == 0, trained.stderr
  assert (tmp_path / "config.json").exists() and (tmp_path / "checkpoints" / "3").is_dir()
  assert json.loads((tmp_path / "run_info.json").read_text())["latest"]["mesh"]["data"] == 2

  evaluated = run("eval", tmp_path)
  assert evaluated.returncode == 0, evaluated.stderr
  report = json.loads(evaluated.stdout.strip().splitlines()[-1])
  logged = writers.read(str(tmp_path), "validation")[3]
  assert report["step"] == 3 and report["split"] == "validation"
  for name, value in report["metrics"].items():  # the very numbers training logged
    assert value == logged[name], name
  assert (tmp_path / "eval_validation_3.json").exists()

  sampled = run(
    "sample",
    tmp_path,
    "--prompt",
    "def f(",
    "--max_new_tokens",
    "10",
    "--num_samples",
    "2",
    "--temperature",
    "0",
  )
  assert sampled.returncode == 0, sampled.stderr
  assert sampled.stdout.count("--- sample ('def f(') ---") == 2

  too_long = run("sample", tmp_path, "--prompt", "x" * 60, "--max_new_tokens", "10")
  assert too_long.returncode == 2 and "Traceback" not in too_long.stderr
  assert "exceeds the model's context (model.max_len=64)" in too_long.stderr


@pytest.mark.slow
def test_resume_with_another_model_is_refused(tfds_dir, tmp_path):
  trained = run(
    "train", tmp_path, *TINY, f"--config.data.data_dir={tfds_dir}", "--config.train.num_steps=2"
  )
  assert trained.returncode == 0, trained.stderr
  saved = (tmp_path / "config.json").read_text()
  other = run(
    "train",
    tmp_path,
    *TINY,
    f"--config.data.data_dir={tfds_dir}",
    "--config.train.num_steps=4",
    "--config.model.num_layers=3",
  )
  assert other.returncode == 2 and "Traceback" not in other.stderr
  assert "model.num_layers: 2 -> 3" in other.stderr
  assert (tmp_path / "config.json").read_text() == saved  # the run directory is untouched
  assert (tmp_path / "checkpoints" / "2").is_dir()


def test_eval_writes_classification_metrics_and_confusion_matrix(tmp_path):
  trained = run(
    "train",
    tmp_path,
    "--config",
    "experiments/seed_classifier.py",
    "--config.train.num_steps=100",
    "--config.train.eval_every=0",
  )
  assert trained.returncode == 0, trained.stderr
  evaluated = run("eval", tmp_path)
  assert evaluated.returncode == 0, evaluated.stderr
  report = json.loads(evaluated.stdout.strip().splitlines()[-1])
  matrix = report["confusion_matrix"]["matrix"]
  assert sum(map(sum, matrix)) == 1000  # every validation example, once
  assert report["metrics"]["accuracy"] == pytest.approx((matrix[0][0] + matrix[1][1]) / 1000)
  png = (tmp_path / "eval_validation_100_confusion.png").read_bytes()
  assert png.startswith(b"\x89PNG")


def bigflax(*args, **env) -> subprocess.CompletedProcess:
  """`python -m bigflax ARGS` as typed, with no --workdir added."""
  return subprocess.run(
    [sys.executable, "-m", "bigflax", *args],
    cwd=REPO,
    env=dict(os.environ, **env),
    capture_output=True,
    text=True,
    timeout=60,
  )


def test_help_lists_the_commands():
  for flag in ("--help", "-h"):
    shown = bigflax(flag)
    assert shown.returncode == 0, shown.stderr
    for name, command in cli.COMMANDS.items():
      assert f"  {name}" in shown.stdout and command.summary in shown.stdout
  missing = bigflax()
  assert missing.returncode == 2 and "give a command" in missing.stderr
  assert all(name in missing.stderr for name in cli.COMMANDS)


def test_command_help_shows_its_own_flags_and_an_example():
  shown = bigflax("train", "--help")
  assert shown.returncode == 0, shown.stderr
  assert "--config*" in shown.stdout and "--workdir*" in shown.stdout
  assert f"Example:\n  {cli.COMMANDS['train'].example}" in shown.stdout
  for other in ("--port", "--grain_", "--logtostderr", "--tpu"):  # serve's, the libraries'
    assert other not in shown.stdout
  shown = bigflax("launch", "-h")  # the flags of the former argparse commands too
  assert shown.returncode == 0 and "--accelerator_type, --accelerator-type*" in shown.stdout
  shown = bigflax("--helpfull")  # every flag, the libraries' too
  assert shown.returncode == 0, shown.stderr
  assert "--grain_num_threads_fetching_records" in shown.stdout and "--port" in shown.stdout


@pytest.mark.parametrize(
  "args,expected",
  [
    (["trian"], "unknown command 'trian'. Did you mean train?"),
    (["eval", "--split", "test"], "eval needs --workdir; e.g.\n  python -m bigflax eval"),
    (["train", "--workdir", "w", "--config", "c.py", "--port", "1"], "train does not read --port."),
    (
      ["sweep", "--workdir", "w", "--config", "c.py", "--paralel", "2"],
      "Unknown command line flag 'paralel'. Did you mean --parallel?",
    ),
  ],
)
def test_command_line_mistakes_exit_2_with_a_suggestion(args, expected):
  result = bigflax(*args)
  assert result.returncode == 2 and expected in result.stderr, result.stderr
  assert "Traceback" not in result.stderr


def test_the_huge_page_tunable_is_set_where_the_user_set_none():
  assert startup.environment({"GLIBC_TUNABLES": "glibc.malloc.check=3"}) is None
  assert startup.environment({"BIGFLAX_NO_REEXEC": "1"}) is None
  if not startup.glibc_has_tunable():
    pytest.skip(f"{os.confstr('CS_GNU_LIBC_VERSION')} has no glibc.malloc.hugetlb")
  assert startup.environment({"A": "b"}) == {"A": "b", "GLIBC_TUNABLES": TUNABLE}


def test_the_command_reexecutes_itself_once_in_the_same_process(tmp_path):
  """A sitecustomize reports every interpreter start: `python -m bigflax` starts twice in one
  pid, the second time with the tunable; not at all again where the user set GLIBC_TUNABLES."""
  if not startup.glibc_has_tunable():
    pytest.skip(f"{os.confstr('CS_GNU_LIBC_VERSION')} has no glibc.malloc.hugetlb")
  (tmp_path / "sitecustomize.py").write_text(
    "import os, sys\n"
    "print('start', os.getpid(), os.environ.get('GLIBC_TUNABLES'), file=sys.stderr)\n"
  )
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "BIGFLAX_NO_REEXEC")}
  env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])

  def starts(**extra):
    result = subprocess.run(
      [sys.executable, "-m", "bigflax", "trian"],
      cwd=REPO,
      env=dict(env, **extra),
      capture_output=True,
      text=True,
      timeout=60,
    )
    assert result.returncode == 2 and "Did you mean train?" in result.stderr
    return [line.split()[1:] for line in result.stderr.splitlines() if line.startswith("start")]

  (pid, before), (same_pid, after) = starts()
  assert (before, after) == ("None", TUNABLE) and pid == same_pid
  [(_, theirs)] = starts(GLIBC_TUNABLES="glibc.malloc.check=3")
  assert theirs == "glibc.malloc.check=3"
  [(_, unset)] = starts(BIGFLAX_NO_REEXEC="1")
  assert unset == "None"
