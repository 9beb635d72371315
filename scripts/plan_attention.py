"""Per-device memory of the training step compiled for a TPU slice (libtpu, no TPU
needed) with attention_impl xla against splash: a Llama-style 1B over sequence lengths,
and Llama-2-7B in the settings of issue 16's side-by-side table against MaxText.

  python scripts/plan_attention.py --table seq [--out plan_attention.json]
  python scripts/plan_attention.py --table llama2_7b

One sequence per device, FSDP over every device, bf16 compute, float32 parameters and
AdamW moments, layers scanned. The installed jax and libtpu compile: to compare with MaxText
under one compiler, run it with MaxText's (docs/reproduction.md's table used jax 0.12.0.1
and libtpu 0.0.52 from a venv that has MaxText's packages and bigflax's). Each row is one
compile (minutes on 2 cores); rows already
in --out are kept, so a stopped run continues where it was.
"""

import argparse
import json
import os
import pathlib
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

GIB = 2**30
TABLES = {
  # (experiment, seq_len, remat, attention_impl)
  "seq": [
    ("llama3_2_1b", seq, "full", impl) for seq in (2048, 8192, 32768) for impl in ("xla", "splash")
  ],
  "llama2_7b": [
    ("llama2_7b", seq, remat, impl)
    for seq, remat in ((4096, "full"), (8192, "full"), (4096, "dots_no_batch"))
    for impl in ("splash", "xla")
  ],
}


def measure(experiment, seq, remat, impl, topology):
  import importlib  # pylint: disable=import-outside-toplevel

  from bigflax.plan import planner as plan  # pylint: disable=import-outside-toplevel

  config = importlib.import_module(f"experiments.{experiment}").get_config()
  devices, chip, num_chips = plan.slice_devices(topology)
  config.model.update(max_len=seq, remat=remat, attention_impl=impl)
  config.data.update(seq_len=seq, global_batch_size=len(devices))
  config.mesh.shape = dict(data=1, fsdp=-1, tensor=1)
  report = plan.measure(config, devices, chip, num_chips)
  memory = report["memory_per_device"]
  return {
    "experiment": experiment,
    "seq_len": seq,
    "remat": remat,
    "attention_impl": impl,
    "topology": topology,
    "fits": report["fits"],
    "total_gib": memory["total"] / GIB,
    "temporaries_gib": (memory["temporaries"] or 0) / GIB,
    "parameters_gib": memory["parameters"] / GIB,
    "optimizer_state_gib": memory["optimizer_state"] / GIB,
    "step_time_s": (report["roofline"] or {}).get("step_time"),
    "all_gather_gib": report["collectives"].get("all-gather", {}).get("bytes", 0) / GIB,
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--table", choices=sorted(TABLES), default="seq")
  parser.add_argument("--topology", default="v5p:2x2x1")
  parser.add_argument("--out", default="plan_attention.json")
  args = parser.parse_args()
  rows = json.loads(pathlib.Path(args.out).read_text()) if os.path.exists(args.out) else []
  done = {
    (r["experiment"], r["seq_len"], r["remat"], r["attention_impl"], r["topology"]) for r in rows
  }
  for key in TABLES[args.table]:
    if key + (args.topology,) in done:
      continue
    rows.append(measure(*key, args.topology))
    with open(args.out, "w") as f:
      json.dump(rows, f, indent=1)
    r = rows[-1]
    print(
      f"{r['experiment']:12} seq {r['seq_len']:6} {r['remat']:14} {r['attention_impl']:7}"
      f" total {r['total_gib']:7.2f} GiB  temporaries {r['temporaries_gib']:7.2f} GiB"
      f"  fits {r['fits']}",
      flush=True,
    )


if __name__ == "__main__":
  main()
