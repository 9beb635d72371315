"""Eval-gated promotion: a candidate run replaces the served (incumbent) run only if it
scores at least as well on the same held-out split.

A registry is a directory holding `served.json` (which run is served, and its scores) and
`promotions.jsonl` (every decision, promoted or not, with both scores). `bigflax serve
--registry DIR` serves the run `served.json` names and reloads it when it changes.
"""

import datetime
import json
import os

import jax

from bigflax import configs, inference, tasks
from bigflax.configs import UsageError

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
  return {"promoted": better >= min_delta, "metric": metric, "min_delta": min_delta,
          "improvement": better}


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
  decision = dict(decision, time=datetime.datetime.now(datetime.timezone.utc).isoformat())
  with open(os.path.join(registry, LOG), "a") as f:
    f.write(json.dumps(decision) + "\n")
  if decision["promoted"]:
    entry = {"workdir": decision["candidate"], "step": decision["candidate_step"],
             "metrics": decision["candidate_metrics"], "time": decision["time"]}
    tmp = os.path.join(registry, SERVED + ".tmp")
    with open(tmp, "w") as f:
      json.dump(entry, f, indent=2)
    os.replace(tmp, os.path.join(registry, SERVED))


def promote(candidate: str, incumbent: str, split: str, metric: str | None = None,
            min_delta: float = 0.0, registry: str | None = None) -> dict:
  """Evaluates both runs on the incumbent's held-out data; the candidate becomes the
  registry's served run only if its improvement is at least `min_delta` (0: not worse).
  `metric` defaults to the task's; `registry` to the incumbent's parent directory."""
  incumbent_config = configs.load(incumbent)
  candidate_config = configs.load(candidate)
  if candidate_config.task.name != incumbent_config.task.name:
    raise UsageError(f"--candidate={candidate} is a {candidate_config.task.name!r} run, "
                     f"--incumbent={incumbent} a {incumbent_config.task.name!r} run.")
  # The one held-out set both are judged on: the incumbent's.
  candidate_config.unlock().data = incumbent_config.data
  metric = metric or tasks.get(incumbent_config.task.name).default_metric
  scores = {}
  for role, workdir, config in (("incumbent", incumbent, incumbent_config),
                                ("candidate", candidate, candidate_config)):
    result = inference.evaluation(workdir, split, config)
    if metric not in result.metrics:
      raise UsageError(f"--metric={metric} is not among the task's metrics: "
                       f"{', '.join(sorted(result.metrics))}.")
    scores[role] = (result.step, result.metrics)
  decision = dict(
      **decide(metric, scores["candidate"][1], scores["incumbent"][1], min_delta),
      split=split, candidate=os.path.abspath(candidate),
      candidate_step=scores["candidate"][0], candidate_metrics=scores["candidate"][1],
      incumbent=os.path.abspath(incumbent), incumbent_step=scores["incumbent"][0],
      incumbent_metrics=scores["incumbent"][1])
  registry = registry or os.path.dirname(os.path.abspath(incumbent))
  if jax.process_index() == 0:
    record(registry, decision)
    verdict = "PROMOTED" if decision["promoted"] else "kept out"
    print(f"{metric}: candidate {scores['candidate'][1][metric]:.4f}, incumbent "
          f"{scores['incumbent'][1][metric]:.4f} (improvement "
          f"{decision['improvement']:+.4f}, needed "
          f"{min_delta:+.4f}): candidate {verdict}; log: {registry}/{LOG}")
    print(json.dumps(decision))
  return decision
