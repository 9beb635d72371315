"""gpt_tiny's model on the text this machine has: the installed packages' Python sources
and docs (site-packages: .py .pyi .md .rst .txt, ~0.42 GB here), the standard library (the
stdlib_corpus TFDS builder) and the C headers in /usr/include (~0.1 GB), tokenized once
into shards and mixed 70 / 20 / 10.

  python -m bigflax prepare --config experiments/gpt_site_packages.py
  python -m bigflax train --config experiments/gpt_site_packages.py --workdir runs/gpt_sp

`:slice` prepares and trains on one package directory (jax) instead of all of
site-packages: a minute to prepare, for trying the pipeline out.
"""

import os
import sysconfig

from experiments import gpt_tiny


def get_config(arg=None):
  config = gpt_tiny.get_config()
  site_packages = sysconfig.get_paths()["purelib"]
  docs_and_code = ["*.py", "*.pyi", "*.md", "*.rst", "*.txt"]
  config.data.corpora = dict(
      site_packages=dict(format="text", validation_fraction=0.005, patterns=docs_and_code,
                         path=os.path.join(site_packages, "jax") if arg == "slice"
                         else site_packages),
      stdlib=dict(format="tfds", tfds_name="stdlib_corpus", validation_fraction=0.05),
      c_headers=dict(format="text", path="/usr/include", patterns=["*.h"],
                     validation_fraction=0.005),
  )
  config.data.mixture = dict(site_packages=0.7, stdlib=0.2, c_headers=0.1)
  config.data.prepared_dir = f"runs/prepared/site_packages{'_' + arg if arg else ''}"
  config.data.shard_bytes = 32 << 20
  config.data.prepare_workers = 0  # one per core
  config.train.num_steps = 1000
  config.train.eval_every = 250
  config.train.checkpoint_every = 250
  return config
