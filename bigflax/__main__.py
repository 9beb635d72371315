from bigflax import platforms

platforms.skip_absent_tpu()  # before jax starts its backends

from bigflax.cli import entry_point  # noqa: E402  pylint: disable=wrong-import-position

entry_point()
