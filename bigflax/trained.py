"""A trained run's parameters, restored alone (no optimizer state, nothing initialised)
onto the devices the command runs on, and what reads them: eval, sample, export, serve."""

import dataclasses
import json
import os

from etils import epath
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bigflax import configs, evals, interop, models, run, tasks
from bigflax import workdir as workdir_lib
from bigflax.configs import UsageError
from bigflax.data import tokenizers
from bigflax.infer import bundle as bundle_lib
from bigflax.infer import export as export_lib
from bigflax.train import checkpoint, loop, partitioning
from bigflax.train import state as state_lib


@dataclasses.dataclass
class Trained:
  """A run's parameters at `step` on `mesh`, and what they mean."""

  config: object
  tokenizer: object  # None for tasks on numbers
  model: nn.Module
  task: tasks.Task
  step: int
  params: object
  shardings: object  # of params
  mesh: jax.sharding.Mesh


@dataclasses.dataclass
class Servable:
  """What `export` writes and `serve` runs: the task's inference functions of a run."""

  config: object
  tokenizer: object
  step: int
  params: object  # numpy; LoRA adapters folded in
  functions: dict  # name -> (fn, example args)
  meta: dict
  served_as: str


def restore(workdir, mesh=None, config=None, step: int | None = None, task=None) -> Trained:
  """The parameters of the run in `workdir` at `step` (default: its newest intact
  checkpoint), laid out on `mesh` (default: the run's mesh config over the devices
  present). `config` replaces the run's own config.json (promote judges a candidate on
  the incumbent's data); `task` is the config's, when the caller has it."""
  config = config or configs.load(workdir)
  task = task or tasks.get(config.task.name)
  directory = epath.Path(workdir_lib.checkpoints(workdir))
  if not (directory.is_dir() and checkpoint.latest_step(directory)):
    raise UsageError(
      f"No checkpoint in {directory}: train first "
      f"(`python -m bigflax train --config ... --workdir {workdir}`)."
    )
  tokenizer = run.load_tokenizer(config, workdir)
  model = run.build_model(config, tokenizer)
  mesh = mesh or partitioning.make_mesh(config.mesh.shape)
  target, shardings = state_lib.param_layout(
    run.model_init(config, task, model), mesh, partitioning.rules_tuple(config.mesh.rules)
  )
  step, params = checkpoint.restore_params_with_step(directory, target, step)
  return Trained(config, tokenizer, model, task, step, params, shardings, mesh)


@dataclasses.dataclass
class Evaluation:
  step: int
  metrics: dict  # the "validation" evaluators': the task's metrics
  others: dict  # {name: metrics} of the other evaluators


def run_evaluators(trained: Trained, workdir, split, entries, names=None, first=None) -> dict:
  """{name: metrics} of the evaluators of `entries` (config.evals' form; those named in
  `names`, None: all) on `trained`'s parameters and `split` of its data, computed exactly
  as training-time evaluation does: the task's metrics ("validation") first, then
  `first(step, those)` (a printed line), then the others."""
  config, task = trained.config, trained.task
  evaluators = run.evaluators(
    config,
    task,
    trained.model,
    trained.tokenizer,
    trained.mesh,
    trained.shardings,
    split,
    lambda: run.make_data(config, task, trained.tokenizer, split),
    workdir,
    entries,
    offline=True,
  )
  evaluators = [e for e in evaluators if names is None or e.name in names]
  run_these = lambda keep: loop.run_evaluators(
    [e for e in evaluators if keep(e.name)], trained.params, trained.step
  )
  with (
    jax.set_mesh(trained.mesh),
    nn.logical_axis_rules(partitioning.rules_tuple(config.mesh.rules)),
  ):
    results = run_these(lambda name: name == "validation")
    if first is not None:
      first(trained.step, results.get("validation", {}))
    results.update(run_these(lambda name: name != "validation"))
  return results


def evaluation(
  workdir, split, config=None, step: int | None = None, names=("validation",), first=None
) -> Evaluation:
  """The metrics of the run's checkpoint at `step` (default: its newest intact one) on
  `split` of its data by its evaluators named in `names` (default: the task's metrics;
  None: all but lm-eval's, which `--harness` runs); `first` as in run_evaluators."""
  trained = restore(workdir, config=config, step=step)
  entries = [e for e in evals.specs(trained.config, trained.task) if e.get("kind") != "harness"]
  results = run_evaluators(trained, workdir, split, entries, names, first)
  return Evaluation(trained.step, results.pop("validation", {}), results)


def evaluate(workdir, split, harness: str | None = None, harness_limit: int | None = None) -> dict:
  """`bigflax eval`: prints and writes (eval_{split}_{step}.json) the metrics of the run's
  evaluators on its latest checkpoint; returns the report. With `harness` (lm-eval tasks,
  comma-separated) it runs those instead, on a run or a HF directory."""
  if harness is not None:
    return evaluate_harness(workdir, harness, harness_limit)

  def show(step, metrics):  # before what the other evaluators print (a confusion matrix)
    if jax.process_index() == 0:
      print(f"step {step}, {split}: " + " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))

  result = evaluation(workdir, split, names=None, first=show)
  report = {"step": result.step, "split": split, "metrics": result.metrics}
  report.update(result.others.pop("report", {}))  # the task's fields: a confusion matrix
  report.update(result.others)  # any other evaluator's metrics, under its name
  if jax.process_index() == 0:
    prefix = workdir_lib.eval_report(workdir, split, result.step)
    epath.Path(prefix + ".json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report))
  return report


def evaluate_harness(workdir, harness_tasks: str, limit: int | None) -> dict:
  """`bigflax eval --harness=TASKS`: a harness evaluator of those tasks (and `limit`, else
  the run's harness.limit) on a run's latest checkpoint or a HF directory, printed as
  lm-eval's table; a run's report is also written to eval_harness_{step}.json. Returns the
  scalars."""
  trained = restore_language_model(workdir)
  limit = trained.config.harness.limit if limit is None else limit
  entry = dict(kind="harness", tasks=harness_tasks, limit=limit, every=0)
  scores = run_evaluators(trained, workdir, "validation", [entry])["harness"]
  if jax.process_index() == 0 and os.path.isdir(workdir_lib.checkpoints(workdir)):
    report = {
      "step": trained.step,
      "tasks": harness_tasks.split(","),
      "limit": limit,
      "metrics": scores,
    }
    path = workdir_lib.eval_report(workdir, "harness", trained.step) + ".json"
    epath.Path(path).write_text(json.dumps(report, indent=2))
    print(f"bigflax: wrote {path}")
  return scores


HF_SAMPLE_CACHE = 4096  # KV-cache slots for sampling a RoPE model from a HF directory


def hf_language_model(directory):
  """(config, params) of a HF language model's checkpoint directory (GPT-2, Llama, ...),
  with bigflax's defaults for the rest of the config."""
  kind = interop.model_type(directory)
  if kind not in interop.CAUSAL_LMS:
    raise UsageError(
      f"{directory} holds a {kind} checkpoint; sample needs a language model "
      f"({', '.join(interop.CAUSAL_LMS)})."
    )
  model_config, params = interop.import_checkpoint(directory)
  config = configs.base()
  config.model = model_config
  if model_config.get("position") == "rope":  # max_len is then only the KV cache's length:
    config.model.max_len = min(model_config["max_len"], HF_SAMPLE_CACHE)  # not 128k slots
  config.tokenizer = interop.TOKENIZERS[kind](directory)
  return config, params


def restore_language_model(source) -> Trained:
  """`restore` of a run directory, or a Hugging Face language-model directory imported
  (step 0, its parameters on one device as the HF checkpoint held them)."""
  if not interop.is_checkpoint(source):
    return restore(source)
  config, params = hf_language_model(source)
  tokenizer = tokenizers.from_config(config.tokenizer)
  model = run.build_model(config, tokenizer)
  mesh = partitioning.make_mesh(config.mesh.shape)
  return Trained(
    config,
    tokenizer,
    model,
    tasks.get(config.task.name),
    0,
    jax.tree.map(jnp.asarray, params),
    None,
    mesh,
  )


def sample(workdir, prompts=None, options=None):
  """Prints what the model of a run (or of a HF language model's directory) makes of `prompts`
  (default: config.sample.prompts); `options` as `tasks.Task.sample` takes them."""
  options = dict({"num_samples": 1}, **(options or {}))
  trained = restore_language_model(workdir)
  config, tokenizer, model = trained.config, trained.tokenizer, trained.model
  params, mesh, task = trained.params, trained.mesh, trained.task
  if task.sample is None:
    raise UsageError(
      f"task.name={config.task.name!r} has nothing to sample; tasks that "
      f"have: {sorted(n for n, t in tasks.TASKS.items() if t.sample)}."
    )
  prompts = list(config.sample.prompts) if prompts is None else prompts
  with jax.set_mesh(mesh), nn.logical_axis_rules(partitioning.rules_tuple(config.mesh.rules)):
    task.sample(config, model, tokenizer, params, prompts, options)


def servable(workdir, step: int | None = None) -> Servable:
  """A run's checkpoint at `step` (default: its newest intact one), on one device
  whatever the training mesh was, and its task's inference functions (see
  `tasks/lm.py:serving`)."""
  config = configs.load(workdir)
  task = tasks.get(config.task.name)
  if task.serving is None:
    raise UsageError(
      f"task.name={config.task.name!r} has no inference functions to export "
      f"or serve; tasks that have: "
      f"{sorted(n for n, t in tasks.TASKS.items() if t.serving)}."
    )
  trained = restore(
    workdir, partitioning.make_mesh({"data": 1}, jax.devices()[:1]), config, step, task
  )
  model, params = trained.model, jax.tree.map(np.asarray, trained.params)
  if models.lora_config(model) is not None:  # fold the adapters in: a plain model
    params = models.lora.merge(params, model.lora)
    model = model.clone(lora=None)
  functions, meta = task.serving(config, model, params, trained.tokenizer)
  return Servable(config, trained.tokenizer, trained.step, params, functions, meta, task.served_as)


def export(workdir, out) -> dict:
  """Writes the latest checkpoint of `workdir` as a self-contained bundle in `out`."""
  s = servable(workdir)
  card = export_lib.write(
    out,
    config=s.config,
    workdir=workdir,
    step=s.step,
    params=s.params,
    functions=s.functions,
    meta=s.meta,
    task=s.served_as,
  )
  print(
    f"bigflax: exported step {s.step} of {workdir} ({card['parameters']:,} parameters, "
    f"functions {sorted(s.functions)}) to {out}"
  )
  return card


def export_hf(workdir, out, dtype: str = "float32") -> None:
  """Writes the latest checkpoint of `workdir` (a GPT-2 or Llama-family GPT) as a HF
  checkpoint directory that transformers loads (LoRA adapters folded in)."""
  trained = restore(workdir, partitioning.make_mesh({"data": 1}, jax.devices()[:1]))
  model_config = dict(trained.config.model, vocab_size=trained.model.vocab_size)
  interop.export_checkpoint(out, model_config, jax.tree.map(np.asarray, trained.params), dtype)
  print(f"bigflax: wrote step {trained.step} of {workdir} as a HF checkpoint to {out}")


def load_served_model(source, step: int | None = None) -> bundle_lib.Bundle:
  """A bundle directory, or a run directory's checkpoint at `step` (default: its newest
  intact one) with the framework's own functions jitted: either way a `bundle.Bundle` for
  the server."""
  if os.path.exists(os.path.join(source, "bundle.json")):
    return bundle_lib.load(source)
  s = servable(source, step)
  jitted = {name: jax.jit(fn) for name, (fn, _) in s.functions.items()}
  return bundle_lib.Bundle(
    s.served_as,
    s.meta,
    jax.tree.map(jnp.asarray, s.params),
    jitted,
    s.tokenizer,
    info={"source": os.path.abspath(source), "trained_steps": s.step},
  )
