"""Tasks, registered by name: `config.task.name` picks one.

A task module provides the data it trains on and the functions the trainer calls:
  make_data(config, tokenizer, split, *, process_index, process_count) -> batches with
      `iterate(start_step)` and `batch(step)` (this process's rows of a global batch)
  init_inputs(config) -> example model inputs for `model.init`
  tokens_per_example(config) -> tokens in one example (for throughput and MFU)
  loss_fn(model, params, batch, rng) -> (loss, metrics)
  eval_fn(model, params, batch) -> dict of sums over the batch
  finalize(totals) -> metrics
"""

from bigflax.tasks import classify, lm, mlm, regression, sft

TASKS = {"lm": lm, "mlm": mlm, "regression": regression, "classify": classify,
         "sft": sft}


def get(name: str):
  if name not in TASKS:
    raise ValueError(f"task.name={name!r} is not a task; choose one of {sorted(TASKS)}.")
  return TASKS[name]


def trainer_loss(task, model):
  """The trainer's `loss_fn(params, batch, rng, frozen)` for a task that reads nothing
  frozen (every task but distillation)."""
  return lambda params, batch, rng, frozen: task.loss_fn(model, params, batch, rng)
