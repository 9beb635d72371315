from bigflax import hugepages

hugepages.reexec()  # first: glibc reads GLIBC_TUNABLES only when a process starts

from bigflax import platforms  # noqa: E402  pylint: disable=wrong-import-position

platforms.skip_absent_tpu()  # before jax starts its backends

from bigflax.cli import entry_point  # noqa: E402  pylint: disable=wrong-import-position

entry_point()
