"""Evaluators as data: `config.evals` lists them as dicts, e.g.

  config.evals = [dict(kind="sums"), dict(kind="predictions", every=500),
                  dict(kind="harness", tasks="stdlib_qa_choice", every=1000, limit=50)]

each built here by its kind's builder, `builder(context, **the entry's other fields) ->
Evaluator` (base.py). Without `config.evals` a run has the task's defaults. The training
loop runs those due at a step (`every`; 0: none in training); `bigflax eval` runs the list
on a split, lm-eval's entries aside (`--harness` runs those). `register` adds a kind from
anywhere (a test, a notebook) without editing bigflax.
"""

from collections.abc import Callable
import inspect

from bigflax.configs import UsageError
from bigflax.evals import task as task_evaluators
from bigflax.evals.base import Context, Evaluator
from bigflax.evals.harness import harness

KINDS = {
  "sums": task_evaluators.sums,
  "predictions": task_evaluators.predictions,
  "report": task_evaluators.report,
  "harness": harness,
}


def register(kind: str, builder: Callable[..., Evaluator]):
  """Makes `dict(kind=kind, ...)` an entry of `config.evals`; `builder(context, **fields)`
  returns the Evaluator."""
  KINDS[kind] = builder


def specs(config, task) -> list[dict]:
  """`config.evals`, or the task's defaults: its sums, its predictions and report if it has
  them, and lm-eval if harness.every is set (what runs before `evals` existed)."""
  if config.get("evals") is not None:
    return [dict(entry) for entry in config.evals]
  defaults = [dict(kind="sums")]
  if task.prediction_metrics is not None:
    defaults.append(dict(kind="predictions"))
  if task.eval_report is not None:
    defaults.append(dict(kind="report"))
  if config.harness.every:
    defaults.append(dict(kind="harness"))
  return defaults


def build(entries: list[dict], context: Context) -> list[Evaluator]:
  """The evaluators of `entries` (dicts with a `kind`) on `context`; every entry is checked
  before any is built."""
  calls = []
  for i, entry in enumerate(entries):
    fields = dict(entry)
    kind = fields.pop("kind", None)
    if kind not in KINDS:
      raise UsageError(
        f"evals[{i}]={entry}: kind={kind!r} is not an evaluator kind; choose "
        f"one of {sorted(KINDS)} (evals.register adds one)."
      )
    signature = inspect.signature(KINDS[kind])
    try:
      signature.bind(context, **fields)
    except TypeError as e:
      taken = ", ".join(list(signature.parameters)[1:]) or "no fields"
      raise UsageError(f"evals[{i}]={entry}: {e}; kind {kind!r} takes {taken}.") from e
    calls.append((KINDS[kind], fields))
  return [builder(context, **fields) for builder, fields in calls]
