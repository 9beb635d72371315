"""bigflax command line: `python -m bigflax COMMAND --config experiments/X.py --workdir DIR`.

Commands:
  train   train (or resume) the experiment in --workdir
  eval    the task's metrics for the latest checkpoint in --workdir (--split)
  sample  decode from the latest checkpoint in --workdir with a KV cache (or from a HF
          GPT-2 checkpoint directory given as --workdir)
  promote --candidate RUN --incumbent RUN: serve the candidate only if it is not worse
  launch  train on a Cloud TPU slice through gcloud (bigflax/launch.py; --help)
  sweep   a hyperparameter sweep, one run directory per trial (bigflax/sweep.py; --help)
  plan    --config X --topology v5e:4x4: will it fit, how fast, how costly (no --workdir)
  diff    RUN_A RUN_B: what differs between two runs' configs and environments
  export  write the latest checkpoint in --workdir as a self-contained bundle (--out)
  serve   serve --workdir, --bundle or --registry's promoted run over HTTP (--host, --port,
          --api_key, --feedback_dir)

This file wires config -> tokenizer, data, model, task -> the trainer; the parts below it
know nothing of one another.
"""

import difflib
import functools
import importlib
import importlib.util
import json
import os
import sys
import types

from absl import app, flags, logging
from etils import epath
import flax.linen as nn
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

from bigflax import configs, metrics, models, plan, promote, run_info, tasks
from bigflax.tasks import distill
from bigflax.data import pipeline, sources, tokenizers
from bigflax import interop
from bigflax.infer import bundle as bundle_lib
from bigflax.infer import decode, export as export_lib
from bigflax.train import checkpoint, loop, optim, partitioning, state as state_lib
from bigflax.train import step as step_lib

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment file, e.g. experiments/gpt_tiny.py"
                                " (or file.py:arg); override fields with --config.a.b=value.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, config.json.")
flags.DEFINE_string("split", "validation", "eval: the split to evaluate.")
flags.DEFINE_string("prompt", None, "sample: the prompt (default: config.sample.prompts).")
flags.DEFINE_integer("max_new_tokens", None, "sample: tokens to generate.")
flags.DEFINE_float("temperature", None, "sample: 0 = greedy.")
flags.DEFINE_integer("top_k", None, "sample: keep the k most likely tokens (0 = all).")
flags.DEFINE_float("top_p", None, "sample: nucleus sampling mass (1 = all).")
flags.DEFINE_integer("num_samples", 1, "sample: continuations per prompt.")
flags.DEFINE_integer("seed", None, "sample: rng seed.")
flags.DEFINE_string("out", None, "export: the bundle directory to write (new or empty); "
                    "plan: also write the report as JSON to this file.")
flags.DEFINE_string("bundle", None, "serve: an exported bundle (instead of --workdir).")
flags.DEFINE_string("host", "127.0.0.1", "serve: the address to bind; 0.0.0.0 exposes the "
                    "server to the network.")
flags.DEFINE_integer("port", 8000, "serve: the port.")
flags.DEFINE_string("api_key", None, "serve: if set, requests need 'Authorization: Bearer "
                    "KEY'.")
flags.DEFINE_integer("max_batch", 8, "serve: rows (prompts x n, or inputs) per forward batch.")
flags.DEFINE_float("max_wait_ms", 10.0, "serve: how long a batch waits for more requests.")
flags.DEFINE_bool("warmup", False, "serve: compile every batch shape before serving.")
flags.DEFINE_string("coordinator_address", None, "Multi-process: host:port of process 0 "
                    "(jax.distributed). On Cloud TPU leave unset and pass --distributed.")
flags.DEFINE_integer("num_processes", None, "Multi-process: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-process: this process's index.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() with the "
                  "platform's defaults (Cloud TPU pods, SLURM).")
flags.DEFINE_string("candidate", None, "promote: the run that may replace the incumbent.")
flags.DEFINE_string("incumbent", None, "promote: the served run; its data's --split is the "
                    "held-out set both runs are judged on.")
flags.DEFINE_string("metric", None, "promote: the deciding metric (default: accuracy for "
                    "classifiers, loss otherwise).")
flags.DEFINE_float("min_delta", 0.0, "promote: the improvement required (0 = not worse).")
flags.DEFINE_string("registry", None, "promote: directory of served.json and "
                    "promotions.jsonl (default: the incumbent's parent directory). serve: "
                    "serve the run served.json names and swap in each newly promoted one.")
flags.DEFINE_string("feedback_dir", None, "serve: log every answer as JSON lines here and "
                    "take ratings on POST /v1/feedback (a dataset for data.name=feedback).")
flags.DEFINE_string("topology", "local", "plan: a TPU slice (v5e:4x4, v5p:2x2x2, v4:2x2x1, "
                    "v6e:8x8, ...) or 'local' (the devices present).")
flags.DEFINE_float("tokens", None, "plan: a token budget, for wall time and cost.")
flags.DEFINE_float("price_per_chip_hour", None, "plan: price of one chip-hour, for the cost.")
flags.DEFINE_bool("traceback", False, "Show full tracebacks for configuration errors.")

COMMANDS = ("train", "eval", "sample", "promote", "plan", "diff", "export", "serve")
NO_WORKDIR = ("promote", "plan", "diff", "serve")  # serve takes --workdir or --bundle
ADAPTERS_FILE = "adapters.safetensors"  # a LoRA run's adapters, written when training ends


class UsageError(Exception):
  """A mistake in the command line, config or workdir: reported without a traceback."""


def initialize_distributed():
  if FLAGS.coordinator_address or (FLAGS.num_processes or 1) > 1:
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes,
                               process_id=FLAGS.process_id)
  elif FLAGS.distributed:
    jax.distributed.initialize()


def build_tokenizer(config, workdir):
  """The run's tokenizer (None for tasks on numbers: `tokenizer.kind='none'`)."""
  if config.tokenizer.kind == "none":
    return None
  texts = lambda: pipeline.load_text_split(config.data.name, "train", config.data.data_dir,
                                           config.data.source_dir)
  return tokenizers.build(config.tokenizer, texts, os.path.join(workdir, "tokenizer"))


def build_model(config, tokenizer, **overrides):
  if tokenizer is None or "vocab_size" not in models.fields(config.model.name):
    return models.build(config.model, **overrides)
  # 0 = the tokenizer's size plus one spare row (MLM's [MASK] where the tokenizer has
  # none), rounded up to a multiple of 128 so the vocab dimension shards evenly.
  vocab_size = config.model.get("vocab_size") or -(-(tokenizer.vocab_size + 1) // 128) * 128
  if vocab_size < tokenizer.vocab_size:
    raise UsageError(f"model.vocab_size={vocab_size} is smaller than the tokenizer's "
                     f"{tokenizer.vocab_size}; set it to 0 to use the tokenizer's size.")
  return models.build(config.model, vocab_size=vocab_size, **overrides)


def param_init(config, model):
  """`init(rng) -> params` (boxed with logical axis names) of the run's model."""
  inputs = tasks.get(config.task.name).init_inputs(config)

  def init(rng):
    params = model.init(rng, *inputs)["params"]
    if config.distill.teacher and config.distill.hidden_weight:
      teacher_dim = configs.load(config.distill.teacher).model.embed_dim
      params[distill.PROJECTION] = distill.init_projection(
          jax.random.fold_in(rng, 1), config.model.embed_dim, teacher_dim)
    return params
  return init


def build_state(config, model, mesh):
  """(state, shardings, lr schedule, optimizer): a fresh state, laid out on the mesh."""
  optimizer, schedule = optim.make(config.optim, config.train.num_steps,
                                   train_only=trainable(config, model))
  state, shardings = state_lib.create(param_init(config, model), optimizer,
                                      jax.random.key(config.seed), mesh, config.mesh.rules)
  if getattr(model, "lora", None) and not models.lora.adapters(state.params):
    raise UsageError(f"model.lora.targets={model.lora.targets!r} matches no projection "
                     f"kernel (paths look like 'layer_0/attention/query/kernel').")
  return state, shardings, schedule, optimizer


def trainable(config, model) -> str:
  """With LoRA only the adapters train, plus what `init_new` keeps fresh (a new head);
  "" (no LoRA) trains everything optim.freeze does not freeze."""
  if getattr(model, "lora", None) is None:
    return ""
  return "|".join(p for p in (models.lora.ADAPTERS, config.init_new) if p)


def build_train_step(config, model, optimizer, schedule, loss_fn=None):
  """The trainer's step over the task's loss, or over `loss_fn` (a distillation's)."""
  if loss_fn is None:
    options = {}
    if config.task.name == "seq2seq":
      options["label_smoothing"] = config.task.label_smoothing
    loss_fn = tasks.trainer_loss(tasks.get(config.task.name), model, **options)
  return step_lib.make_train_step(
      loss_fn, optimizer, schedule, config.train.microbatches,
      trained=functools.partial(optim.trained_mask, config.optim,
                                train_only=trainable(config, model)))


def build_step_layout(config, model, mesh):
  """The trainer's train step and its state laid out on `mesh`, nothing allocated:
  (abstract state, state shardings, batch sharding, train step). `bigflax plan` compiles
  exactly this, through `loop.jit_train_step`, for a TPU slice it does not have."""
  optimizer, schedule = optim.make(config.optim, config.train.num_steps,
                                   train_only=trainable(config, model))
  abstract_state, shardings = state_lib.layout(param_init(config, model), optimizer,
                                               jax.random.key(config.seed), mesh,
                                               config.mesh.rules)
  batch_sharding = partitioning.batch_sharding(mesh, partitioning.rules_tuple(config.mesh.rules))
  return (abstract_state, shardings, batch_sharding,
          build_train_step(config, model, optimizer, schedule))


def build_teacher(config, tokenizer, mesh, rules):
  """A distillation's frozen teacher: (model, params, shardings), the model from the
  teacher run's config.json, its latest parameters laid out by this run's rules."""
  teacher_dir = config.distill.teacher
  teacher_config = configs.load(teacher_dir)
  if teacher_config.task.name != config.task.name:
    raise UsageError(f"distill.teacher={teacher_dir} was trained on task "
                     f"{teacher_config.task.name!r}, this run on {config.task.name!r}.")
  teacher_tokenizer = None
  if tokenizer is not None:
    teacher_tokenizer = tokenizers.load(os.path.join(teacher_dir, "tokenizer"))
    probe = "def distill(teacher):\n  return 'student' # 42"
    if (teacher_tokenizer.vocab_size != tokenizer.vocab_size
        or teacher_tokenizer.encode(probe) != tokenizer.encode(probe)):
      raise UsageError(f"distill.teacher={teacher_dir} uses another tokenizer than this "
                       f"run; set tokenizer.* as in {teacher_dir}/config.json.")
  teacher = build_model(teacher_config, teacher_tokenizer)
  inputs = tasks.get(teacher_config.task.name).init_inputs(teacher_config)
  boxed = jax.eval_shape(lambda: teacher.init(jax.random.key(0), *inputs)["params"])
  shardings = partitioning.logical_shardings(boxed, mesh, rules)
  source = checkpoint.restore_params(os.path.join(teacher_dir, "checkpoints"))
  params, _ = state_lib.merge_params(state_lib.abstract(shardings, nn.unbox(boxed)), source)
  return teacher, params, shardings


def initialize_from(config, state, mesh):
  """`state` started from `config.init_from`: its parameters, and with
  `init_keep_optimizer` its optimizer state too."""
  if not config.init_keep_optimizer:
    return state.replace(params=init_params(config, state.params))
  source = checkpoint.manager(os.path.join(config.init_from, "checkpoints"), keep=None)
  restored = checkpoint.restore(source, state)
  if restored is None:
    raise UsageError(f"init_keep_optimizer needs init_from={config.init_from!r} to be a "
                     f"bigflax workdir with checkpoints.")
  print(f"bigflax: init_from {config.init_from}: parameters and optimizer state of its "
        f"step {int(restored[0].step)}", flush=True)
  return state.replace(params=restored[0].params, opt_state=restored[0].opt_state)


def init_params(config, params):
  """`params` with every parameter found in `config.init_from` (a bigflax workdir's latest
  checkpoint or a Hugging Face checkpoint directory) taken from there; prints a report."""
  source_dir = config.init_from
  if (epath.Path(source_dir) / "model.safetensors").exists():
    _, source = interop.import_checkpoint(source_dir, config.model.get("scan_layers", False))
  elif (epath.Path(source_dir) / "checkpoints").is_dir():
    source = checkpoint.restore_params(os.path.join(source_dir, "checkpoints"))
  else:
    raise UsageError(f"init_from={source_dir!r} is neither a bigflax workdir with "
                     f"checkpoints nor a directory holding model.safetensors.")
  if config.model.name == "vit":  # a checkpoint of another resolution: resize its grid
    source = models.vit.adapt_to_resolution(source, params)
  # LoRA adapters the source lacks start fresh (B = 0: the source model's outputs).
  params, report = state_lib.merge_params(params, source, config.init_new,
                                          optional=models.lora.ADAPTERS)
  print(f"bigflax: init_from {source_dir}: restored {len(report['restored'])} parameters, "
        f"{len(report['new'])} new {report['new']}, {len(report['unused'])} unused "
        f"{report['unused']}", flush=True)
  return params


def build_run(config, workdir, mesh=None, eval_split="validation", save_config=True):
  """Everything a training run needs, from the config: (loop.Run, model, tokenizer).

  Restores the latest checkpoint in `workdir` if there is one.
  """
  configs.validate(config)
  if (epath.Path(workdir) / "checkpoints").exists():
    configs.check_resumable(configs.load(workdir), config, workdir)
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  tokenizer = build_tokenizer(config, workdir)
  model = build_model(config, tokenizer)
  mesh = mesh or partitioning.make_mesh(config.mesh.shape)
  rules = partitioning.rules_tuple(config.mesh.rules)
  task = tasks.get(config.task.name)
  data = lambda split: task.make_data(config, tokenizer, split,
                                      process_index=jax.process_index(),
                                      process_count=jax.process_count())
  train_data, eval_data = data("train"), data(eval_split)

  state, shardings, schedule, optimizer = build_state(config, model, mesh)
  checkpoints = checkpoint.manager(os.path.join(workdir, "checkpoints"),
                                   config.train.keep_checkpoints,
                                   config.train.async_checkpoints)
  restored = checkpoint.restore(checkpoints, state)
  if restored is not None:
    state, data_position = restored
    print(f"bigflax: restored the checkpoint of step {int(state.step)} (data position "
          f"{data_position}).")
  elif config.init_from:
    state = initialize_from(config, state, mesh)
  if save_config and jax.process_index() == 0:
    configs.save(config, workdir)
    run_info.record(workdir, mesh, int(state.step))

  num_params = int(sum(x.size for x in jax.tree.leaves(state.params)))
  tokens_per_step = config.data.global_batch_size * task.tokens_per_example(config)
  flops_per_token = models.FLOPS_PER_TOKEN[config.model.name](
      config.model, num_params, config.data.seq_len)
  print(f"bigflax: {num_params:,} parameters on a {dict(mesh.shape)} mesh of "
        f"{mesh.devices.size} {jax.devices()[0].platform} devices, {jax.process_count()} "
        f"process(es)", flush=True)
  if config.task.name == "lm":
    baseline = pipeline.unigram_entropy(train_data.arrays["targets"], tokenizer.vocab_size)
    print(f"bigflax: unigram baseline loss {baseline:.3f} nats/token", flush=True)
  predict = {}
  if config.task.name == "seq2seq":  # BLEU/chrF of decoded translations
    predict = dict(
        predict_step=functools.partial(task.predict_fn, model, config, tokenizer),
        finalize_predictions=functools.partial(task.finalize_predictions, config,
                                               tokenizer, eval_split))
  loss_fn = None  # the task's own; a distillation's below
  teacher_params = teacher_shardings = None
  if config.distill.teacher:
    teacher, teacher_params, teacher_shardings = build_teacher(config, tokenizer, mesh, rules)
    loss_fn = functools.partial(distill.loss_fn, task, model, teacher, config.distill)
    print(f"bigflax: distilling from {config.distill.teacher} "
          f"({state_lib.num_params(teacher_params):,} parameters)", flush=True)

  run = loop.Run(
      config=config.train, workdir=workdir, mesh=mesh, rules=rules, state=state,
      state_shardings=shardings,
      batch_sharding=partitioning.batch_sharding(mesh, rules),
      train_step=build_train_step(config, model, optimizer, schedule, loss_fn),
      eval_step=functools.partial(task.eval_fn, model), finalize_eval=task.finalize,
      train_batches=train_data.iterate,
      eval_batches=lambda: (eval_data.batch(i) for i in range(
          config.train.eval_steps or eval_data.steps_per_epoch)),
      tokens_per_step=tokens_per_step, flops_per_step=flops_per_token * tokens_per_step,
      checkpoints=checkpoints, frozen=teacher_params, frozen_shardings=teacher_shardings,
      **predict)
  return run, model, tokenizer


def train(config, workdir):

  run, model, tokenizer = build_run(config, workdir)
  state = loop.train(run)
  if getattr(model, "lora", None) is not None:  # the adapters alone, a few MB to ship
    adapters = multihost_utils.process_allgather(models.lora.adapters(state.params),
                                                 tiled=True)
    if jax.process_index() == 0:
      models.lora.save(os.path.join(workdir, ADAPTERS_FILE), adapters)
      print(f"bigflax: LoRA adapters of step {int(state.step)} in "
            f"{os.path.join(workdir, ADAPTERS_FILE)}", flush=True)
  # Language models end with samples (answers to config.sample.prompts after SFT); every
  # process decodes, process 0 prints.
  if config.task.name in ("lm", "sft") and int(state.step) == config.train.num_steps:
    longest = max(len(tokenizer.encode(p)) for p in config.sample.prompts) + 1
    with jax.set_mesh(run.mesh):  # samples fit the context whatever config.sample asks
      print_samples(config, model, tokenizer, state.params, config.sample.prompts,
                    num_samples=1, max_new_tokens=min(config.sample.max_new_tokens,
                                                      model.max_len - longest))
  if config.task.name == "seq2seq" and int(state.step) == config.train.num_steps:
    with jax.set_mesh(run.mesh), nn.logical_axis_rules(run.rules):
      print_translations(config, model, tokenizer, state.params, config.sample.prompts)


def print_samples(config, model, tokenizer, params, prompts, num_samples, **overrides):


  s = dict(config.sample, **{k: v for k, v in overrides.items() if v is not None})
  decode_model = model.clone(decode=True)
  for i, prompt in enumerate(prompts):
    ids = [tokenizer.eos_id] + tokenizer.encode(prompt)  # eos marks a document start
    if len(ids) + s["max_new_tokens"] > model.max_len:
      raise UsageError(
          f"The prompt ({len(ids)} tokens) plus --max_new_tokens={s['max_new_tokens']} "
          f"exceeds the model's context (model.max_len={model.max_len}); shorten one.")
    tokens = decode.generate(
        decode_model, params, jnp.asarray([ids] * num_samples),
        jax.random.key(s["seed"] + i), max_new_tokens=s["max_new_tokens"],
        temperature=s["temperature"], top_k=s["top_k"], top_p=s["top_p"],
        vocab_size=tokenizer.vocab_size)
    tokens = multihost_utils.process_allgather(tokens, tiled=True)
    for row in tokens if jax.process_index() == 0 else []:
      print(f"--- sample ({prompt!r}) ---\n{prompt}{tokenizer.decode(row.tolist())}")


def evaluation(config, workdir, split):
  """(step, metrics, totals) of the latest checkpoint in `workdir` on `split` of
  `config.data`, computed exactly as training-time evaluation does."""
  if not (epath.Path(workdir) / "checkpoints").is_dir():
    raise UsageError(f"No checkpoints in {workdir}: train first.")
  run, _, _ = build_run(config, workdir, eval_split=split, save_config=False)
  step = int(run.state.step)
  if step == 0:
    raise UsageError(f"No checkpoint in {workdir}/checkpoints: train first.")
  with jax.set_mesh(run.mesh), nn.logical_axis_rules(run.rules):
    totals = loop.evaluate_totals(run, run.state.params, loop.jit_eval_step(run))
    results = run.finalize_eval(totals)
    if run.predict_step is not None:
      results.update(loop.evaluate_predictions(run, run.state.params,
                                               loop.jit_predict_step(run)))
  return step, results, totals


def evaluate(workdir, split):
  """Prints and writes (eval_{split}_{step}.json) the task's metrics of the latest
  checkpoint."""
  config = configs.load(workdir)
  step, results, totals = evaluation(config, workdir, split)
  report = {"step": step, "split": split, "metrics": results}
  names = sources.class_names(config.data.name)  # None: classes by index
  if "confusion" in totals:
    report["confusion_matrix"] = metrics.confusion_matrix_json(totals["confusion"], names)
  if jax.process_index() == 0:
    name = os.path.join(workdir, f"eval_{split}_{step}")
    epath.Path(name + ".json").write_text(json.dumps(report, indent=2))
    print(f"step {step}, {split}: " + " ".join(f"{k}={v:.4f}" for k, v in results.items()))
    if "confusion" in totals:
      metrics.save_confusion_matrix_png(totals["confusion"], name + "_confusion.png", names)
      print(metrics.format_confusion_matrix(totals["confusion"], names))
      print(f"confusion matrix: {name}_confusion.png")
    print(json.dumps(report))


def promote_run(candidate, incumbent, split, metric, min_delta, registry):
  """Evaluates both runs on the incumbent's held-out data; the candidate becomes the
  registry's served run only if its improvement is at least `min_delta` (0: not worse)."""
  incumbent_config = configs.load(incumbent)
  candidate_config = configs.load(candidate)
  if candidate_config.task.name != incumbent_config.task.name:
    raise UsageError(f"--candidate={candidate} is a {candidate_config.task.name!r} run, "
                     f"--incumbent={incumbent} a {incumbent_config.task.name!r} run.")
  # The one held-out set both are judged on: the incumbent's.
  candidate_config.unlock().data = incumbent_config.data
  metric = metric or promote.default_metric(incumbent_config.task.name)
  scores = {}
  for role, workdir, config in (("incumbent", incumbent, incumbent_config),
                                ("candidate", candidate, candidate_config)):
    step, results, _ = evaluation(config, workdir, split)
    if metric not in results:
      raise UsageError(f"--metric={metric} is not among the task's metrics: "
                       f"{', '.join(sorted(results))}.")
    scores[role] = (step, results)
  decision = dict(
      **promote.decide(metric, scores["candidate"][1], scores["incumbent"][1], min_delta),
      split=split, candidate=os.path.abspath(candidate),
      candidate_step=scores["candidate"][0], candidate_metrics=scores["candidate"][1],
      incumbent=os.path.abspath(incumbent), incumbent_step=scores["incumbent"][0],
      incumbent_metrics=scores["incumbent"][1])
  registry = registry or os.path.dirname(os.path.abspath(incumbent))
  if jax.process_index() == 0:
    promote.record(registry, decision)
    verdict = "PROMOTED" if decision["promoted"] else "kept out"
    print(f"{metric}: candidate {scores['candidate'][1][metric]:.4f}, incumbent "
          f"{scores['incumbent'][1][metric]:.4f} (improvement "
          f"{decision['improvement']:+.4f}, needed "
          f"{min_delta:+.4f}): candidate {verdict}; log: {registry}/{promote.LOG}")
    print(json.dumps(decision))
  return decision


def sample(workdir):
  """Samples from a run's latest checkpoint, or from a HF GPT-2 directory as it is."""
  hf_checkpoint = os.path.exists(os.path.join(workdir, "model.safetensors"))
  if hf_checkpoint:
    config, params = hf_language_model(workdir)
    tokenizer = tokenizers.GPT2Tokenizer()
  else:
    config = configs.load(workdir)
    tokenizer = tokenizers.load(os.path.join(workdir, "tokenizer"))
  model = build_model(config, tokenizer)
  mesh = partitioning.make_mesh(config.mesh.shape)
  if not hf_checkpoint:
    state, _, _, _ = build_state(config, model, mesh)
    checkpoints = checkpoint.manager(os.path.join(workdir, "checkpoints"), keep=1)
    restored = checkpoint.restore(checkpoints, state)
    if restored is None:
      raise UsageError(f"No checkpoint in {workdir}/checkpoints: train first "
                       f"(`python -m bigflax train --config ... --workdir {workdir}`).")
    params = restored[0].params
  prompts = [FLAGS.prompt] if FLAGS.prompt is not None else list(config.sample.prompts)
  rules = partitioning.rules_tuple(config.mesh.rules)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    if config.task.name == "seq2seq":
      print_translations(config, model, tokenizer, params, prompts)
      return
    print_samples(config, model, tokenizer, params, prompts, FLAGS.num_samples,
                  max_new_tokens=FLAGS.max_new_tokens, temperature=FLAGS.temperature,
                  top_k=FLAGS.top_k, top_p=FLAGS.top_p, seed=FLAGS.seed)


def print_translations(config, model, tokenizer, params, sentences):
  """Each sentence translated by the run's decoder (config.task.beam_size beams)."""
  frame = dict(bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
  source, source_mask = pipeline.frame_sentences(tokenizer.encode_batch(sentences),
                                                 config.data.seq_len, **frame)
  batch = {"source": jnp.asarray(source), "source_mask": jnp.asarray(source_mask)}
  predictions = tasks.get("seq2seq").predict_fn(model, config, tokenizer, params, batch)
  for sentence, row in zip(sentences, jax.device_get(predictions)):
    if jax.process_index() == 0:
      print(f"--- translation ({sentence!r}) ---\n"
            f"{tasks.get('seq2seq').detokenize(tokenizer, row.tolist())}")


def plan_model(config):
  """The model `train` would build, without its data: a vocabulary size the tokenizer
  would give comes from the tokenizer config."""
  if "vocab_size" not in models.fields(config.model.name) or config.model.get("vocab_size"):
    return models.build(config.model)
  if config.tokenizer.kind == "byte":
    size = tokenizers.ByteTokenizer.vocab_size
  elif config.tokenizer.kind == "sentencepiece" and config.tokenizer.get("vocab_size"):
    size = config.tokenizer.vocab_size
  else:
    raise UsageError(f"plan cannot tell the vocabulary size of tokenizer.kind="
                     f"{config.tokenizer.kind!r} without its files; set "
                     f"--config.model.vocab_size.")
  return build_model(config, types.SimpleNamespace(vocab_size=size))


def plan_run(config):
  """Prints the plan of `config` on --topology as a table, then as one line of JSON."""
  configs.validate(config)
  build = lambda config, mesh: build_step_layout(config, plan_model(config), mesh)
  report = plan.plan(config, FLAGS.topology, build, FLAGS.tokens, FLAGS.price_per_chip_hour)
  print(plan.format_report(report))
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      f.write(plan.to_json(report))
  print(json.dumps(json.loads(plan.to_json(report))))


def hf_language_model(directory):
  """(config, params) of a HF GPT-2 checkpoint directory, with bigflax's defaults for the
  rest of the config."""
  model_config, params = interop.import_checkpoint(directory)
  if model_config["name"] != "gpt":
    raise UsageError(f"{directory} holds a {model_config['name']} checkpoint; sample needs "
                     f"a language model (GPT-2).")
  config = configs.base()
  config.model = model_config
  config.tokenizer.kind = "gpt2"
  return config, params


def load_for_inference(workdir):
  """The latest checkpoint of a run and its task's inference functions:
  (config, tokenizer, step, params, functions, meta); see `tasks/lm.py:serving`."""
  config = configs.load(workdir)
  task = tasks.get(config.task.name)
  if not hasattr(task, "serving"):
    raise UsageError(f"task.name={config.task.name!r} has no inference functions to export "
                     f"or serve; tasks that have: "
                     f"{sorted(n for n, t in tasks.TASKS.items() if hasattr(t, 'serving'))}.")
  tokenizer = (None if config.tokenizer.kind == "none"
               else tokenizers.load(os.path.join(workdir, "tokenizer")))
  model = build_model(config, tokenizer)
  # Restored onto one device, whatever the training mesh was.
  state, _, _, _ = build_state(config, model, partitioning.make_mesh({"data": 1},
                                                                    jax.devices()[:1]))
  restored = checkpoint.restore(
      checkpoint.manager(os.path.join(workdir, "checkpoints"), keep=1), state)
  if restored is None:
    raise UsageError(f"No checkpoint in {workdir}/checkpoints: train first.")
  step, params = int(restored[0].step), jax.tree.map(np.asarray, restored[0].params)
  if getattr(model, "lora", None) is not None:  # fold the adapters in: a plain model
    params = models.lora.merge(params, model.lora)
    model = model.clone(lora=None)
  functions, meta = task.serving(config, model, params, tokenizer)
  return config, tokenizer, step, params, functions, meta


def served_as(config) -> str:
  """What a run is served as: its task's SERVED_AS (sft: "lm") or else the task's name."""
  return getattr(tasks.get(config.task.name), "SERVED_AS", config.task.name)


def export(workdir, out):
  config, _, step, params, functions, meta = load_for_inference(workdir)
  card = export_lib.write(out, config=config, workdir=workdir, step=step, params=params,
                          functions=functions, meta=meta, task=served_as(config))
  print(f"bigflax: exported step {step} of {workdir} ({card['parameters']:,} parameters, "
        f"functions {sorted(functions)}) to {out}")


def load_served_model(source):
  """A bundle directory, or a run directory's latest checkpoint with the framework's own
  functions jitted: either way a `bundle.Bundle` for the server."""
  if os.path.exists(os.path.join(source, "bundle.json")):
    return bundle_lib.load(source)
  config, tokenizer, step, params, functions, meta = load_for_inference(source)
  jitted = {name: jax.jit(fn) for name, (fn, _) in functions.items()}
  return bundle_lib.Bundle(served_as(config), meta, jax.tree.map(jnp.asarray, params), jitted,
                           tokenizer, info={"source": os.path.abspath(source),
                                            "trained_steps": step})


def serve_command(source):
  try:
    from bigflax.infer import serve  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise UsageError(f"serve needs the HTTP libraries ({e.name} is missing): "
                     f"pip install -e '.[serve]'") from e
  serve.run(load_served_model, source, host=FLAGS.host, port=FLAGS.port,
            api_key=FLAGS.api_key, max_batch=FLAGS.max_batch, max_wait_ms=FLAGS.max_wait_ms,
            warmup=FLAGS.warmup, feedback_dir=FLAGS.feedback_dir, registry=FLAGS.registry)


def main(argv):
  command = argv[1] if len(argv) > 1 else None
  if command not in COMMANDS or len(argv) != (4 if command == "diff" else 2):
    raise app.UsageError(f"Give one command, one of {COMMANDS} (diff RUN_A RUN_B); got "
                         f"{argv[1:]}.")
  if command == "serve" and (FLAGS.workdir and FLAGS.bundle
                             or not (FLAGS.workdir or FLAGS.bundle or FLAGS.registry)):
    raise app.UsageError("serve needs --workdir or --bundle (not both), or --registry (then "
                         "it serves the run the registry's served.json names).")
  if command == "export" and not FLAGS.out:
    raise app.UsageError("export needs --out: the bundle directory to write.")
  if not FLAGS.workdir and command not in NO_WORKDIR:
    raise app.UsageError("--workdir is required.")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax's INFO logs would drown the progress bar
  try:
    if command == "diff":
      print(run_info.format_diff(argv[2], argv[3], run_info.diff(argv[2], argv[3])))
      return
    if command == "plan":
      if FLAGS.config is None:
        raise UsageError("plan needs --config experiments/<name>.py.")
      return plan_run(FLAGS.config)
    initialize_distributed()
    if command == "promote":
      for name in ("candidate", "incumbent"):
        if not FLAGS[name].value or not os.path.isdir(FLAGS[name].value):
          raise UsageError(f"--{name}={FLAGS[name].value} is not a run directory.")
      promote_run(FLAGS.candidate, FLAGS.incumbent, FLAGS.split, FLAGS.metric,
                  FLAGS.min_delta, FLAGS.registry)
    elif command == "train":
      if FLAGS.config is None:
        raise UsageError("train needs --config experiments/<name>.py.")
      train(FLAGS.config, FLAGS.workdir)
    else:
      flag = next(f for f in ("workdir", "bundle", "registry") if FLAGS[f].value)
      source = FLAGS[flag].value
      if not epath.Path(source).is_dir():
        raise UsageError(f"--{flag}={source} does not exist.")
      if command == "eval":
        evaluate(FLAGS.workdir, FLAGS.split)
      elif command == "export":
        export(FLAGS.workdir, FLAGS.out)
      elif command == "serve":
        serve_command(None if flag == "registry" else source)
      else:
        sample(FLAGS.workdir)
  except (UsageError, plan.PlanError, ValueError, OSError) as e:
    if FLAGS.traceback:
      raise
    print(f"bigflax {command}: error: {e}", file=sys.stderr)
    sys.exit(2)


def unknown_override(argv) -> str | None:
  """Names the first --config.a.b override that is not a field of the experiment's config."""

  config_arg = None
  for i, a in enumerate(argv):
    if a.startswith("--config="):
      config_arg = a.split("=", 1)[1]
    elif a == "--config" and i + 1 < len(argv):
      config_arg = argv[i + 1]
  if config_arg is None:
    return None
  path, _, arg = config_arg.partition(":")
  spec = importlib.util.spec_from_file_location("experiment", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg or None)
  for a in argv:
    if not a.startswith("--config."):
      continue
    node, name = config, "config"
    for key in a[len("--config."):].split("=", 1)[0].split("."):
      if not hasattr(node, "keys") or key not in node:
        fields = sorted(node.keys()) if hasattr(node, "keys") else []
        close = difflib.get_close_matches(key, fields, n=1)
        hint = f" Did you mean '{name}.{close[0]}'?" if close else ""
        return (f"{a.split('=')[0]}: '{key}' is not a field of {name}.{hint} "
                f"Fields of {name}: {', '.join(fields)}.")
      node, name = node[key], f"{name}.{key}"
  return None


def parse_flags(argv):
  """absl flag parsing, with config mistakes reported in one line instead of a traceback."""
  try:
    return FLAGS(argv)
  except Exception as e:  # absl/ml_collections raise several types for a bad override
    try:
      message = unknown_override(argv) or str(e)
    except Exception:  # the experiment file itself is broken: show the original error
      message = str(e)
    print(f"bigflax: error: {message}", file=sys.stderr)
    sys.exit(2)


def run():
  if sys.argv[1:2] in (["launch"], ["sweep"]):  # their own flags; they start train processes
    module = importlib.import_module(f"bigflax.{sys.argv[1]}")
    sys.exit(module.main(sys.argv[2:]))
  app.run(main, flags_parser=parse_flags)
