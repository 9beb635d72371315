"""A sweep's results: results.csv, results.md (sorted by the metric) and results.png (the
metric against each swept field), from one row per trial."""

import csv
import math

from etils import epath

from bigflax.sweep import space as sweep_space


def write(
  directory: epath.Path, rows: list[dict], fields: list[str], metric: str, mode: str
) -> str:
  """results.csv, results.md and results.png in `directory`; returns the markdown table.
  Rows are ranked by the metric; a non-finite one (a diverged run) comes after every finite
  one, marked "not finite", then the rows without the metric."""
  is_float = lambda r: isinstance(r.get(metric), float)
  has_metric = [r for r in rows if is_float(r) and math.isfinite(r[metric])]
  not_finite = [r for r in rows if is_float(r) and not math.isfinite(r[metric])]
  rest = [r for r in rows if not is_float(r)]
  rows = sorted(has_metric, key=lambda r: r[metric], reverse=mode == "max") + not_finite + rest
  metric_columns = sorted({k for r in rows for k in r if "/" in k and not k.endswith("/step")})
  metric_columns.remove(metric) if metric in metric_columns else None
  columns = ["trial", *fields, "status", metric, *metric_columns, "step", "seconds", "log"]
  for r in rows:
    r["step"] = r.get("train/step", "")
  with (directory / "results.csv").open("w") as f:
    writer = csv.DictWriter(f, columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)

  shown = [
    "trial",
    *fields,
    "status",
    metric,
    *[c for c in metric_columns if c.endswith("/loss")],
    "step",
    "seconds",
  ]
  cell = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v if v is not None else "")
  cells = lambda r: [
    cell(r.get(c, "")) + (" (not finite)" if c == metric and r in not_finite else "") for c in shown
  ]
  table = "\n".join(
    ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    + ["| " + " | ".join(cells(r)) + " |" for r in rows]
  )
  (directory / "results.md").write_text(table + "\n")
  if has_metric and fields:
    plot(directory / "results.png", has_metric, fields, metric)
  return table


def plot(path, rows, fields, metric):
  """The metric against each swept field, one line per combination of the other fields.
  Fields swept together (zip_) share a panel."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  panels = []  # [field, *fields tied to it]
  for field in fields:
    if not any(_tied(rows, panel[0], field) for panel in panels):
      panels.append([field] + [g for g in fields if g != field and _tied(rows, field, g)])
  fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
  for ax, panel in zip(axes[0], panels):
    field, others = panel[0], [f for f in fields if f not in panel]
    groups = {}
    for r in rows:
      groups.setdefault(tuple(r.get(f) for f in others), []).append(r)
    for key, group in sorted(groups.items(), key=lambda kv: [_sort_key(v) for v in kv[0]]):
      group = sorted(group, key=lambda r: _sort_key(r.get(field)))
      xs = [r.get(field) for r in group]
      numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
      label = ", ".join(
        f"{f.split('.')[-1]}={sweep_space.format_value(v)}" for f, v in zip(others, key)
      )
      ax.plot(
        xs if numeric else [str(x) for x in xs],
        [r[metric] for r in group],
        "o-",
        label=label or None,
      )
      if numeric and min(xs) > 0 and max(xs) / min(xs) >= 10:
        ax.set_xscale("log")
    ax.set_xlabel(" / ".join(panel))
    ax.set_ylabel(metric)
    ax.grid(True, alpha=0.3)
    if others:
      ax.legend(fontsize=8)
  fig.tight_layout()
  with epath.Path(path).open("wb") as f:
    fig.savefig(f, format="png", dpi=100)
  plt.close(fig)


def _tied(rows, f, g) -> bool:
  """Whether fields f and g were swept together: each value of one goes with one of the
  other."""
  pairs = {(repr(r.get(f)), repr(r.get(g))) for r in rows}
  return len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})


def _sort_key(value):
  return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))
