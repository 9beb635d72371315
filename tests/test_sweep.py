"""Sweeps: trial expansion; the orchestration (results, re-runs, failures, Optuna on SQLite
with pruning) with a stand-in trainer; a real sweep of tiny GPTs end to end and a real trial
stopped by the pruner; trials launched on a TPU slice (dry run)."""

import csv
import os
import shlex
import signal
import sqlite3
import subprocess
import sys
import time

from etils import epath
import numpy as np
import pytest

from bigflax import cli
from bigflax.sweep import runner as sweep_runner
from bigflax.sweep import space as sweep_space
from bigflax.sweep import trials as sweep_trials
from bigflax.train import writers
from conftest import REPO
from helpers import TINY, fake_cloud


def sweep_main(args) -> int:
  """`python -m bigflax sweep ARGS`, in this process (so the trainer can be stubbed)."""
  return cli.run_launcher(["sweep", *args])


def test_product_zip_seeds():
  grid = sweep_space.product(**{"optim.lr": [1e-3, 3e-4], "model.num_layers": [2, 4]})
  assert grid == [
    {"optim.lr": 1e-3, "model.num_layers": 2},
    {"optim.lr": 1e-3, "model.num_layers": 4},
    {"optim.lr": 3e-4, "model.num_layers": 2},
    {"optim.lr": 3e-4, "model.num_layers": 4},
  ]
  width = sweep_space.zip_(**{"model.embed_dim": [64, 128], "model.mlp_dim": [256, 512]})
  assert width == [
    {"model.embed_dim": 64, "model.mlp_dim": 256},
    {"model.embed_dim": 128, "model.mlp_dim": 512},
  ]
  combined = sweep_space.product(width, sweep_space.seeds(3), **{"optim.lr": [1e-3]})
  assert len(combined) == 6
  assert combined[-1] == {"model.embed_dim": 128, "model.mlp_dim": 512, "seed": 2, "optim.lr": 1e-3}
  with pytest.raises(ValueError, match="one length; got lengths \\[2, 3\\]"):
    sweep_space.zip_(**{"optim.lr": [1, 2], "seed": [1, 2, 3]})
  with pytest.raises(ValueError, match="'seed' is set by two"):
    sweep_space.product(sweep_space.seeds(2), sweep_space.seeds(2))


def test_random_draws_are_seeded_and_follow_their_distributions():
  space = {
    "optim.lr": sweep_space.LogUniform(1e-4, 1e-2),
    "model.num_layers": sweep_space.IntUniform(1, 3),
    "tokenizer.kind": sweep_space.Choice(("byte", "sentencepiece")),
  }
  draws = sweep_space.random(2000, seed=1, **space)
  assert draws == sweep_space.random(2000, seed=1, **space)
  assert draws != sweep_space.random(2000, seed=2, **space)
  log_lr = np.log10([d["optim.lr"] for d in draws])
  assert log_lr.min() >= -4 and log_lr.max() <= -2
  # Log-uniform: each decade holds half of the draws.
  assert abs(np.mean(log_lr < -3) - 0.5) < 0.05
  assert {d["model.num_layers"] for d in draws} == {1, 2, 3}
  assert {d["tokenizer.kind"] for d in draws} == {"byte", "sentencepiece"}


def test_trial_names():
  assert sweep_trials.trial_name({"optim.lr": 0.001, "model.embed_dim": 64}) == (
    "lr=0.001,embed_dim=64"
  )
  assert sweep_trials.trial_name({"a.rate": 1, "b.rate": 2}) == "a.rate=1,b.rate=2"
  assert sweep_trials.trial_name({"optim.lr": 0.00012345678}) == "lr=0.0001235"
  assert sweep_space.format_value(0.00012345678) == "0.00012345678"


EXPERIMENT = """
from bigflax import sweep  # the search-space helpers, importing nothing heavy
from experiments import gpt_tiny

get_config = gpt_tiny.get_config


def get_sweep():
  # The last trial fails: its sequences are longer than the model's context.
  return (sweep.product(**{"optim.lr": [1e-3, 1e-2], "model.num_layers": [1, 2]})
          + [{"optim.lr": 1e-3, "model.num_layers": 1, "data.seq_len": 1000}])


def get_search_space():
  return {"optim.lr": sweep.LogUniform(1e-3, 1e-2)}
"""


@pytest.fixture
def experiment(tmp_path, monkeypatch):
  monkeypatch.chdir(REPO)  # trials run `python -m bigflax` from the checkout
  path = tmp_path / "tiny_sweep.py"
  path.write_text(EXPERIMENT)
  return str(path)


def tiny(tfds_dir, steps=4):
  return [
    *TINY[2:],
    f"--config.data.data_dir={tfds_dir}",
    f"--config.train.num_steps={steps}",
    "--config.train.eval_every=2",
    "--config.train.eval_steps=1",
    f"--config.train.checkpoint_every={steps}",
  ]


def read_csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


# A stand-in for `bigflax train` (no JAX, a fraction of a second): it logs validation
# losses (log10(lr) + 2.5)^2 + 1/step for steps 1..5, fails for lr > 0.05, and logs a
# non-finite loss (null, as bigflax's metric writer records NaN) for lr = 0.02.
FAKE_TRAINER = """
import json, math, pathlib, sys, time
args = sys.argv[1:]
workdir = pathlib.Path(args[args.index("--workdir") + 1])
lr = float(next(a.split("=")[1] for a in args if a.startswith("--config.optim.lr=")))
if lr > 0.05:
  sys.exit("diverged")
with open(workdir / "metrics.jsonl", "a") as f:
  for step in range(1, 6):
    loss = None if lr == 0.02 else (math.log10(lr) + 2.5) ** 2 + 1 / step
    f.write(json.dumps({"step": step, "split": "validation", "loss": loss}) + "\\n")
    f.flush()
    time.sleep(0.2)
"""


def fake_loss(lr, step=5):
  return (np.log10(lr) + 2.5) ** 2 + 1 / step


class FakeRunner(sweep_trials.LocalRunner):
  def start(self, train_args, workdir, log):
    return subprocess.Popen(
      [sys.executable, "-c", FAKE_TRAINER, *train_args], stdout=log, stderr=subprocess.STDOUT
    )


@pytest.fixture
def fake_training(monkeypatch):
  monkeypatch.setattr(sweep_trials, "LocalRunner", FakeRunner)
  monkeypatch.setattr(sweep_trials, "POLL_SECONDS", 0.05)


def test_grid_sweep_orchestration(experiment, fake_training, tmp_path, capsys):
  fake = tmp_path / "fake.py"
  fake.write_text(EXPERIMENT.replace('+ [{"optim.lr": 1e-3', '+ [{"optim.lr": 1e-1'))
  directory = tmp_path / "sweep"
  args = ["--config", str(fake), "--workdir", str(directory), "--parallel", "3"]
  assert sweep_main(args) == 0
  out = capsys.readouterr().out
  rows = read_csv(directory / "results.csv")
  assert [r["trial"] for r in rows] == [
    "lr=0.001,num_layers=1",
    "lr=0.001,num_layers=2",
    "lr=0.01,num_layers=1",
    "lr=0.01,num_layers=2",
    "lr=0.1,num_layers=1,seq_len=1000",
  ]
  assert [r["status"] for r in rows] == ["done"] * 4 + ["failed"]
  for r in rows[:4]:
    assert float(r["validation/loss"]) == pytest.approx(fake_loss(float(r["optim.lr"])))
  failed = directory / "lr=0.1,num_layers=1,seq_len=1000" / "train.log"
  assert f"FAILED (exit 1), log: {failed}" in out and "diverged" in failed.read_text()
  assert (directory / "results.md").read_text().strip() in out

  assert sweep_main(args) == 0  # finished trials are skipped, the failed one retried
  out = capsys.readouterr().out
  assert out.count("finished earlier, skipped") == 4 and out.count("FAILED") == 1


# A trainer preempted once: the first run saves its "checkpoint" and exits 75.
PREEMPTED_ONCE = """
import pathlib, sys
args = sys.argv[1:]
workdir = pathlib.Path(args[args.index("--workdir") + 1])
if not (workdir / "started").exists():
  (workdir / "started").write_text("")
  sys.exit(75)
(workdir / "metrics.jsonl").write_text('{"step": 5, "split": "validation", "loss": 1.0}\\n')
"""


class PreemptedOnceRunner(sweep_trials.LocalRunner):
  def start(self, train_args, workdir, log):
    return subprocess.Popen(
      [sys.executable, "-c", PREEMPTED_ONCE, *train_args], stdout=log, stderr=subprocess.STDOUT
    )


def test_a_preempted_trial_is_resumed_by_the_next_sweep(experiment, tmp_path, capsys, monkeypatch):
  monkeypatch.setattr(sweep_trials, "LocalRunner", PreemptedOnceRunner)
  monkeypatch.setattr(sweep_trials, "POLL_SECONDS", 0.05)
  one = tmp_path / "one.py"
  one.write_text(EXPERIMENT.replace("def get_sweep():", "def get_sweep():\n  return [{}]"))
  args = ["--config", str(one), "--workdir", str(tmp_path / "sweep")]
  assert sweep_main(args) == 75
  out = capsys.readouterr().out
  assert "default: preempted" in out and "run the same sweep again" in out
  assert [r["status"] for r in read_csv(tmp_path / "sweep" / "results.csv")] == ["preempted"]
  assert sweep_main(args) == 0
  assert [r["status"] for r in read_csv(tmp_path / "sweep" / "results.csv")] == ["done"]


def test_optuna_prunes_and_resumes(experiment, fake_training, tmp_path, capsys):
  optuna = pytest.importorskip("optuna")
  space = tmp_path / "space.py"
  space.write_text(EXPERIMENT.replace("LogUniform(1e-3, 1e-2)", "LogUniform(1e-5, 1e-2)"))
  directory = tmp_path / "study"
  args = [
    "--config",
    str(space),
    "--workdir",
    str(directory),
    "--optuna",
    "8",
    "--seed",
    "0",
    "--prune_after",
    "2",
  ]
  assert sweep_main(args) == 0
  study = optuna.load_study(study_name="space", storage=f"sqlite:///{directory}/study.db")
  states = [t.state.name for t in study.trials]
  assert len(states) == 8 and set(states) <= {"COMPLETE", "PRUNED"} and "PRUNED" in states
  for t in study.trials:
    assert t.user_attrs["name"] == f"space-trial-{t.number:03d}"  # study and trial
    logged = writers.read(str(directory / t.user_attrs["name"]), "validation")
    if t.state.name == "COMPLETE":
      assert t.value == pytest.approx(fake_loss(t.params["optim.lr"])) and len(logged) == 5
    else:  # stopped once its loss at some step was above the median of earlier trials'
      assert len(logged) < 5
      step = max(t.intermediate_values)
      earlier = [
        u.intermediate_values[step]
        for u in study.trials[: t.number]
        if step in u.intermediate_values
      ]
      assert t.intermediate_values[step] > np.median(earlier)
  rows = read_csv(directory / "results.csv")
  assert sorted(r["status"] for r in rows) == sorted(
    {"COMPLETE": "done", "PRUNED": "pruned"}[s] for s in states
  )
  assert sweep_main(args) == 0  # the study is complete: no new trial
  assert (
    len(optuna.load_study(study_name="space", storage=f"sqlite:///{directory}/study.db").trials)
    == 8
  )


def test_a_non_finite_result_is_ranked_last_and_named(experiment, fake_training, tmp_path, capsys):
  space = tmp_path / "nan.py"
  space.write_text(
    EXPERIMENT.replace(
      "def get_sweep():",
      "def get_sweep():\n  return sweep.product(**{'optim.lr': [0.02, 1e-3, 3e-3]})",
    )
  )
  for mode, order in [
    ("min", ["lr=0.003", "lr=0.001", "lr=0.02"]),
    ("max", ["lr=0.001", "lr=0.003", "lr=0.02"]),
  ]:
    directory = tmp_path / mode
    assert (
      sweep_main(
        ["--config", str(space), "--workdir", str(directory), "--mode", mode, "--parallel", "3"]
      )
      == 0
    )
    out = capsys.readouterr().out
    assert [r["trial"] for r in read_csv(directory / "results.csv")] == order
    table = (directory / "results.md").read_text().splitlines()
    assert table[-1].startswith("| lr=0.02 | 0.02 | done | nan (not finite) |")
    assert "1 trial(s) ended with a non-finite validation/loss, ranked last: ['lr=0.02']" in out


def optuna_args(config, directory, *more):
  return [
    "--config",
    str(config),
    "--workdir",
    str(directory),
    "--optuna",
    "1",
    "--seed",
    "0",
    *more,
  ]


def test_a_new_study_in_the_same_directory_gets_its_own_trial_directories(
  experiment, fake_training, tmp_path
):
  """Trial 0 of study b never resumes study a's trial 0 (other hyperparameters)."""
  optuna = pytest.importorskip("optuna")
  directory = tmp_path / "sweeps"
  for name in ("a", "b"):
    assert sweep_main(optuna_args(experiment, directory, "--study_name", name)) == 0
  storage = f"sqlite:///{directory}/study.db"
  for name in ("a", "b"):
    [trial] = optuna.load_study(study_name=name, storage=storage).trials
    assert trial.user_attrs["name"] == f"{name}-trial-000"
    logged = writers.read(str(directory / f"{name}-trial-000"), "validation")
    assert list(logged) == [1, 2, 3, 4, 5]  # trained once, from scratch
    assert logged[5]["loss"] == pytest.approx(fake_loss(trial.params["optim.lr"]))


# A sweep whose trials never end (until the whole sweep is killed). It never reads metrics
# or trains, so JAX and the metric writer are left out: the process starts in a second.
HANGING_SWEEP = """
import subprocess, sys, types
sys.modules["bigflax.train"] = types.SimpleNamespace(loop=None, writers=None)
from bigflax import cli
from bigflax.sweep import trials as sweep_trials
class Hanging(sweep_trials.LocalRunner):
  def start(self, train_args, workdir, log):
    return subprocess.Popen(["sleep", "120"])
sweep_trials.LocalRunner = Hanging
sys.exit(cli.run_launcher(["sweep", *sys.argv[1:]]))
"""


def test_a_killed_sweeps_running_trial_is_failed_by_heartbeat_and_retried(
  experiment, fake_training, tmp_path, monkeypatch, capsys
):
  """SIGKILL to a sweep (and its trainer) mid-trial: its trial stays RUNNING in study.db; the
  next sweep sees its heartbeat is stale, fails it, and retries it in the same directory
  (same hyperparameters, so it resumes), and the study ends complete."""
  optuna = pytest.importorskip("optuna")
  directory = tmp_path / "study"
  killed = subprocess.Popen(
    [sys.executable, "-c", HANGING_SWEEP, *optuna_args(experiment, directory)],
    start_new_session=True,
    stdout=subprocess.DEVNULL,
  )
  try:
    for _ in range(600):  # until its first trial trains and has beaten once
      time.sleep(0.1)
      if (directory / "tiny_sweep-trial-000" / "train.log").exists():
        with sqlite3.connect(directory / "study.db") as db:
          if db.execute("SELECT COUNT(*) FROM trial_heartbeats").fetchone()[0]:
            break
  finally:
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
  study = optuna.load_study(study_name="tiny_sweep", storage=f"sqlite:///{directory}/study.db")
  [stale] = study.trials
  assert stale.state.name == "RUNNING"
  monkeypatch.setattr(sweep_runner, "HEARTBEAT_SECONDS", 1)
  monkeypatch.setattr(sweep_runner, "STALE_SECONDS", 1)
  time.sleep(2)
  assert sweep_main(optuna_args(experiment, directory)) == 0
  assert (
    "tiny_sweep-trial-000 was RUNNING with no heartbeat for over 1 s (its sweep was "
    "killed): marked failed, tried again, resuming from its checkpoint"
  ) in capsys.readouterr().out
  states = [(t.state.name, t.user_attrs.get("name")) for t in study.trials]
  assert states[0][0] == "FAIL"
  retry = next(t for t in study.trials if t.system_attrs.get("failed_trial") == 0)
  assert retry.state.name == "COMPLETE" and retry.user_attrs["name"] == "tiny_sweep-trial-000"
  assert retry.params == stale.params
  assert len(states) == 2  # the study's one trial is done: no other was started
  rows = read_csv(directory / "results.csv")  # one row per trial directory
  assert [(r["trial"], r["status"]) for r in rows] == [("tiny_sweep-trial-000", "done")]


@pytest.mark.slow
def test_a_locked_study_database_is_waited_for(
  experiment, fake_training, tmp_path, monkeypatch, capsys
):
  """Another writer holds study.db longer than sqlite's 5 s default: the sweep waits for it;
  with a wait shorter than the lock it stops with a message, not a traceback."""
  pytest.importorskip("optuna")
  directory = tmp_path / "study"
  directory.mkdir()
  holder = subprocess.Popen(
    [
      sys.executable,
      "-c",
      "import sqlite3, sys, time\n"
      "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
      "db.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(6)",
      str(directory / "study.db"),
    ],
    stdout=subprocess.PIPE,
    text=True,
  )
  assert holder.stdout.readline() == "locked\n"
  started = time.monotonic()
  assert sweep_main(optuna_args(experiment, directory)) == 0
  assert time.monotonic() - started > 5  # it did wait for the lock
  holder.wait()

  monkeypatch.setattr(sweep_runner, "SQLITE_TIMEOUT_SECONDS", 0.5)
  holder = subprocess.Popen(
    [
      sys.executable,
      "-c",
      "import sqlite3, sys, time\n"
      "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
      "db.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(2)",
      str(directory / "study.db"),
    ],
    stdout=subprocess.PIPE,
    text=True,
  )
  assert holder.stdout.readline() == "locked\n"
  assert sweep_main(optuna_args(experiment, directory, "--optuna", "2")) == 2
  err = capsys.readouterr().err
  assert f"the study's storage sqlite:///{directory}/study.db failed: database is locked" in err
  assert "run the same sweep again" in err
  holder.wait()


@pytest.mark.slow
def test_sweep_end_to_end(experiment, tfds_dir, tmp_path, capsys):
  directory = tmp_path / "sweep"
  args = ["--config", experiment, "--workdir", str(directory), "--parallel", "2", *tiny(tfds_dir)]
  assert sweep_main(args) == 0
  out = capsys.readouterr().out
  failed = "lr=0.001,num_layers=1,seq_len=1000"
  assert f"{failed}: FAILED (exit 2), log: {directory / failed / 'train.log'}" in out
  assert "data.seq_len=1000 exceeds model.max_len" in (directory / failed / "train.log").read_text()

  rows = read_csv(directory / "results.csv")
  assert [r["status"] for r in rows] == ["done"] * 4 + ["failed"]
  losses = [float(r["validation/loss"]) for r in rows[:4]]
  assert losses == sorted(losses)
  for r in rows[:4]:  # the numbers each trial's own training logged
    logged = writers.read(str(directory / r["trial"]), "validation")
    assert float(r["validation/loss"]) == logged[4]["loss"] and r["step"] == "4"
    assert r["trial"] == f"lr={float(r['optim.lr']):g},num_layers={r['model.num_layers']}"
  table = (directory / "results.md").read_text()
  assert table.splitlines()[0].startswith(
    "| trial | optim.lr | model.num_layers | data.seq_len | status | validation/loss |"
  )
  assert table.strip() in out
  assert (directory / "results.png").read_bytes()[:4] == b"\x89PNG"

  # Again: the finished trials are skipped, untouched; the failed one is tried again.
  metrics_file = directory / rows[0]["trial"] / "metrics.jsonl"
  before = metrics_file.stat().st_mtime_ns
  assert sweep_main(args) == 0
  out = capsys.readouterr().out
  assert out.count("finished earlier, skipped") == 4 and out.count("FAILED") == 1
  assert metrics_file.stat().st_mtime_ns == before
  assert read_csv(directory / "results.csv")[:4] == rows[:4]


@pytest.mark.slow
def test_a_pruned_trial_is_stopped(tfds_dir, tmp_path, monkeypatch):
  monkeypatch.chdir(REPO)
  workdir = epath.Path(tmp_path / "trial")
  train_args = [
    "--config",
    "experiments/gpt_tiny.py",
    "--workdir",
    str(workdir),
    *tiny(tfds_dir, steps=3000),
  ]
  reported = []
  prune = lambda step, value: reported.append((step, value)) or True
  record = sweep_trials.run_trial(
    sweep_trials.LocalRunner(), train_args, workdir, "validation/loss", prune
  )
  assert record["status"] == "pruned" and record["returncode"] == 75  # saved, then stopped
  assert reported[0][0] == 2
  assert reported[0][1] == writers.read(str(workdir), "validation")[2]["loss"]
  assert max(writers.read(str(workdir), "train")) < 3000


def test_sweep_on_a_tpu_slice_dry_run(capsys, monkeypatch):
  monkeypatch.chdir(REPO)  # the experiment must be in the checkout copied to the workers
  code = sweep_main(
    [
      "--config",
      "experiments/gpt_tiny_sweep.py",
      "--workdir",
      "gs://bucket/sweep",
      "--launcher",
      "tpu",
      "--tpu",
      "t",
      "--zone",
      "z",
      "--accelerator-type",
      "v5litepod-16",
      "--create",
      "--delete",
      "--dry-run",
      "--config.train.num_steps=10",
    ]
  )
  out, err = capsys.readouterr()
  assert code == 0, err
  commands = [shlex.split(line) for line in out.splitlines() if line.startswith("gcloud")]
  assert sum("create" in c for c in commands) == 1 and sum("scp" in c for c in commands) == 1
  starts = [c[-2] for c in commands if "--worker=all" in c and "bigflax train" in c[-2]]
  assert len(starts) == 10
  for trial in ["embed_dim=64,mlp_dim=256,lr=0.0003", "embed_dim=128,mlp_dim=512,lr=0.03"]:
    assert any(
      f"--workdir gs://bucket/sweep/{trial} --config.train.num_steps=10" in s
      and "--distributed" in s
      for s in starts
    )
  assert commands[-1][:5] == ["gcloud", "compute", "tpus", "tpu-vm", "delete"]


def test_bad_sweep_fields_are_named(experiment, tmp_path, capsys):
  bad = tmp_path / "bad.py"
  bad.write_text(EXPERIMENT.replace('"model.num_layers": [1, 2]', '"model.num_layer": [1, 2]'))
  assert sweep_main(["--config", str(bad), "--workdir", str(tmp_path / "s")]) == 2
  assert "Did you mean 'config.model.num_layers'?" in capsys.readouterr().err
  assert not (tmp_path / "s").exists()


@pytest.mark.slow
def test_a_tpu_trial_outlives_a_dropped_stream(tmp_path, monkeypatch, capsys):
  """A sweep on a (fake) TPU slice: the trial's log stream is cut mid-run; the sweep
  re-attaches, records the trainer's own status and log, and deletes the slice at the end."""
  from bigflax import launch

  trainer = 'echo "trainer: $*"; for i in 1 2 3 4; do echo "step $i"; sleep 0.5; done\n'
  for k, v in fake_cloud(tmp_path, trainer, DROP_STREAMS=1).items():
    monkeypatch.setenv(k, v)
  monkeypatch.setattr(launch, "RETRY_SECONDS", 0.2)
  monkeypatch.chdir(REPO)
  checkout = tmp_path / "checkout"  # the experiment must be in the checkout sent to the slice
  checkout.mkdir()
  one = checkout / "one.py"
  one.write_text(EXPERIMENT.replace("def get_sweep():", "def get_sweep():\n  return [{}]"))
  subprocess.run(["git", "init", "-q", str(checkout)], check=True)
  monkeypatch.setattr(launch, "ROOT", checkout)
  assert (
    sweep_main(
      [
        "--config",
        str(one),
        "--workdir",
        str(tmp_path / "sweep"),
        "--launcher",
        "tpu",
        "--tpu",
        "t",
        "--zone",
        "z",
        "--accelerator-type",
        "v4-8",
        "--delete",
      ]
    )
    == 0
  )
  assert "training is still running: re-attaching" in capsys.readouterr().err
  log = (tmp_path / "sweep" / "default" / "train.log").read_text()
  assert [line for line in log.splitlines() if line.startswith("step")] == [
    f"step {i}" for i in range(1, 5)
  ]
  assert [r["status"] for r in read_csv(tmp_path / "sweep" / "results.csv")] == ["done"]
  assert (tmp_path / "gcloud.log").read_text().splitlines()[-1] == "delete t ended"
