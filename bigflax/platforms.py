"""Which JAX platforms a command starts, decided before jax initialises its backends.

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

# Set on TPU VMs and GKE TPU nodes, or by a user pointing libtpu at a TPU.
TPU_ENVIRONMENT = ("TPU_ACCELERATOR_TYPE", "TPU_WORKER_HOSTNAMES", "JAX_FORCE_TPU_INIT")


def tpu_present() -> bool:
  """A TPU on this machine: its device files (/dev/accel* up to v4, /dev/vfio/N from v5
  on) or a TPU environment."""
  return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*")
              or any(os.environ.get(name) for name in TPU_ENVIRONMENT))


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
  """"cpu" where JAX has nothing but its CPU and the TPU to choose from; None where other
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
