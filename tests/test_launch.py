"""The Cloud TPU launcher's gcloud commands (dry run: no network), and the shell scripts it
runs on the workers, executed here against a stand-in trainer."""

import os
import shlex
import subprocess

import pytest

from bigflax import launch
from cli_utils import run


@pytest.mark.parametrize("accelerator_type,hosts", [
    ("v4-8", 1), ("v4-32", 4), ("v5p-8", 1), ("v5p-128", 16), ("v5litepod-4", 1),
    ("v5litepod-8", 1), ("v5litepod-16", 4), ("v5litepod-256", 64), ("v6e-16", 4),
])
def test_number_of_hosts(accelerator_type, hosts):
  assert launch.num_hosts(accelerator_type) == hosts


def test_unknown_accelerator_type_is_named():
  with pytest.raises(ValueError, match="--accelerator-type='v9-8'"):
    launch.num_hosts("v9-8")


def dry_run(capsys, *args) -> list[list[str]]:
  """The commands `launch --dry-run` prints, each as argv."""
  code = launch.main(["--tpu", "mytpu", "--zone", "us-west4-a", "--config",
                      "experiments/gpt_tiny.py", "--dry-run", *args])
  out, err = capsys.readouterr()
  assert code == 0, err
  return [shlex.split(line) for line in out.splitlines() if not line.startswith("#")]


def ssh_script(command: list[str]) -> str:
  return next(a for a in command if a.startswith("--command=")).split("=", 1)[1]


@pytest.mark.parametrize("accelerator_type,version", [
    ("v5litepod-8", "v2-alpha-tpuv5-lite"), ("v4-8", "tpu-ubuntu2204-base")])
def test_single_host_commands(capsys, accelerator_type, version):
  commands = dry_run(capsys, "--accelerator-type", accelerator_type, "--workdir",
                     "gs://bucket/run", "--create", "--project", "proj",
                     "--config.train.num_steps=100")
  create, scp, install, start, stream = commands
  assert create == ["gcloud", "compute", "tpus", "tpu-vm", "create", "mytpu",
                    f"--accelerator-type={accelerator_type}", f"--version={version}",
                    "--zone=us-west4-a", "--project=proj"]
  assert scp[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "scp", launch.tempfile.gettempdir()
                     + "/bigflax-src.tar.gz"]
  assert scp[6:] == ["mytpu:bigflax-src.tar.gz", "--worker=all", "--zone=us-west4-a",
                     "--project=proj"]
  assert install[4:7] == ["ssh", "mytpu", "--worker=all"]
  assert 'pip install --python ~/bigflax-venv/bin/python -e "$HOME/bigflax[tpu,gcs]"' in (
      ssh_script(install))
  assert start[4:7] == ["ssh", "mytpu", "--worker=all"]
  train = ("../bigflax-venv/bin/python -m bigflax train --config experiments/gpt_tiny.py "
           "--workdir gs://bucket/run --config.train.num_steps=100 >")
  assert train in ssh_script(start)  # one host: no jax.distributed
  assert stream[4:7] == ["ssh", "mytpu", "--worker=0"]


@pytest.mark.parametrize("accelerator_type", ["v5litepod-16", "v4-32"])
def test_multi_host_queued_spot_commands(capsys, accelerator_type):
  commands = dry_run(capsys, "--accelerator-type", accelerator_type, "--workdir",
                     "gs://bucket/run", "--create", "--queued", "--spot", "--delete",
                     "--runtime-version", "my-image")
  create, wait, scp, install, start, stream, delete = commands
  assert create == ["gcloud", "compute", "tpus", "queued-resources", "create", "mytpu",
                    "--node-id=mytpu", f"--accelerator-type={accelerator_type}",
                    "--runtime-version=my-image", "--spot", "--zone=us-west4-a"]
  assert wait == ["gcloud", "compute", "tpus", "queued-resources", "describe", "mytpu",
                  "--format=value(state.state)", "--zone=us-west4-a"]
  assert ("-m bigflax train --config experiments/gpt_tiny.py --workdir gs://bucket/run "
          "--distributed >") in ssh_script(start)
  assert "--worker=all" in start and "--worker=0" in stream
  assert delete == ["gcloud", "compute", "tpus", "queued-resources", "delete", "mytpu",
                    "--force", "--quiet", "--zone=us-west4-a"]


@pytest.mark.parametrize("args,message", [
    (["--accelerator-type", "v5litepod-16", "--workdir", "/data/run"], "use a gs://bucket"),
    (["--accelerator-type", "v4-8", "--workdir", "runs/x"], "relative one would sit"),
    (["--accelerator-type", "v4-8", "--workdir", "/data/run", "--delete"], "--delete deletes"),
    (["--accelerator-type", "v4-8", "--workdir", "gs://b/r", "--spot"], "add --create"),
    (["--accelerator-type", "v4-8", "--workdir", "gs://b/r", "--config.model.num_layer=2"],
     "Did you mean 'config.model.num_layers'?"),
])
def test_bad_launches_are_refused_before_any_command(capsys, args, message):
  code = launch.main(["--tpu", "t", "--zone", "z", "--config", "experiments/gpt_tiny.py",
                      *args])
  out, err = capsys.readouterr()
  assert code == 2 and message in err
  assert "bigflax launch: " not in out  # no step ran


def test_worker_scripts(tmp_path):
  """The start and stream scripts, run by bash in a fake home: training runs detached, the
  stream shows its log and exits with its status; the stop script sends SIGTERM."""
  home = tmp_path / "home"
  (home / "bigflax").mkdir(parents=True)
  venv = home / "bigflax-venv" / "bin"
  venv.mkdir(parents=True)
  (venv / "python").write_text('#!/bin/sh\necho "trainer got: $*"\nexit 3\n')
  (venv / "python").chmod(0o755)
  s = launch.Slice("t", "z", "v4-8")
  start, stream = launch.train_steps(s, ["--config", "experiments/gpt_tiny.py", "--workdir",
                                          "gs://b/run"])
  env = dict(os.environ, HOME=str(home))
  bash = lambda step: subprocess.run(["bash", "-c", ssh_script(step.argv)], cwd=tmp_path,
                                     env=env, capture_output=True, text=True, timeout=60)
  assert bash(start).returncode == 0
  streamed = bash(stream)
  assert streamed.returncode == 3
  assert ("trainer got: -m bigflax train --config experiments/gpt_tiny.py --workdir "
          "gs://b/run") in streamed.stdout

  (venv / "python").write_text('#!/bin/sh\ntrap "echo saved; exit 0" TERM\n'
                               'for i in $(seq 300); do sleep 0.1; done\n')  # 30 s at most
  assert bash(start).returncode == 0
  for _ in range(50):  # until the trainer has written its pid
    if (home / "bigflax-logs" / "gs_b_run.pid").exists():
      break
    subprocess.run(["sleep", "0.1"])
  subprocess.run(["sleep", "0.5"])  # and has set its trap
  assert bash(launch.stop_step(s, "gs://b/run")).returncode == 0
  streamed = bash(stream)
  assert streamed.returncode == 0 and "saved" in streamed.stdout


def test_cli_dispatches_launch(tmp_path):
  result = run("launch", "gs://b/r", "--tpu", "t", "--zone", "z", "--accelerator-type",
               "v5litepod-16", "--config", "experiments/gpt_tiny.py", "--dry-run",
               timeout=120)
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
  assert writers.read(str(tmp_path)) == {1: {"step": 1, "split": "train", "loss": 3.0},
                                         2: {"step": 2, "split": "train", "loss": 2.0}}
  writer.write(3, "train", {"loss": 1.0})
  writer.close()
  assert sorted(writers.read(str(tmp_path))) == [1, 2, 3]

  resumed = writers.MetricWriter(str(tmp_path))  # from a checkpoint of step 2
  resumed.remote = True
  resumed.truncate(2)
  resumed.write(3, "train", {"loss": 1.5})
  resumed.close()
  assert {s: r["loss"] for s, r in writers.read(str(tmp_path)).items()} == {1: 3.0, 2: 2.0,
                                                                            3: 1.5}
