"""Accelerator chips: memory and speed per chip, for MFU (train/loop.py) and the planner."""

import dataclasses

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  hbm_bytes: float  # per chip
  peak_flops: float  # bf16 FLOP/s per chip
  hbm_bandwidth: float  # bytes/s per chip
  ici_bandwidth: float  # bytes/s per chip, one direction (all links)


# Published per-chip numbers, Cloud TPU system architecture pages
# (cloud.google.com/tpu/docs/v4, /v5e, /v5p, /v6e): v4 275 TFLOP/s, 32 GiB at 1200 GB/s,
# ICI 2400 Gbps; v5e 197 TFLOP/s, 16 GB at 819 GB/s, ICI 1600 Gbps; v5p 459 TFLOP/s,
# 95 GB at 2765 GB/s, ICI 4800 Gbps; v6e 918 TFLOP/s, 32 GB at 1640 GB/s, ICI 3584 Gbps.
CHIPS = {
  "v4": Chip("v4", 32 * GiB, 275e12, 1200e9, 2400e9 / 8),
  "v5e": Chip("v5e", 16 * GiB, 197e12, 819e9, 1600e9 / 8),
  "v5p": Chip("v5p", 95e9, 459e12, 2765e9, 4800e9 / 8),
  "v6e": Chip("v6e", 32 * GiB, 918e12, 1640e9, 3584e9 / 8),
}
DEVICE_KINDS = {"TPU v4": "v4", "TPU v5 lite": "v5e", "TPU v5": "v5p", "TPU v6 lite": "v6e"}
# Dense bf16 FLOP/s of GPUs (NVIDIA datasheets), for MFU only.
GPU_PEAK_FLOPS = {"h100": 989e12, "a100": 312e12}
CPU_PEAK_FLOPS = 2.1e11  # a 2-core CPU


def chip(device_kind: str) -> Chip | None:
  """The TPU chip of a jax device kind ('TPU v5 lite'), or None."""
  name = DEVICE_KINDS.get(device_kind) or next((n for n in CHIPS if n in device_kind.lower()), None)
  return CHIPS.get(name)


def peak_flops(device_kind: str) -> float:
  """bf16 FLOP/s of one device of a jax device kind."""
  found = chip(device_kind)
  if found:
    return found.peak_flops
  kind = device_kind.lower()
  return next((v for k, v in GPU_PEAK_FLOPS.items() if k in kind), CPU_PEAK_FLOPS)
