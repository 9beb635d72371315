"""Reads global batches [start, stop) of a prepared-corpus config as a training process
does (its rows only, assembled into global arrays on the mesh), gathers them and, on
process 0, saves them: the subprocess of tests/test_mixture_multiprocess.py.

  python tests/mixture_reader.py CONFIG_JSON START STOP OUT.npy [ADDRESS NUM_PROCESSES ID]
"""

import json
import sys

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from bigflax import configs
from bigflax.data import tokenizers
from bigflax.tasks import lm
from bigflax.train import partitioning


def main(config_json, start, stop, out, address=None, num_processes=1, process_id=0):
  if int(num_processes) > 1:
    jax.distributed.initialize(
      coordinator_address=address, num_processes=int(num_processes), process_id=int(process_id)
    )
  with open(config_json) as f:
    data = ml_collections.ConfigDict(json.load(f))
  batches = lm.make_lm_batches(
    data,
    tokenizers.ByteTokenizer(),
    "train",
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )
  sharding = partitioning.batch_sharding(
    partitioning.make_mesh({"data": -1}), partitioning.rules_tuple(configs.DEFAULT_RULES)
  )
  steps = []
  for _, local in zip(range(int(start), int(stop)), batches.iterate(int(start))):
    inputs = partitioning.global_batch(local, sharding)["inputs"]
    steps.append(multihost_utils.process_allgather(inputs, tiled=True))
  if jax.process_index() == 0:
    np.save(out, np.stack(steps))
  print(
    f"read steps [{start}, {stop}) on {jax.process_count()} process(es) x "
    f"{jax.local_device_count()} devices"
  )


if __name__ == "__main__":
  main(*sys.argv[1:])
