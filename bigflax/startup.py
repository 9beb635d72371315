"""What a command settles before jax is imported: the process's environment.

1. glibc's huge-page tunable, set by re-executing the process once at start.
`GLIBC_TUNABLES=glibc.malloc.hugetlb=1` lets malloc back XLA's large CPU buffers with
transparent huge pages: 13-20 % off a train step (docs/reproduction.md). glibc reads the
variable only when a process starts, so the command re-executes itself with it, before
jax is imported. execve keeps the pid, the open files (stdin/stdout/stderr) and the signal
dispositions, so callers see the same process and exit status. Left alone where the user set
GLIBC_TUNABLES (to anything), where BIGFLAX_NO_REEXEC=1, or where glibc is older than 2.35
(no such tunable). Standard library only: it runs before anything else is imported.

2. Which JAX platforms start.
Left to itself, JAX probes every backend it knows; with libtpu installed (the `tpu` extra,
which `bigflax plan --topology v5e:4x4` needs on any machine) that probe prints several lines
of libtpu errors on a machine without a TPU ("could not determine TPU accelerator type",
"unexpected worker hostname ... TPU_WORKER_HOSTNAMES"). Where no TPU is present, JAX would
not have used one anyway, so the probe is skipped. The planner's compile-only TPU topology
loads libtpu by itself and does not need the TPU backend.
"""

import glob
import importlib.metadata
import os
import pkgutil
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


# Set on TPU VMs and GKE TPU nodes, or by a user pointing libtpu at a TPU.
TPU_ENVIRONMENT = ("TPU_ACCELERATOR_TYPE", "TPU_WORKER_HOSTNAMES", "JAX_FORCE_TPU_INIT")


def tpu_present() -> bool:
  """A TPU on this machine: its device files (/dev/accel* up to v4, /dev/vfio/N from v5
  on) or a TPU environment."""
  return bool(
    glob.glob("/dev/accel*")
    or glob.glob("/dev/vfio/[0-9]*")
    or any(os.environ.get(name) for name in TPU_ENVIRONMENT)
  )


def pjrt_plugins() -> set[str]:
  """Module names of the installed JAX PJRT plugins, found the way JAX finds them."""
  try:
    import jax_plugins  # pylint: disable=import-outside-toplevel
  except ImportError:
    found = set()
  else:
    found = {f"jax_plugins.{m.name}" for m in pkgutil.iter_modules(jax_plugins.__path__)}
  return found | {e.value for e in importlib.metadata.entry_points(group="jax_plugins")}


def platforms_without_tpu() -> str | None:
  """ "cpu" where JAX has nothing but its CPU and the TPU to choose from; None where other
  plugins are installed (a GPU's): then JAX chooses, as before, since naming its platforms
  would turn a GPU that fails to start from a fall-back into an error."""
  return None if pjrt_plugins() else "cpu"


def skip_absent_tpu():
  """Sets JAX_PLATFORMS to leave out the TPU on a machine without one, unless it is set."""
  if "JAX_PLATFORMS" in os.environ or tpu_present():
    return
  platforms = platforms_without_tpu()
  if platforms:
    os.environ["JAX_PLATFORMS"] = platforms
