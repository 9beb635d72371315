"""lm-eval tasks as an evaluator ("harness"): config.harness's settings, any of them
replaced in the evaluator's entry, on the live parameters (no checkpoint round trip).
lm-eval is imported only when one is built: it needs the harness extra."""

from bigflax.configs import UsageError
from bigflax.evals.base import Context, Evaluator

SETTINGS = ("tasks", "limit", "num_fewshot", "include_path", "batch_size", "max_gen_toks")


def harness(context: Context, every: int | None = None, **settings) -> Evaluator:
  """`settings` (tasks="a,b", limit, num_fewshot, ...) replace config.harness's; every
  harness.every steps unless `every`."""
  config = context.config
  unknown = sorted(set(settings) - set(SETTINGS))
  if unknown:
    raise UsageError(
      f"evals: kind 'harness' has no setting {unknown[0]!r}; it takes "
      f"every and {', '.join(SETTINGS)} (config.harness's)."
    )
  if context.task.sample is None:
    raise UsageError(
      f"evals: kind 'harness' (or harness.every={config.harness.every}): "
      f"lm-eval scores language models; task.name={config.task.name!r} is "
      f"not one (set harness.every=0)."
    )
  try:
    from bigflax.evals import lm_eval_tasks  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise UsageError(
      f"the harness evaluator needs lm-evaluation-harness ({e.name} is "
      f"missing): pip install -e '.[harness]'"
    ) from e
  harness_config = config.harness.copy_and_resolve_references()
  if "tasks" in settings:  # "a,b" or a list of such
    tasks = settings["tasks"]
    settings["tasks"] = (tasks,) if isinstance(tasks, str) else tuple(tasks)
  harness_config.update(settings)
  run = lm_eval_tasks.scorer(
    harness_config,
    context.model,
    context.tokenizer,
    context.mesh,
    context.rules,
    table=context.offline,
  )
  return Evaluator("harness", config.harness.every if every is None else every, run)
