from bigflax.main import run

run()
