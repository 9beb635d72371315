"""Eval-gated promotion: a candidate run replaces the served (incumbent) run only if it
scores at least as well on the same held-out split (the rule and the registry's files:
`registry.py`)."""

import json
import os

import jax

from bigflax import configs, tasks, trained
from bigflax import registry as registry_lib
from bigflax.configs import UsageError


def promote(
  candidate: str,
  incumbent: str,
  split: str,
  metric: str | None = None,
  min_delta: float = 0.0,
  registry: str | None = None,
) -> dict:
  """Evaluates both runs on the incumbent's held-out data; the candidate becomes the
  registry's served run only if its improvement is at least `min_delta` (0: not worse).
  `metric` defaults to the task's; `registry` to the incumbent's parent directory."""
  incumbent_config = configs.load(incumbent)
  candidate_config = configs.load(candidate)
  if candidate_config.task.name != incumbent_config.task.name:
    raise UsageError(
      f"--candidate={candidate} is a {candidate_config.task.name!r} run, "
      f"--incumbent={incumbent} a {incumbent_config.task.name!r} run."
    )
  # The one held-out set both are judged on: the incumbent's.
  candidate_config.unlock().data = incumbent_config.data
  metric = metric or tasks.get(incumbent_config.task.name).default_metric
  registry = registry or os.path.dirname(os.path.abspath(incumbent))
  # The incumbent as served: the step promoted, even if its run trained on since.
  served = registry_lib.served(registry) or {}
  served_step = served["step"] if served.get("workdir") == os.path.abspath(incumbent) else None
  scores = {}
  for role, workdir, config, step in (
    ("incumbent", incumbent, incumbent_config, served_step),
    ("candidate", candidate, candidate_config, None),
  ):
    result = trained.evaluation(workdir, split, config, step)
    if metric not in result.metrics:
      raise UsageError(
        f"--metric={metric} is not among the task's metrics: {', '.join(sorted(result.metrics))}."
      )
    scores[role] = (result.step, result.metrics)
  decision = dict(
    **registry_lib.decide(metric, scores["candidate"][1], scores["incumbent"][1], min_delta),
    split=split,
    candidate=os.path.abspath(candidate),
    candidate_step=scores["candidate"][0],
    candidate_metrics=scores["candidate"][1],
    incumbent=os.path.abspath(incumbent),
    incumbent_step=scores["incumbent"][0],
    incumbent_metrics=scores["incumbent"][1],
  )
  if jax.process_index() == 0:
    registry_lib.record(registry, decision)
    verdict = "PROMOTED" if decision["promoted"] else "kept out"
    print(
      f"{metric}: candidate {scores['candidate'][1][metric]:.4f}, incumbent "
      f"{scores['incumbent'][1][metric]:.4f} (improvement "
      f"{decision['improvement']:+.4f}, needed "
      f"{min_delta:+.4f}): candidate {verdict}; log: {registry}/{registry_lib.LOG}"
    )
    print(json.dumps(decision))
  return decision
