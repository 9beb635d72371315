"""gpt_tiny's model on the text this machine has, about 1 GB: the installed packages' sources
and docs (site-packages: Python, Cython and C/C++ files, .md .rst .txt), the standard
library (the stdlib_corpus TFDS builder), the C headers in /usr/include, and what Debian's
packages ship as text: man pages and /usr/share/doc's changelogs, READMEs and copyright
files (gzipped, read through gzip). Tokenized once into shards, mixed 60 / 15 / 10 / 10 / 5;
a machine without /usr/include, /usr/share/man or /usr/share/doc mixes the rest.

  python -m bigflax prepare --config experiments/gpt_site_packages.py
  python -m bigflax train --config experiments/gpt_site_packages.py --workdir runs/gpt_sp

`:slice` prepares and trains on one package directory (jax) and the stdlib instead: a
minute to prepare, for trying the pipeline out.
"""

import os
import sysconfig

from experiments import gpt_tiny


def get_config(arg=None):
  config = gpt_tiny.get_config()
  site_packages = sysconfig.get_paths()["purelib"]
  docs_and_code = [
    "*.py",
    "*.pyi",
    "*.md",
    "*.rst",
    "*.txt",
    "*.pyx",
    "*.pxd",
    "*.c",
    "*.h",
    "*.cc",
    "*.cpp",
    "*.hpp",
    "*.cu",
  ]
  # Debian's docs: text and HTML only (its .pdf.gz, .ps.gz and .tar.gz are not text).
  debian_docs = [
    "changelog*",
    "NEWS*",
    "HISTORY*",
    "README*",
    "copyright",
    "*.html",
    "*.md",
    "*.md.gz",
    "*.txt",
    "*.txt.gz",
    "*.rst",
    "*.rst.gz",
  ]
  corpora = dict(
    site_packages=dict(
      format="text", validation_fraction=0.005, patterns=docs_and_code, path=site_packages
    ),
    stdlib=dict(format="tfds", tfds_name="stdlib_corpus", validation_fraction=0.05),
    c_headers=dict(format="text", path="/usr/include", patterns=["*.h"], validation_fraction=0.005),
    man_pages=dict(
      format="text", path="/usr/share/man", patterns=["*.gz"], validation_fraction=0.005
    ),
    debian_docs=dict(
      format="text", path="/usr/share/doc", patterns=debian_docs, validation_fraction=0.005
    ),
  )
  mixture = dict(site_packages=0.6, stdlib=0.15, c_headers=0.1, man_pages=0.1, debian_docs=0.05)
  # A machine without these system directories (macOS, a slim container) mixes the rest.
  for name in ("c_headers", "man_pages", "debian_docs"):
    if not os.path.isdir(corpora[name]["path"]):
      del corpora[name], mixture[name]
  if arg == "slice":
    corpora = dict(
      stdlib=corpora["stdlib"],
      site_packages=dict(corpora["site_packages"], path=os.path.join(site_packages, "jax")),
    )
    mixture = dict(site_packages=0.8, stdlib=0.2)
  config.data.corpora, config.data.mixture = corpora, mixture
  config.data.prepared_dir = f"runs/prepared/site_packages{'_' + arg if arg else ''}"
  config.data.shard_bytes = 32 << 20
  config.data.prepare_workers = 0  # one per core
  config.train.num_steps = 1000
  config.train.eval_every = 250
  config.train.checkpoint_every = 250
  return config
