"""The task interface: everything the rest of bigflax may know about a task.

A task is a `Task` of functions, declared at the bottom of its module (`TASK = Task(...)`)
and registered by name in `tasks/__init__.py` (`tasks.register` adds one from anywhere, a
test or a notebook). Nothing outside `tasks/` asks which task it holds: it calls these.

Required:
  make_data(config, tokenizer, split, *, process_index, process_count) -> batches with
      `iterate(start_step)`, `batch(step)` and `steps_per_epoch` (this process's rows)
  init_inputs(config) -> example model inputs for `model.init`
  tokens_per_example(config) -> tokens in one example (throughput, MFU, plan)
  loss_fn(model, params, batch, rng, **loss_options(config)) -> (loss, metrics)
  eval_fn(model, params, batch) -> dict of sums over the batch (added up over all hosts)
  finalize(totals) -> metrics (eval_fn and finalize: the "sums" evaluator, bigflax/evals)

Optional (None: the task has no such thing):
  batch_spec(config) -> ShapeDtypeStructs of a global batch (`bigflax plan`)
  loss_options(config) -> extra keyword arguments of loss_fn in training
  outputs(model, params, batch, rngs) -> (logits, labels, weights): what distillation
      compares
  data_summary(config, tokenizer, train_data) -> a line printed when training starts
  prediction_metrics(config, model, tokenizer, split) -> (predict_step(params, batch) ->
      per-example outputs, finalize(outputs as numpy, rows in split order) -> metrics):
      metrics of generated outputs (BLEU of translations): the "predictions" evaluator
  eval_report(config, totals, prefix) -> extra report fields; may write files next to
      `prefix` (a confusion matrix) and print: the "report" evaluator (`bigflax eval`)
  sample(config, model, tokenizer, params, prompts, options) -> prints what the model
      makes of each prompt (`bigflax sample`); options: num_samples, max_new_tokens,
      temperature, top_k, top_p, seed (None: config.sample's)
  after_training(config, model, tokenizer, params) -> what a finished run prints (samples)
  serving(config, model, params, tokenizer) -> ({name: (fn, example args)}, meta): what
      `export` serialises and `serve` runs
  served_as: the kind of served model (`infer/serve`'s endpoints: "lm", "classify",
      "seq2seq"); given with `serving`
  default_metric: what `promote` and sweeps compare by default
"""

from collections.abc import Callable
import dataclasses


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  make_data: Callable
  init_inputs: Callable
  tokens_per_example: Callable
  loss_fn: Callable
  eval_fn: Callable
  finalize: Callable
  batch_spec: Callable | None = None
  loss_options: Callable = lambda config: {}
  outputs: Callable | None = None
  data_summary: Callable | None = None
  prediction_metrics: Callable | None = None
  eval_report: Callable | None = None
  sample: Callable | None = None
  after_training: Callable | None = None
  serving: Callable | None = None
  served_as: str = ""
  default_metric: str = "loss"
