"""glibc's huge-page tunable for every command, set by re-executing the process once at start.

`GLIBC_TUNABLES=glibc.malloc.hugetlb=1` lets malloc back XLA's large CPU buffers with
transparent huge pages: 13-20 % off a train step (README, Benchmark). glibc reads the
variable only when a process starts, so the command re-executes itself with it, before
jax is imported. execve keeps the pid, the open files (stdin/stdout/stderr) and the signal
dispositions, so callers see the same process and exit status. Left alone where the user set
GLIBC_TUNABLES (to anything), where BIGFLAX_NO_REEXEC=1, or where glibc is older than 2.35
(no such tunable). Standard library only: it runs before anything else is imported.
"""

import os
import sys

TUNABLE = "glibc.malloc.hugetlb=1"


def glibc_has_tunable() -> bool:
  """glibc >= 2.35, where glibc.malloc.hugetlb exists."""
  try:
    name, version = os.confstr("CS_GNU_LIBC_VERSION").split()  # e.g. "glibc 2.36"
    major, minor = (int(part) for part in version.split(".")[:2])
  except (ValueError, OSError, AttributeError):  # not glibc (musl, macOS, Windows)
    return False
  return name == "glibc" and (major, minor) >= (2, 35)


def environment(env) -> dict | None:
  """The environment to re-execute with, or None to go on as is. The variable it sets is
  what stops the re-executed process from doing it again."""
  if "GLIBC_TUNABLES" in env or env.get("BIGFLAX_NO_REEXEC") == "1" or not glibc_has_tunable():
    return None
  return dict(env, GLIBC_TUNABLES=TUNABLE)


def reexec():
  """Replaces this process with the same command line under the tunable (or returns)."""
  env = environment(os.environ)
  if env is not None:
    # orig_argv keeps the interpreter's own options (-X, -u, -W) and `-m bigflax` or the
    # console script's path.
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
