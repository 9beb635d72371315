"""The Cloud TPU launcher's gcloud commands (dry run: no network), and the shell scripts it
runs on the workers, executed here against a stand-in trainer; whole launches through a fake
gcloud that runs the worker scripts in a fake home, with dropped streams and a real Ctrl-C."""

import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest

from bigflax import cli, launch
from helpers import fake_cloud, run


@pytest.mark.parametrize(
  "accelerator_type,hosts",
  [
    ("v4-8", 1),
    ("v4-32", 4),
    ("v5p-8", 1),
    ("v5p-128", 16),
    ("v5litepod-4", 1),
    ("v5litepod-8", 1),
    ("v5litepod-16", 4),
    ("v5litepod-256", 64),
    ("v6e-16", 4),
  ],
)
def test_number_of_hosts(accelerator_type, hosts):
  assert launch.num_hosts(accelerator_type) == hosts


def test_unknown_accelerator_type_is_named():
  with pytest.raises(ValueError, match="--accelerator-type='v9-8'"):
    launch.num_hosts("v9-8")


def dry_run(capsys, *args) -> list[list[str]]:
  """The commands `launch --dry-run` prints, each as argv."""
  code = cli.run_launcher(
    [
      "launch",
      "--tpu",
      "mytpu",
      "--zone",
      "us-west4-a",
      "--config",
      "experiments/gpt_tiny.py",
      "--dry-run",
      *args,
    ]
  )
  out, err = capsys.readouterr()
  assert code == 0, err
  return [shlex.split(line) for line in out.splitlines() if not line.startswith("#")]


def ssh_script(command: list[str]) -> str:
  return next(a for a in command if a.startswith("--command=")).split("=", 1)[1]


@pytest.mark.parametrize(
  "accelerator_type,version",
  [("v5litepod-8", "v2-alpha-tpuv5-lite"), ("v4-8", "tpu-ubuntu2204-base")],
)
def test_single_host_commands(capsys, accelerator_type, version):
  commands = dry_run(
    capsys,
    "--accelerator-type",
    accelerator_type,
    "--workdir",
    "gs://bucket/run",
    "--create",
    "--project",
    "proj",
    "--config.train.num_steps=100",
  )
  create, scp, install, start, stream = commands
  assert create == [
    "gcloud",
    "compute",
    "tpus",
    "tpu-vm",
    "create",
    "mytpu",
    f"--accelerator-type={accelerator_type}",
    f"--version={version}",
    "--zone=us-west4-a",
    "--project=proj",
  ]
  tarball = re.fullmatch(
    r"bigflax-launch-\d{8}-\d{6}-[0-9a-f]{4}\.tar\.gz", scp[6].removeprefix("mytpu:")
  )
  assert tarball, scp
  launch_dir = f"bigflax-launch/{tarball.group(0)[15:-7]}"  # this launch's own folder
  assert scp[:6] == [
    "gcloud",
    "compute",
    "tpus",
    "tpu-vm",
    "scp",
    f"{launch.tempfile.gettempdir()}/{tarball.group(0)}",
  ]
  assert scp[7:] == ["--worker=all", "--zone=us-west4-a", "--project=proj"]
  assert install[4:7] == ["ssh", "mytpu", "--worker=all"]
  assert (
    f'pip install --python $HOME/{launch_dir}/venv/bin/python -e "$HOME/{launch_dir}/src[tpu,gcs]"'
  ) in ssh_script(install)
  assert "rm " not in ssh_script(install)  # nothing on the workers is deleted
  assert start[4:7] == ["ssh", "mytpu", "--worker=all"]
  train = (
    "../venv/bin/python -m bigflax train --config experiments/gpt_tiny.py "
    "--workdir gs://bucket/run --config.train.num_steps=100 >"
  )
  assert train in ssh_script(start)  # one host: no jax.distributed
  assert f"cd ~/{launch_dir}/src" in ssh_script(start)
  assert stream[4:7] == ["ssh", "mytpu", "--worker=0"]


@pytest.mark.parametrize("accelerator_type", ["v5litepod-16", "v4-32"])
def test_multi_host_queued_spot_commands(capsys, accelerator_type):
  commands = dry_run(
    capsys,
    "--accelerator-type",
    accelerator_type,
    "--workdir",
    "gs://bucket/run",
    "--create",
    "--queued",
    "--spot",
    "--delete",
    "--runtime-version",
    "my-image",
  )
  create, wait, scp, install, start, stream, delete = commands
  assert create == [
    "gcloud",
    "compute",
    "tpus",
    "queued-resources",
    "create",
    "mytpu",
    "--node-id=mytpu",
    f"--accelerator-type={accelerator_type}",
    "--runtime-version=my-image",
    "--spot",
    "--zone=us-west4-a",
  ]
  assert wait == [
    "gcloud",
    "compute",
    "tpus",
    "queued-resources",
    "describe",
    "mytpu",
    "--format=value(state.state)",
    "--zone=us-west4-a",
  ]
  assert (
    "-m bigflax train --config experiments/gpt_tiny.py --workdir gs://bucket/run --distributed >"
  ) in ssh_script(start)
  assert "--worker=all" in start and "--worker=0" in stream
  assert delete == [
    "gcloud",
    "compute",
    "tpus",
    "queued-resources",
    "delete",
    "mytpu",
    "--force",
    "--quiet",
    "--zone=us-west4-a",
  ]


@pytest.mark.parametrize(
  "args,message",
  [
    (["--accelerator-type", "v5litepod-16", "--workdir", "/data/run"], "use a gs://bucket"),
    (["--accelerator-type", "v4-8", "--workdir", "runs/x"], "relative one would sit"),
    (["--accelerator-type", "v4-8", "--workdir", "/data/run", "--delete"], "--delete deletes"),
    (
      ["--accelerator-type", "v4-8", "--workdir", "/home/me/bigflax-launch/x/run"],
      "is inside ~/bigflax-launch, where each launch unpacks its own code",
    ),
    (["--accelerator-type", "v4-8", "--workdir", "gs://b/r", "--spot"], "add --create"),
    (
      ["--accelerator-type", "v4-8", "--workdir", "gs://b/r", "--config.model.num_layer=2"],
      "Did you mean 'config.model.num_layers'?",
    ),
  ],
)
def test_bad_launches_are_refused_before_any_command(capsys, args, message):
  code = cli.run_launcher(
    ["launch", "--tpu", "t", "--zone", "z", "--config", "experiments/gpt_tiny.py", *args]
  )
  out, err = capsys.readouterr()
  assert code == 2 and message in err
  assert "bigflax launch: " not in out  # no step ran


def test_worker_scripts(tmp_path):
  """The start and stream scripts, run by bash in a fake home: training runs detached, the
  stream shows its log until the exit file holds its status; the stop script sends SIGTERM."""
  home = tmp_path / "home"
  launch_dir = "bigflax-launch/20260101-000000-abcd"
  (home / launch_dir / "src").mkdir(parents=True)
  venv = home / launch_dir / "venv" / "bin"
  venv.mkdir(parents=True)
  (venv / "python").write_text('#!/bin/sh\necho "trainer got: $*"\nexit 3\n')
  (venv / "python").chmod(0o755)
  s = launch.Slice("t", "z", "v4-8")
  start, stream = launch.train_steps(
    s, ["--config", "experiments/gpt_tiny.py", "--workdir", "gs://b/run"], launch_dir
  )
  env = dict(os.environ, HOME=str(home))
  bash = lambda step: subprocess.run(
    ["bash", "-c", ssh_script(step.argv)],
    cwd=tmp_path,
    env=env,
    capture_output=True,
    text=True,
    timeout=60,
  )
  logs = home / launch_dir / "logs"
  assert bash(start).returncode == 0
  streamed = bash(stream)
  assert (logs / "gs_b_run.exit").read_text() == "3\n"
  assert (
    "trainer got: -m bigflax train --config experiments/gpt_tiny.py --workdir gs://b/run"
  ) in streamed.stdout

  (venv / "python").write_text(
    '#!/bin/sh\ntrap "echo saved; exit 0" TERM\nfor i in $(seq 300); do sleep 0.1; done\n'
  )  # 30 s at most
  assert bash(start).returncode == 0
  assert not (logs / "gs_b_run.exit").exists()  # the last run's status is gone
  for _ in range(50):  # until the trainer has written its pid
    if (logs / "gs_b_run.pid").exists():
      break
    time.sleep(0.1)
  time.sleep(0.5)  # and has set its trap
  assert bash(launch.stop_step(s, "gs://b/run", launch_dir)).returncode == 0
  streamed = bash(stream)
  assert "saved" in streamed.stdout and (logs / "gs_b_run.exit").read_text() == "0\n"


LAUNCH = [
  "--tpu",
  "t",
  "--zone",
  "z",
  "--accelerator-type",
  "v4-8",
  "--config",
  "experiments/gpt_tiny.py",
  "--workdir",
  "gs://b/run",
  "--delete",
]
SIX_STEPS = 'for i in 1 2 3 4 5 6; do echo "step $i"; sleep 0.5; done; exit 3\n'


def test_a_dropped_stream_reattaches_and_the_slice_is_deleted_after_training(
  tmp_path, monkeypatch, capfd
):
  """Two streams cut mid-run and worker 0 unreachable once, while the trainer goes on: the
  launcher re-attaches where the log stopped (each line shown once) and deletes the slice
  only after the exit file exists; the trainer's status 3 makes it fail."""
  for k, v in fake_cloud(tmp_path, SIX_STEPS, DROP_STREAMS=2, UNREACHABLE=1).items():
    monkeypatch.setenv(k, v)
  monkeypatch.setattr(launch, "RETRY_SECONDS", 0.2)
  assert cli.run_launcher(["launch", *LAUNCH]) == 2
  out, err = capfd.readouterr()
  assert re.findall(r"step \d", out) == [f"step {i}" for i in range(1, 7)]
  # Dropped, unreachable, attached again (from its offset), dropped, (still running,
  # attached: unless a loaded machine let the trainer finish first).
  assert err.count("cannot reach worker 0 (exit 1)") == 1
  assert err.count("the log stream ended (exit 255) but training is still running") <= 1
  assert "training exited with status 3" in err
  calls = (tmp_path / "gcloud.log").read_text().splitlines()
  assert calls[-1] == "delete t ended" and sum("delete" in c for c in calls) == 1
  src = next((tmp_path / "home" / "bigflax-launch").iterdir()) / "src"
  assert (src / "bigflax" / "launch.py").is_file()  # unpacked into the launch's own folder


def test_ctrl_c_leaves_training_and_the_slice_running_and_says_how_to_delete(tmp_path):
  """A real SIGINT to the launcher's process group (as Ctrl-C in a terminal) while worker 0
  trains: the launcher exits 130 naming what still runs and the exact delete command; the
  slice is not deleted and the detached trainer is still alive."""
  env = dict(os.environ, **fake_cloud(tmp_path, 'echo "training started"\nsleep 60\n'))
  launcher = subprocess.Popen(
    [
      sys.executable,
      "-c",
      "import sys; from bigflax import cli; sys.exit(cli.run_launcher(sys.argv[1:]))",
      "launch",
      *LAUNCH,
    ],
    cwd=launch.ROOT,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    start_new_session=True,
  )
  try:
    for line in launcher.stdout:  # until worker 0's log shows the trainer
      if line.startswith("training started"):
        break
    os.killpg(launcher.pid, signal.SIGINT)
    _, err = launcher.communicate(timeout=30)
  finally:
    launcher.kill()
  assert launcher.returncode == 130, err
  assert "interrupted; nothing was stopped or deleted" in err
  assert "training gs://b/run may still be running on t" in err
  assert "\n  gcloud compute tpus tpu-vm delete t --quiet --zone=z\n" in err + "\n"
  assert "kill -TERM" in err  # the stop command
  assert "delete" not in (tmp_path / "gcloud.log").read_text()
  pid_file = next((tmp_path / "home" / "bigflax-launch").glob("*/logs/gs_b_run.pid"))
  trainer = int(pid_file.read_text())
  os.kill(trainer, 0)  # still running (raises if not)
  os.kill(trainer, signal.SIGTERM)


def test_cli_dispatches_launch(tmp_path):
  result = run(
    "launch",
    "gs://b/r",
    "--tpu",
    "t",
    "--zone",
    "z",
    "--accelerator-type",
    "v5litepod-16",
    "--config",
    "experiments/gpt_tiny.py",
    "--dry-run",
    timeout=120,
  )
  assert result.returncode == 0, result.stderr
  assert "gcloud compute tpus tpu-vm ssh t --worker=0" in result.stdout


def test_metric_writer_without_appends(tmp_path):
  """As on gs://, where a file cannot be appended to: metrics.jsonl is rewritten whole, at
  most every REMOTE_FLUSH_SECONDS and at the end; a resume keeps the records it should."""
  from bigflax.train import writers

  writer = writers.MetricWriter(str(tmp_path))
  writer.remote = True
  writer.truncate(0)
  writer.write(1, "train", {"loss": 3.0})
  assert not (tmp_path / "metrics.jsonl").exists()
  writer.flushed -= writers.REMOTE_FLUSH_SECONDS + 1
  writer.write(2, "train", {"loss": 2.0})
  assert writers.read(str(tmp_path)) == {
    1: {"step": 1, "split": "train", "loss": 3.0},
    2: {"step": 2, "split": "train", "loss": 2.0},
  }
  writer.write(3, "train", {"loss": 1.0})
  writer.close()
  assert sorted(writers.read(str(tmp_path))) == [1, 2, 3]

  resumed = writers.MetricWriter(str(tmp_path))  # from a checkpoint of step 2
  resumed.remote = True
  resumed.truncate(2)
  resumed.write(3, "train", {"loss": 1.5})
  resumed.close()
  assert {s: r["loss"] for s, r in writers.read(str(tmp_path)).items()} == {1: 3.0, 2: 2.0, 3: 1.5}
