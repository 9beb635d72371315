"""Tasks, registered by name: `config.task.name` picks one. The interface is `base.Task`."""

from bigflax.tasks import classify, lm, mlm, regression, seq2seq, sft
from bigflax.tasks.base import Task

TASKS = {
  t.name: t for t in (lm.TASK, sft.TASK, mlm.TASK, regression.TASK, classify.TASK, seq2seq.TASK)
}


def register(task: Task):
  """Makes `task` available as `config.task.name=task.name` (a new task needs nothing
  else; `tasks/base.py` lists what it provides)."""
  TASKS[task.name] = task


def get(name: str) -> Task:
  if name not in TASKS:
    raise ValueError(f"task.name={name!r} is not a task; choose one of {sorted(TASKS)}.")
  return TASKS[name]


def trainer_loss(task, model, **options):
  """The trainer's `loss_fn(params, batch, rng, frozen)` for a task that reads nothing
  frozen (every task but distillation); `options` go to the task's loss_fn."""
  return lambda params, batch, rng, frozen: task.loss_fn(model, params, batch, rng, **options)
