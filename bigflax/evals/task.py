"""The task's own evaluators, over its eval batches: "sums" (eval_fn added up, then
finalize), "predictions" (metrics of generated outputs: BLEU and chrF of translations)
and "report" (a confusion matrix: `bigflax eval` alone)."""

import functools

import jax
from jax.experimental import multihost_utils
import numpy as np

from bigflax import metrics as metrics_lib
from bigflax import workdir as workdir_lib
from bigflax.configs import UsageError
from bigflax.evals.base import Context, Evaluator
from bigflax.train import partitioning


def totals(context: Context, params, step: int) -> dict:
  """The eval step's sums added up over every eval batch (and so over all hosts); once a
  step, whichever evaluator asks first."""
  shared = context.shared
  if "eval_step" not in shared:
    shared["eval_step"] = context.jit(functools.partial(context.task.eval_fn, context.model))
  if shared.get("sums_step") != step:
    sums = None
    for batch in context.eval_batches():
      batch = partitioning.global_batch(batch, context.batch_sharding)
      sums = metrics_lib.accumulate(sums, shared["eval_step"](params, batch))
    shared["sums_step"], shared["sums"] = step, sums
  return shared["sums"]


def sums(context: Context, every: int | None = None) -> Evaluator:
  """The task's metrics (finalize of the eval sums), every train.eval_every steps unless
  `every`; the log line leaves out per-class values."""
  return Evaluator(
    "validation",
    context.config.train.eval_every if every is None else every,
    lambda params, step: context.task.finalize(totals(context, params, step)),
    printed=lambda key: "/" not in key or "macro" in key,
  )


def predictions(context: Context, every: int | None = None) -> Evaluator:
  """The task's `prediction_metrics` of its outputs for every eval row, gathered from all
  hosts in batch order."""
  if context.task.prediction_metrics is None:
    raise UsageError(
      f"evals: kind 'predictions' needs a task with prediction_metrics; "
      f"task.name={context.config.task.name!r} has none."
    )
  config = context.config
  predict_step, finalize = context.task.prediction_metrics(
    config, context.model, context.tokenizer, context.split
  )
  predict_step = context.jit(predict_step)

  def run(params, step):
    del step
    outputs = []
    for batch in context.eval_batches():
      batch = partitioning.global_batch(batch, context.batch_sharding)
      outputs.append(multihost_utils.process_allgather(predict_step(params, batch), tiled=True))
    return finalize(np.concatenate(outputs))

  return Evaluator("validation", config.train.eval_every if every is None else every, run)


def report(context: Context, every: int = 0) -> Evaluator:
  """The task's `eval_report` of the eval sums: printed, drawn next to the eval report
  (eval_{split}_{step}_confusion.png) and returned as its fields (`confusion_matrix`)."""
  if context.task.eval_report is None:
    raise UsageError(
      f"evals: kind 'report' needs a task with eval_report; "
      f"task.name={context.config.task.name!r} has none."
    )
  if every:
    raise UsageError(
      f"evals: kind 'report' has every={every}; its fields are no scalars "
      f"for metrics.jsonl: it runs in `bigflax eval` alone (every=0)."
    )

  def run(params, step):
    sums = totals(context, params, step)  # on every host: the eval steps are collective
    if jax.process_index() != 0:
      return {}
    prefix = workdir_lib.eval_report(context.workdir, context.split, step)
    return context.task.eval_report(context.config, sums, prefix)

  return Evaluator("report", 0, run)
