"""Train on a Cloud TPU slice with one command, through `gcloud`:

  python -m bigflax launch --tpu NAME --zone ZONE --accelerator-type v5litepod-16 \\
      --config experiments/X.py --workdir gs://BUCKET/run [--create] [--queued] [--spot] \\
      [--delete] [--dry-run] [--project P] [--runtime-version V] [--config.a=b ...]

Steps, one gcloud command each (--dry-run prints them; otherwise they run in order and the
first failure stops the launch, naming the command and what is left running):
  1. --create: create the TPU VM, or with --queued a queued resource and wait until it is
     ACTIVE; --spot asks for Spot capacity.
  2. pack this checkout (git ls-files: committed and uncommitted files), copy it to every
     worker, unpack it into a new folder of this launch's own, ~/bigflax-launch/<launch id>/
     (nothing else on the workers is touched), and install it there into a venv with this
     machine's Python version (uv).
  3. start the same train command on every worker, in the background so that a dropped ssh
     connection does not stop training; `--distributed` on multi-host slices, where
     `jax.distributed.initialize()` reads the topology from the TPU metadata.
  4. stream worker 0's log until training ends (its exit-status file exists); a dropped
     connection re-attaches where the log stopped; exit with the trainer's status.
  5. --delete: delete the VM (or the queued resource), only once training has ended.
Ctrl-C (or a worker that stays unreachable) stops the launcher only: it prints what is still
running and the commands that stop training and delete the slice.
"""

import codecs
from collections.abc import Callable
import dataclasses
import functools
import pathlib
import re
import secrets
import shlex
import subprocess
import sys
import tarfile
import tempfile
import time
from typing import TextIO

from bigflax import configs

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Default software image per TPU generation (Cloud TPU docs, "TPU software versions").
RUNTIME_VERSIONS = {
  "v4": "tpu-ubuntu2204-base",
  "v5litepod": "v2-alpha-tpuv5-lite",
  "v5p": "v2-alpha-tpuv5",
  "v6e": "v2-alpha-tpuv6e",
}
# On the workers, relative to the home directory: one folder per launch, never reused, so a
# launch replaces nothing (LAUNCHES/<id>/src, venv, logs).
LAUNCHES = "bigflax-launch"
# Following worker 0's log: a dead connection is noticed within ~2 min (ssh keepalives);
# then worker 0 is asked every RETRY_SECONDS whether training has ended, for GIVE_UP_SECONDS.
SSH_KEEPALIVE = ["--ssh-flag=-oServerAliveInterval=30", "--ssh-flag=-oServerAliveCountMax=4"]
RETRY_SECONDS = 15
GIVE_UP_SECONDS = 3600
# pip extras installed on the workers: libtpu, and gs:// access for epath/tfds/tensorboard.
EXTRAS = "tpu,gcs"


def num_hosts(accelerator_type: str) -> int:
  """Worker VMs of a slice. v4/v5p-N count TensorCores (2 per chip, 4 chips per VM);
  v5litepod/v6e-N count chips (up to 8 on one VM, 4 per VM on multi-host slices)."""
  match = re.fullmatch(r"(v\d+[a-z]*)-(\d+)", accelerator_type)
  generation, n = (match.group(1), int(match.group(2))) if match else (None, 0)
  if generation in ("v2", "v3", "v4", "v5p") and n >= 8:
    return n // 8
  if generation in ("v5litepod", "v6e") and n >= 1:
    return 1 if n <= 8 else n // 4
  raise ValueError(
    f"--accelerator-type={accelerator_type!r}: expected e.g. v4-8, v4-32, "
    f"v5p-8, v5litepod-8, v5litepod-16 or v6e-16."
  )


@dataclasses.dataclass(frozen=True)
class Slice:
  name: str
  zone: str
  accelerator_type: str
  project: str | None = None
  runtime_version: str | None = None
  spot: bool = False
  queued: bool = False

  @property
  def hosts(self) -> int:
    return num_hosts(self.accelerator_type)

  def gcloud(self, *args) -> list[str]:
    return [
      "gcloud",
      "compute",
      "tpus",
      *args,
      f"--zone={self.zone}",
      *([f"--project={self.project}"] if self.project else []),
    ]


@dataclasses.dataclass
class Step:
  what: str
  argv: list[str] | None = None  # a command; or `action`, done in this process
  poll_until: str | None = None  # repeat argv until it prints this
  action: Callable[[], object] | None = None  # with argv too, argv is what a dry run prints


class StepFailed(Exception):
  pass


class StillRunning(Exception):
  """The launcher stops, but training may go on: the slice is left alone."""


def new_launch_dir() -> str:
  """The workers' folder for this launch, relative to their home: bigflax-launch/<time>-<hex>."""
  return f"{LAUNCHES}/{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def create_steps(s: Slice) -> list[Step]:
  version = s.runtime_version or RUNTIME_VERSIONS.get(s.accelerator_type.split("-")[0])
  if version is None:
    raise ValueError(
      f"No default software version for {s.accelerator_type}: give "
      f"--runtime-version (see the Cloud TPU docs' 'TPU software versions')."
    )
  spot = ["--spot"] if s.spot else []
  if not s.queued:
    return [
      Step(
        f"create the TPU VM {s.name} ({s.accelerator_type}, {s.hosts} host(s))",
        s.gcloud(
          "tpu-vm",
          "create",
          s.name,
          f"--accelerator-type={s.accelerator_type}",
          f"--version={version}",
          *spot,
        ),
      )
    ]
  return [
    Step(
      f"request the queued resource {s.name} ({s.accelerator_type}, {s.hosts} host(s))",
      s.gcloud(
        "queued-resources",
        "create",
        s.name,
        f"--node-id={s.name}",
        f"--accelerator-type={s.accelerator_type}",
        f"--runtime-version={version}",
        *spot,
      ),
    ),
    Step(
      "wait until the queued resource is ACTIVE",
      s.gcloud("queued-resources", "describe", s.name, "--format=value(state.state)"),
      poll_until="ACTIVE",
    ),
  ]


def ssh(s: Slice, command: str, worker: str = "all", flags=()) -> list[str]:
  return s.gcloud("tpu-vm", "ssh", s.name, f"--worker={worker}", *flags, f"--command={command}")


def install_steps(s: Slice, python_version: str, launch_dir: str) -> list[Step]:
  """Copies this checkout to every worker, into launch_dir (a new folder), and installs it
  into a venv there."""
  tarball_name = f"{launch_dir.replace('/', '-')}.tar.gz"  # in the home dir until unpacked
  tarball = pathlib.Path(tempfile.gettempdir()) / tarball_name
  here = f"$HOME/{launch_dir}"
  script = " && ".join(
    [
      "set -e",
      'export PATH="$HOME/.local/bin:$PATH"',
      "(command -v uv > /dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh)",
      f"mkdir -p ~/{LAUNCHES}",
      f"mkdir {here} {here}/src",  # fails if it exists: never reused
      f"mv ~/{tarball_name} {here}/src.tar.gz",
      f"tar xzf {here}/src.tar.gz -C {here}/src",
      f"uv venv --python {python_version} {here}/venv",
      f'uv pip install --python {here}/venv/bin/python -e "{here}/src[{EXTRAS}]"',
    ]
  )
  return [
    Step(f"pack {ROOT} (git ls-files) into {tarball}", action=lambda: pack(ROOT, tarball)),
    Step(
      f"copy it to the {s.hosts} worker(s)",
      s.gcloud("tpu-vm", "scp", str(tarball), f"{s.name}:{tarball_name}", "--worker=all"),
    ),
    Step(
      f"install it on every worker into ~/{launch_dir} (Python {python_version} venv)",
      ssh(s, script),
    ),
  ]


def pack(root: pathlib.Path, out: pathlib.Path):
  """The checkout's files (tracked, and untracked but not ignored) as a .tar.gz."""
  listed = subprocess.run(
    ["git", "-C", str(root), "ls-files", "-co", "--exclude-standard"],
    capture_output=True,
    text=True,
  )
  if listed.returncode != 0:
    raise StepFailed(
      f"{root} is not a git checkout (git ls-files: {listed.stderr.strip()}); "
      f"launch copies the checkout it runs from to the workers."
    )
  with tarfile.open(out, "w:gz") as tar:
    for name in listed.stdout.splitlines():
      if (root / name).is_file():  # deleted but still tracked files are skipped
        tar.add(root / name, arcname=name)


def _log(launch_dir: str, workdir: str) -> str:
  """The trainer's files on the workers, without suffix: .log, .pid, .exit (its status)."""
  return f"~/{launch_dir}/logs/" + re.sub(r"[^A-Za-z0-9_.-]+", "_", workdir).strip("_")


def train_steps(s: Slice, train_args: list[str], launch_dir: str) -> tuple[Step, Step]:
  """(start training on every worker, follow worker 0's log until training ends).

  `train_args`: `--config X --workdir W [--config.a=b ...]` as for `bigflax train`."""
  workdir = train_args[train_args.index("--workdir") + 1]
  config = train_args[train_args.index("--config") + 1]
  path, _, arg = config.partition(":")
  if pathlib.Path(path).is_absolute():
    if not pathlib.Path(path).is_relative_to(ROOT):
      raise ValueError(
        f"--config={config} is outside {ROOT}, the checkout copied to the "
        f"workers; move the experiment file into it."
      )
    path = str(pathlib.Path(path).relative_to(ROOT))
  args = list(train_args)
  args[train_args.index("--config") + 1] = path + (f":{arg}" if arg else "")
  train = [
    "../venv/bin/python",
    "-m",
    "bigflax",
    "train",
    *args,
    *(["--distributed"] if s.hosts > 1 else []),
  ]
  log = _log(launch_dir, workdir)
  # The exit file is renamed into place, so a reader never sees it half-written.
  background = (
    f"{shlex.join(train)} > {log}.log 2>&1 & echo $! > {log}.pid; wait $!; "
    f"echo $? > {log}.exit.tmp; mv {log}.exit.tmp {log}.exit"
  )
  start = (
    f"mkdir -p ~/{launch_dir}/logs && cd ~/{launch_dir}/src && "
    f"rm -f {log}.exit {log}.pid && "
    f"(setsid nohup bash -c {shlex.quote(background)} > /dev/null 2>&1 < /dev/null &)"
  )
  return (
    Step(f"start training on all {s.hosts} worker(s): {workdir}", ssh(s, start)),
    Step(
      "stream worker 0's log until training ends",
      ssh(s, stream_script(log, 0), worker="0", flags=SSH_KEEPALIVE),
      action=lambda out=None: follow(s, log, out),
    ),
  )


def stream_script(log: str, offset: int) -> str:
  """Worker 0's log from byte `offset` on, until the trainer's exit file appears."""
  return (
    f"until [ -f {log}.log ]; do sleep 1; done; tail -c +{offset + 1} -f {log}.log & "
    f"T=$!; until [ -f {log}.exit ]; do sleep 2; done; sleep 1; kill $T"
  )


def follow(s: Slice, log: str, out: TextIO | None = None) -> int:
  """Streams worker 0's log to `out` until training ends; returns the trainer's exit status.

  The stream ending proves nothing (ssh drops with the Wi-Fi, a laptop's sleep), so worker 0
  is asked for the exit file each time: while training runs the stream re-attaches at the
  byte where it stopped; while worker 0 is unreachable it is asked again, for
  GIVE_UP_SECONDS, and then StillRunning is raised."""
  out = out or sys.stdout
  offset, decoder, unreachable_since = 0, codecs.getincrementaldecoder("utf-8")("replace"), None
  while True:
    stream = subprocess.Popen(
      ssh(s, stream_script(log, offset), worker="0", flags=SSH_KEEPALIVE), stdout=subprocess.PIPE
    )
    try:
      for chunk in iter(functools.partial(stream.stdout.read1, 1 << 16), b""):
        out.write(decoder.decode(chunk))
        out.flush()
        offset += len(chunk)
    finally:
      stream.kill()  # on Ctrl-C too: no ssh outlives the launcher
      stream.wait()
    asked = subprocess.run(
      ssh(s, f"cat {log}.exit 2> /dev/null || echo running", worker="0", flags=SSH_KEEPALIVE),
      capture_output=True,
      text=True,
    )
    status = asked.stdout.strip() if asked.returncode == 0 else ""
    if status.isdigit():
      return int(status)
    if status == "running":
      unreachable_since = None
      print(
        f"bigflax launch: the log stream ended (exit {stream.returncode}) but training "
        f"is still running: re-attaching",
        file=sys.stderr,
        flush=True,
      )
    else:
      unreachable_since = unreachable_since or time.monotonic()
      if time.monotonic() - unreachable_since > GIVE_UP_SECONDS:
        raise StillRunning(
          f"worker 0 of {s.name} has been unreachable for "
          f"{GIVE_UP_SECONDS} s (last: {asked.stderr.strip()[-300:]})"
        )
      print(
        f"bigflax launch: cannot reach worker 0 (exit {asked.returncode}); asking again "
        f"in {RETRY_SECONDS} s",
        file=sys.stderr,
        flush=True,
      )
    time.sleep(RETRY_SECONDS)


def stop_step(s: Slice, workdir: str, launch_dir: str) -> Step:
  """SIGTERM to the trainer on every worker: it saves a checkpoint and exits."""
  return Step(
    f"stop training {workdir}",
    ssh(s, f"kill -TERM $(cat {_log(launch_dir, workdir)}.pid) 2> /dev/null || true"),
  )


def still_running(s: Slice, launch_dir: str | None = None, workdir: str | None = None) -> str:
  """What a launcher that stops early leaves running, and the commands that end it."""
  lines = []
  if workdir:
    log = _log(launch_dir, workdir)
    lines += [
      f"training {workdir} may still be running on {s.name} (log: {log}.log on "
      f"worker 0); follow it with",
      "  " + shlex.join(ssh(s, f"tail -n +1 -f {log}.log", worker="0")),
      "or stop it (it saves a checkpoint) with",
      "  " + shlex.join(stop_step(s, workdir, launch_dir).argv),
    ]
  lines += [
    f"the slice {s.name} is still running (and billed); delete it with",
    "  " + shlex.join(delete_step(s).argv),
  ]
  return "\n".join(lines)


def delete_step(s: Slice) -> Step:
  if s.queued:
    return Step(
      f"delete the queued resource {s.name} and its VM",
      s.gcloud("queued-resources", "delete", s.name, "--force", "--quiet"),
    )
  return Step(f"delete the TPU VM {s.name}", s.gcloud("tpu-vm", "delete", s.name, "--quiet"))


def print_step(step: Step):
  until = f" (repeat until it prints {step.poll_until})" if step.poll_until else ""
  print(f"# {step.what}{until}")
  if step.argv:
    print(shlex.join(step.argv))


def run_step(step: Step):
  print(f"bigflax launch: {step.what}", flush=True)
  if step.action:
    return step.action()
  while step.poll_until:
    result = subprocess.run(step.argv, capture_output=True, text=True)
    state = result.stdout.strip()
    if result.returncode != 0 or state in ("FAILED", "SUSPENDED"):
      raise StepFailed(
        f"{step.what}: state {state!r} (exit {result.returncode}) "
        f"{result.stderr.strip()[-500:]}\n  {shlex.join(step.argv)}"
      )
    if state == step.poll_until:
      return
    time.sleep(30)
  returncode = subprocess.run(step.argv).returncode
  if returncode != 0:
    raise StepFailed(f"{step.what} failed (exit {returncode}):\n  {shlex.join(step.argv)}")


def run_steps(steps: list[Step], dry_run: bool):
  for step in steps:
    print_step(step) if dry_run else run_step(step)


def check_workdir(s: Slice, workdir: str, delete: bool = False):
  if not workdir.startswith(("gs://", "/")):
    raise ValueError(
      f"--workdir={workdir}: give a gs://bucket/path (or an absolute path on "
      f"the VM); a relative one would sit in this launch's code folder, "
      f"~/{LAUNCHES}/<launch id>/src."
    )
  if LAUNCHES in pathlib.PurePosixPath(workdir).parts:
    raise ValueError(
      f"--workdir={workdir} is inside ~/{LAUNCHES}, where each launch unpacks "
      f"its own code: keep runs outside it (a gs://bucket/path, or e.g. "
      f"/home/USER/runs/NAME on the VM)."
    )
  if s.hosts > 1 and not workdir.startswith("gs://"):
    raise ValueError(
      f"--workdir={workdir}: a {s.accelerator_type} slice has {s.hosts} "
      f"workers that all write checkpoints; use a gs://bucket/path."
    )
  if delete and not workdir.startswith("gs://"):
    raise ValueError(
      f"--workdir={workdir} is on the VM, which --delete deletes; use a gs://bucket/path."
    )


def slice_from_args(args) -> Slice:
  for flag in ("tpu", "zone", "accelerator_type"):
    if not getattr(args, flag):
      raise ValueError(f"--{flag.replace('_', '-')} is required to run on a TPU slice.")
  if (args.queued or args.spot) and not args.create:
    raise ValueError("--queued and --spot apply when creating the slice: add --create.")
  s = Slice(
    args.tpu,
    args.zone,
    args.accelerator_type,
    args.project,
    args.runtime_version,
    args.spot,
    args.queued,
  )
  s.hosts  # noqa: B018  (the property validates the accelerator type)
  return s


def setup_steps(s: Slice, args, launch_dir: str) -> list[Step]:
  return (create_steps(s) if args.create else []) + install_steps(s, args.python, launch_dir)


def main(args, overrides: list[str]) -> int:
  """`args`: the launch command's flags (bigflax/cli.py), `config` as text; `overrides`: the
  --config.a.b=value arguments, passed on to train."""
  s, launch_dir, started, training = None, new_launch_dir(), False, False
  try:
    s = slice_from_args(args)
    check_workdir(s, args.workdir, args.delete)
    problem = configs.unknown_override(  # the train command's own check of the overrides
      ["--config", args.config, *overrides]
    )
    if problem:
      raise ValueError(problem)
    train_args = ["--config", args.config, "--workdir", args.workdir, *overrides]
    start, stream = train_steps(s, train_args, launch_dir)
    steps = setup_steps(s, args, launch_dir) + [start, stream]
    if args.dry_run:
      print(f"# {s.accelerator_type}: {s.hosts} worker(s)")
      run_steps(steps + ([delete_step(s)] if args.delete else []), dry_run=True)
      return 0
    started = True
    run_steps(steps[:-2], dry_run=False)
    training = True  # from here on, Ctrl-C leaves a trainer behind (it is detached)
    run_step(start)
    status = run_step(stream)
    if status != 0:
      raise StepFailed(f"training exited with status {status} (its log is above)")
  except KeyboardInterrupt:
    if started:
      print(
        f"\nbigflax launch: interrupted; nothing was stopped or deleted.\n"
        f"{still_running(s, launch_dir, args.workdir if training else None)}",
        file=sys.stderr,
      )
    return 130
  except StillRunning as e:
    print(
      f"bigflax launch: error: {e}; nothing was stopped or deleted.\n"
      f"{still_running(s, launch_dir, args.workdir)}",
      file=sys.stderr,
    )
    return 2
  except (ValueError, OSError, StepFailed) as e:
    print(f"bigflax launch: error: {e}", file=sys.stderr)
    if started and args.delete:
      run_step(delete_step(s))
    elif started and args.create:
      print(f"bigflax launch: {still_running(s)}", file=sys.stderr)
    return 2
  if args.delete:
    run_step(delete_step(s))
  return 0
