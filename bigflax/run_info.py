"""What a run ran on, for reproducing it: the code's git commit, package versions, the
mesh and the devices. `train` appends one record to `run_info.json` each time it starts
(a run resumed on other hardware keeps its history), with what that start changed in
config.json (`config_changes`, {'a.b': [old, new]}: read backwards from config.json they
give the config of every start); `bigflax diff` compares two runs.
"""

import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys

from bigflax import configs

FILE = "run_info.json"
PACKAGES = (
  "bigflax",
  "jax",
  "jaxlib",
  "libtpu",
  "flax",
  "optax",
  "orbax-checkpoint",
  "numpy",
  "ml-collections",
  "grain",
  "tensorflow-datasets",
)
# Differ between any two starts; not what `diff` is for.
NOT_COMPARED = ("started_at", "start_step", "argv", "config_changes")


def git_state(directory: str) -> dict | None:
  """{'commit', 'dirty'} of the git checkout holding `directory`, or None."""

  def git(*args):
    return subprocess.run(
      ["git", "-C", directory, *args], capture_output=True, text=True, timeout=10
    )

  try:
    head = git("rev-parse", "HEAD")
    if head.returncode:
      return None
    status = git("status", "--porcelain", "--untracked-files=no")
  except (OSError, subprocess.TimeoutExpired):
    return None
  return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}


def versions(packages=PACKAGES) -> dict:
  """{package: installed version or None}, and Python's."""
  found = {"python": platform.python_version()}
  for name in packages:
    try:
      found[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      found[name] = None
  return found


def collect(mesh, start_step: int = 0, config_changes: dict | None = None) -> dict:
  import jax

  device = jax.devices()[0]
  return {
    "started_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    "start_step": start_step,
    "config_changes": config_changes or {},
    "argv": sys.argv,
    "git": git_state(os.path.dirname(os.path.abspath(__file__))),
    "versions": versions(),
    "mesh": {name: int(size) for name, size in mesh.shape.items()},
    "devices": {
      "platform": device.platform,
      "kind": device.device_kind,
      "count": jax.device_count(),
      "local_count": jax.local_device_count(),
      "process_count": jax.process_count(),
    },
    "hostname": platform.node(),
  }


def load(workdir: str) -> list[dict]:
  """The run's records, oldest first ([] for a run that has none)."""
  path = os.path.join(workdir, FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return json.load(f)["history"]


def record(workdir: str, mesh, start_step: int = 0, config_changes: dict | None = None) -> dict:
  """Appends this start's record to `workdir/run_info.json` (process 0 only)."""
  entry = collect(mesh, start_step, config_changes)
  history = load(workdir) + [entry]
  path = os.path.join(workdir, FILE)
  with open(path + ".tmp", "w") as f:
    json.dump({"latest": entry, "history": history}, f, indent=2)
  os.replace(path + ".tmp", path)
  return entry


def describe(workdir: str) -> dict:
  """A run as flat keys: 'config.*' from config.json, 'env.*' from its latest record."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"No config.json in {workdir}: is it a bigflax run directory?")
  with open(path) as f:
    flat = configs.flatten(json.load(f), "config.")
  history = load(workdir)
  if history:
    latest = {k: v for k, v in history[-1].items() if k not in NOT_COMPARED}
    flat.update(configs.flatten(latest, "env."))
  return flat


MISSING = object()


def diff(run_a: str, run_b: str) -> list[tuple[str, object, object]]:
  """(key, value in A, value in B) for every key whose values differ (MISSING if absent)."""
  a, b = describe(run_a), describe(run_b)
  return [
    (k, a.get(k, MISSING), b.get(k, MISSING))
    for k in sorted(set(a) | set(b))
    if a.get(k, MISSING) != b.get(k, MISSING)
  ]


def format_diff(run_a: str, run_b: str, rows) -> str:
  if not rows:
    return f"{run_a} and {run_b}: same config and environment."
  show = lambda v: "(absent)" if v is MISSING else json.dumps(v)
  width = max(len(k) for k, _, _ in rows)
  left = max(len(run_a), *(len(show(a)) for _, a, _ in rows))
  lines = [f"{'':<{width}}  {run_a:<{left}}  {run_b}"]
  lines += [f"{k:<{width}}  {show(a):<{left}}  {show(b)}" for k, a, b in rows]
  return "\n".join(lines)
