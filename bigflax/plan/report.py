"""A plan as a person reads it (a table) and as a program does (JSON)."""

import json

import numpy as np


def _size(n: float) -> str:
  for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
    if abs(n) >= scale:
      return f"{n / scale:.2f} {unit}"
  return f"{int(n)} B"


def _si(n: float) -> str:
  for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
    if abs(n) >= scale:
      return f"{n / scale:.2f} {unit}"
  return f"{n:.3g} "


def format_report(r: dict) -> str:
  m, roof = r["memory_per_device"], r["roofline"]
  rows = [
    (
      "topology",
      f"{r['topology']}: {r['chips']} {r['chip']} chips, {r['devices']} devices, mesh {r['mesh']}",
    ),
    (
      "layout",
      f"remat={r['remat']} microbatches={r['microbatches']} "
      f"global_batch_size={r['global_batch_size']}",
    ),
    ("parameters", f"{r['parameters']['total']:,}"),
  ]
  rows += [(f"  {k}", f"{v:,}") for k, v in r["parameters"].items() if k != "total"]
  rows += [("memory / device", "")]
  rows += [
    (f"  {k}", _size(m[k]))
    for k in (
      "parameters",
      "optimizer_state",
      "other_arguments",
      "outputs",
      "aliased",
      "temporaries",
      "generated_code",
    )
    if m.get(k) is not None
  ]
  verdict = "FITS" if r["fits"] else "DOES NOT FIT"
  rows += [
    (
      "  total",
      f"{_size(m['total'])} of {_size(m['capacity'])} "
      f"({100 * m['total'] / m['capacity']:.0f} %): {verdict}",
    )
  ]
  if "compiler_message" in r:
    rows += [("  compiler", r["compiler_message"])]
  f = r["flops_per_step"]
  rows += [
    (
      "FLOPs / step",
      f"model {_si(f['model'])}FLOP (6N + attention over the whole T x T, as PaLM counts; MFU's)",
    ),
    ("  causal-halved", f"{_si(f['model_causal'])}FLOP (as MaxText counts)"),
    ("  executed", f"{_si(f['executed'])}FLOP (with remat's recomputation; the roofline's)"),
  ]
  if f["compiled"]:
    rows += [("  compiled", f"{_si(f['compiled'])}FLOP (XLA's cost analysis)")]
  for op, c in sorted(r["collectives"].items()):
    rows.append((f"  {op}", f"{c['count']} ops, {_size(c['bytes'])} / device / step"))
  if roof:
    s = roof["seconds"]
    rows += [
      (
        "roofline step",
        f"{roof['step_time'] * 1e3:.1f} ms (compute "
        f"{s['compute'] * 1e3:.1f}, HBM {s['memory'] * 1e3:.1f}, "
        f"collectives {s['collectives'] * 1e3:.1f} ms)",
      )
    ]
    rows += [
      (
        "tokens / s",
        f"{roof['tokens_per_second']:,.0f} (at most; MFU bound {100 * roof['mfu_bound']:.0f} %)",
      )
    ]
  if "budget" in r:
    b = r["budget"]
    text = f"{b['steps']:,} steps, {b['hours']:,.1f} h"
    if "cost" in b:
      text += f", cost {b['cost']:,.2f} at {b['price_per_chip_hour']}/chip-hour"
    rows.append((f"{_si(b['tokens'])}tokens", text))
  if not r["fits"]:
    rows.append(("state alone needs", f">= {r['min_devices_for_state']} devices"))
    if r["suggestions"]:
      rows.append(("layouts that fit", ""))
      for s in r["suggestions"]:
        rows.append(("  " + _size(s["memory_per_device"]), " ".join(s["overrides"])))
    else:
      rows.append(("layouts that fit", "none of the tried layouts: use a bigger slice"))
  width = max(len(k) for k, _ in rows)
  return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def to_json(report: dict) -> str:
  return json.dumps(report, indent=2, default=lambda x: float(np.asarray(x)))
