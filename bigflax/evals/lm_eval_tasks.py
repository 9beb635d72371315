"""lm-eval tasks run on a model's parameters in hand (the training loop's live ones, or a
checkpoint's), returned as flat {"task/metric": value} scalars for metrics.jsonl and
TensorBoard."""

import math
import os

import jax
import lm_eval
from lm_eval.tasks import TaskManager
from lm_eval.utils import make_table

from bigflax.configs import UsageError
from bigflax.evals import lm_eval_model as lm_lib


def task_manager(harness_config, names: list[str]) -> TaskManager:
  """Only the tasks under include_path when those are all it names (indexing lm-eval's
  ~15,000 own tasks takes ~20 s), else lm-eval's too."""
  include = harness_config.include_path
  if include and not os.path.isdir(include):
    raise UsageError(
      f"harness.include_path={include!r} is not a directory; it holds "
      f"lm-eval task YAMLs (experiments/harness ships local ones)."
    )
  local = TaskManager(include_path=include or None, include_defaults=False)
  if all(n in local.all_tasks for n in names):
    return local
  manager = TaskManager(include_path=include or None)
  unknown = [n for n in names if n not in manager.all_tasks]
  if unknown:
    raise UsageError(
      f"harness.tasks: lm-eval has no task {unknown[0]!r}; the local ones "
      f"(harness.include_path={include!r}): {sorted(local.all_tasks)}."
    )
  return manager


def scalars(results: dict) -> dict:
  """lm-eval's results -> {"task/metric": value}, its ",filter" suffixes and standard
  errors dropped (the values the paper tables quote)."""
  flat = {}
  for task, metrics in results["results"].items():
    for key, value in metrics.items():
      metric = key.split(",")[0]
      if (
        isinstance(value, (int, float))
        and "_stderr" not in metric
        and metric not in ("alias", "sample_len")
      ):
        flat[f"{task}/{metric}"] = float(value)
  return flat


def run_tasks(lm: lm_lib.BigflaxLM, harness_config) -> dict:
  """The configured tasks (harness.tasks, .limit, .num_fewshot) on `lm`: lm-eval's whole
  results dict."""
  names = [n for entry in harness_config.tasks for n in entry.split(",") if n]
  if not names:
    raise UsageError(
      "harness.tasks is empty: name lm-eval tasks, e.g. "
      "--config.harness.tasks=stdlib_qa_choice,stdlib_perplexity."
    )
  manager = task_manager(harness_config, names)
  return lm_eval.simple_evaluate(
    model=lm,
    tasks=names,
    limit=harness_config.limit or None,
    num_fewshot=harness_config.num_fewshot if harness_config.num_fewshot >= 0 else None,
    task_manager=manager,
    log_samples=False,
    bootstrap_iters=0,
    random_seed=0,
    numpy_random_seed=0,
    torch_random_seed=0,
    fewshot_random_seed=0,
  )


def scorer(harness_config, model, tokenizer, mesh, rules, table: bool = False):
  """(params, step) -> scalars: harness_config's tasks on parameters in hand (the training
  loop's live ones: compiled once, no checkpoint round trip); `table` also prints lm-eval's
  table of the results (`bigflax eval --harness`)."""
  lm = lm_lib.BigflaxLM(
    model, None, tokenizer, mesh, rules, harness_config.batch_size, harness_config.max_gen_toks
  )

  def evaluate(params, step) -> dict:
    lm.params = params
    results = run_tasks(lm, harness_config)
    if table and jax.process_index() == 0:
      print(f"step {step}, lm-eval:\n{make_table(results)}")
    return {k: v for k, v in scalars(results).items() if math.isfinite(v)}

  return evaluate
