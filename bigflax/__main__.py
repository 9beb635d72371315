# The command line imports nothing heavy before `entry_point` has settled the process's
# environment (bigflax/startup.py).
from bigflax.cli import entry_point

entry_point()
