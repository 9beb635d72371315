"""The one shape of an evaluator, and what evaluators are built from."""

from collections.abc import Callable
import dataclasses
import functools

import jax
import ml_collections


@dataclasses.dataclass
class Evaluator:
  """Metrics of a run's parameters. Training runs it every `every` steps and at the last
  one (0: only `bigflax eval` does); evaluators sharing a `name` write one record of that
  name ("validation": the task's sums and predictions; "harness": lm-eval)."""

  name: str
  every: int
  run: Callable[[object, int], dict]  # (params, step) -> metrics
  # Which metrics the training log line shows (all of them go to the writers).
  printed: Callable[[str], bool] = lambda key: True


@dataclasses.dataclass
class Context:
  """A run's pieces as `run.py` (training) and `trained.py` (`bigflax eval`) hold them:
  what a builder may read."""

  config: ml_collections.ConfigDict  # the whole config
  task: object  # tasks.Task
  model: object
  tokenizer: object  # None for tasks on numbers
  mesh: jax.sharding.Mesh
  rules: tuple
  params_shardings: object
  batch_sharding: jax.sharding.NamedSharding
  split: str  # of the eval batches
  make_data: Callable[[], object]  # the batches of `split` (this process's rows)
  workdir: str  # where reports go
  offline: bool = False  # `bigflax eval`: print full reports (lm-eval's table)
  # What the evaluators of one run share: the jitted eval step, the last step's eval sums.
  shared: dict = dataclasses.field(default_factory=dict)

  @functools.cached_property
  def data(self):
    return self.make_data()

  def eval_batches(self):
    """This process's rows of every eval batch (train.eval_steps of them; 0: an epoch)."""
    steps = self.config.train.eval_steps or self.data.steps_per_epoch
    return (self.data.batch(i) for i in range(steps))

  def jit(self, step_fn: Callable) -> Callable:
    """`step_fn(params, batch)` compiled for the run's parameter and batch shardings."""
    return jax.jit(step_fn, in_shardings=(self.params_shardings, self.batch_sharding))
