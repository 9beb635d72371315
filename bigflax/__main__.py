from bigflax import platforms

platforms.skip_absent_tpu()  # before jax starts its backends

from bigflax.main import run  # noqa: E402  pylint: disable=wrong-import-position

run()
