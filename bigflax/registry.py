"""The registry of served runs, and the rule that decides a promotion (`promote.py`
evaluates the runs; `bigflax serve --registry` follows the registry).

A registry is a directory holding `served.json` (which run is served, and its scores) and
`promotions.jsonl` (every decision, promoted or not, with both scores). `bigflax serve
--registry DIR` serves the run `served.json` names and reloads it when it changes.
"""

import datetime
import json
import os

SERVED = "served.json"
LOG = "promotions.jsonl"
# Metrics where lower is better; every other metric (accuracy, f1, bleu, ...) is higher.
LOWER_IS_BETTER = ("loss", "perplexity")


def improvement(metric: str, candidate: float, incumbent: float) -> float:
  """How much better the candidate is (negative: worse), whichever way the metric goes."""
  lower = any(metric == m or metric.endswith("/" + m) for m in LOWER_IS_BETTER)
  return incumbent - candidate if lower else candidate - incumbent


def decide(metric: str, candidate: dict, incumbent: dict, min_delta: float = 0.0) -> dict:
  """Promote iff the candidate's improvement on `metric` is at least `min_delta`."""
  better = improvement(metric, candidate[metric], incumbent[metric])
  return {
    "promoted": better >= min_delta,
    "metric": metric,
    "min_delta": min_delta,
    "improvement": better,
  }


def served(registry: str) -> dict | None:
  path = os.path.join(registry, SERVED)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def record(registry: str, decision: dict):
  """Appends the decision to the log and, if promoted, points `served.json` at the
  candidate (written to a temporary file and renamed: a reader never sees half of it)."""
  os.makedirs(registry, exist_ok=True)
  decision = dict(decision, time=datetime.datetime.now(datetime.UTC).isoformat())
  with open(os.path.join(registry, LOG), "a") as f:
    f.write(json.dumps(decision) + "\n")
  if decision["promoted"]:
    entry = {
      "workdir": decision["candidate"],
      "step": decision["candidate_step"],
      "metrics": decision["candidate_metrics"],
      "time": decision["time"],
    }
    tmp = os.path.join(registry, SERVED + ".tmp")
    with open(tmp, "w") as f:
      json.dump(entry, f, indent=2)
    os.replace(tmp, os.path.join(registry, SERVED))
