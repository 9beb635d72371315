"""One writer per run directory. `train` holds `workdir/train.lock` while it runs, so that a
second `train` on the same workdir (a command run twice, a job requeued while the first
still runs) refuses at once, naming the holder, before it reads or writes anything there.

On a local or network disk the lock is a file created with O_CREAT|O_EXCL; on gs:// an
object created with a generation precondition (`if_generation_match=0`): of two writers
exactly one succeeds. A lock left by a dead process (on this host, no such PID: a `kill -9`,
a crash) is taken over with a warning; one from another host is not, since its process
cannot be checked from here: the refusal says to delete it. With several processes
(jax.distributed) process 0 alone takes it, and every process learns whether it could.
"""

import contextlib
import datetime
import json
import os
import platform
import sys

import jax
from jax.experimental import multihost_utils
import numpy as np

from bigflax import workdir as workdir_lib


class Held(FileExistsError):
  """Another live process holds the run directory (the command line exits 2)."""


@contextlib.contextmanager
def held(workdir: str):
  """Holds `workdir`'s lock for the block (released however the block ends); raises
  `Held` if another process has it."""
  release, refusal = None, None
  if jax.process_index() == 0:
    try:
      release = acquire(workdir)
    except Held as e:
      refusal = e
  if jax.process_count() > 1:  # every process learns process 0's outcome
    locked = multihost_utils.broadcast_one_to_all(np.int32(refusal is None))
    if not locked and refusal is None:
      refusal = Held(f"--workdir={workdir} is in use by another run (see process 0).")
  if refusal is not None:
    raise refusal
  try:
    yield
  finally:
    if release is not None:
      release()


def acquire(workdir: str):
  """Takes the lock, or a dead process's over; returns the function that releases it."""
  path = workdir_lib.lock(workdir)
  store = _Object(path) if path.startswith("gs://") else _File(path)
  mine = {
    "host": platform.node(),
    "pid": os.getpid(),
    "since": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
  }
  try:
    store.create(json.dumps(mine))
  except FileExistsError:
    holder = _holder(store)
    if not _dead(holder):
      raise Held(_refusal(workdir, path, holder)) from None
    print(
      f"bigflax: warning: taking over {path}, left by PID {holder['pid']} on this host "
      f"(since {holder.get('since')}), which is no longer running.",
      file=sys.stderr,
      flush=True,
    )
    store.remove()
    try:
      store.create(json.dumps(mine))
    except FileExistsError:  # another process took it over first
      raise Held(_refusal(workdir, path, _holder(store))) from None

  def release():
    if _holder(store) == mine:  # not a lock someone deleted by hand and another run took
      store.remove()

  return release


def _holder(store) -> dict:
  try:
    return json.loads(store.read())
  except (FileNotFoundError, ValueError):  # gone, or being written this very moment
    return {}


def _dead(holder: dict) -> bool:
  """Is the holder a process of this host that no longer runs? Our own PID counts: a
  container restarted with the same host name and PID."""
  if holder.get("host") != platform.node() or not isinstance(holder.get("pid"), int):
    return False
  if holder["pid"] == os.getpid():
    return True
  try:
    os.kill(holder["pid"], 0)
  except ProcessLookupError:
    return True
  except PermissionError:  # alive, another user's
    return False
  return False


def _refusal(workdir: str, path: str, holder: dict) -> str:
  who = (
    f"PID {holder.get('pid')} on host {holder.get('host')} since {holder.get('since')}"
    if holder
    else "a process that has not written its name yet"
  )
  return (
    f"--workdir={workdir} is in use: `train` {who} holds {path}. Two writers would "
    f"interleave metrics and overwrite each other's checkpoints. Wait for it to end or "
    f"stop it; if that process is gone (its host died), delete {path}."
  )


class _File:
  def __init__(self, path: str):
    self.path = path

  def create(self, text: str):
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    with os.fdopen(fd, "w") as f:
      f.write(text)

  def read(self) -> str:
    with open(self.path) as f:
      return f.read()

  def remove(self):
    with contextlib.suppress(FileNotFoundError):
      os.remove(self.path)


class _Object:
  """The lock as a gs:// object (google-cloud-storage, the `gcs` extra). Not tested here:
  the tests have no bucket."""

  def __init__(self, path: str):
    try:
      from google.cloud import storage  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise OSError("a gs:// workdir needs google-cloud-storage: pip install -e '.[gcs]'") from e
    bucket, _, name = path.removeprefix("gs://").partition("/")
    self.blob = storage.Client().bucket(bucket).blob(name)

  def create(self, text: str):
    from google.api_core import exceptions  # pylint: disable=import-outside-toplevel

    try:
      self.blob.upload_from_string(text, if_generation_match=0)
    except exceptions.PreconditionFailed as e:
      raise FileExistsError(self.blob.name) from e

  def read(self) -> str:
    from google.api_core import exceptions  # pylint: disable=import-outside-toplevel

    try:
      return self.blob.download_as_text()
    except exceptions.NotFound as e:
      raise FileNotFoundError(self.blob.name) from e

  def remove(self):
    from google.api_core import exceptions  # pylint: disable=import-outside-toplevel

    with contextlib.suppress(exceptions.NotFound):
      self.blob.delete()
