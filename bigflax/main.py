"""bigflax command line: `python -m bigflax COMMAND --config experiments/X.py --workdir DIR`.

Commands:
  train   train (or resume) the experiment in --workdir
  eval    the task's metrics for the latest checkpoint in --workdir (--split)
  sample  decode from the latest checkpoint in --workdir with a KV cache
  export  write the latest checkpoint in --workdir as a self-contained bundle (--out)
  serve   serve --workdir or --bundle over HTTP (--host, --port, --api_key)

This file wires config -> tokenizer, data, model, task -> the trainer; the parts below it
know nothing of one another.
"""

import difflib
import functools
import importlib.util
import json
import os
import sys

from absl import app, flags, logging
import flax.linen as nn
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

from bigflax import configs, metrics, models, tasks
from bigflax.data import pipeline, tokenizers
from bigflax.infer import bundle as bundle_lib
from bigflax.infer import decode, export as export_lib
from bigflax.interop import hf
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
flags.DEFINE_string("out", None, "export: the bundle directory to write (new or empty).")
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
flags.DEFINE_bool("traceback", False, "Show full tracebacks for configuration errors.")

COMMANDS = ("train", "eval", "sample", "export", "serve")


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


def build_state(config, model, mesh):
  """(state, shardings, lr schedule, optimizer): a fresh state, laid out on the mesh."""
  optimizer, schedule = optim.make(config.optim, config.train.num_steps)
  inputs = tasks.get(config.task.name).init_inputs(config)
  state, shardings = state_lib.create(lambda rng: model.init(rng, *inputs)["params"],
                                      optimizer, jax.random.key(config.seed), mesh,
                                      config.mesh.rules)
  return state, shardings, schedule, optimizer


def init_params(config, params):
  """`params` with every parameter found in `config.init_from` (a bigflax workdir's latest
  checkpoint or a Hugging Face checkpoint directory) taken from there; prints a report."""
  source_dir = config.init_from
  if os.path.exists(os.path.join(source_dir, "model.safetensors")):
    _, source = hf.import_bert(source_dir, scan_layers=config.model.get("scan_layers", False))
  elif os.path.isdir(os.path.join(source_dir, "checkpoints")):
    source = checkpoint.restore_params(os.path.join(source_dir, "checkpoints"))
  else:
    raise UsageError(f"init_from={source_dir!r} is neither a bigflax workdir with "
                     f"checkpoints nor a directory holding model.safetensors.")
  params, report = state_lib.merge_params(params, source, config.init_new)
  print(f"bigflax: init_from {source_dir}: restored {len(report['restored'])} parameters, "
        f"{len(report['new'])} new {report['new']}, {len(report['unused'])} unused "
        f"{report['unused']}", flush=True)
  return params


def build_run(config, workdir, mesh=None, eval_split="validation"):
  """Everything a training run needs, from the config: (loop.Run, model, tokenizer).

  Restores the latest checkpoint in `workdir` if there is one.
  """


  configs.validate(config)
  if os.path.exists(os.path.join(workdir, "checkpoints")):
    configs.check_resumable(configs.load(workdir), config, workdir)
  os.makedirs(workdir, exist_ok=True)
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
    state = state.replace(params=init_params(config, state.params))
  if jax.process_index() == 0:
    configs.save(config, workdir)

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

  run = loop.Run(
      config=config.train, workdir=workdir, mesh=mesh, rules=rules, state=state,
      state_shardings=shardings,
      batch_sharding=partitioning.batch_sharding(mesh, rules),
      train_step=step_lib.make_train_step(functools.partial(task.loss_fn, model), optimizer,
                                          schedule, config.train.microbatches),
      eval_step=functools.partial(task.eval_fn, model), finalize_eval=task.finalize,
      train_batches=train_data.iterate,
      eval_batches=lambda: (eval_data.batch(i) for i in range(
          config.train.eval_steps or eval_data.steps_per_epoch)),
      tokens_per_step=tokens_per_step, flops_per_step=flops_per_token * tokens_per_step,
      checkpoints=checkpoints)
  return run, model, tokenizer


def train(config, workdir):

  run, model, tokenizer = build_run(config, workdir)
  state = loop.train(run)
  # Language models end with samples; every process decodes, process 0 prints.
  if config.task.name == "lm" and int(state.step) == config.train.num_steps:
    longest = max(len(tokenizer.encode(p)) for p in config.sample.prompts) + 1
    with jax.set_mesh(run.mesh):  # samples fit the context whatever config.sample asks
      print_samples(config, model, tokenizer, state.params, config.sample.prompts,
                    num_samples=1, max_new_tokens=min(config.sample.max_new_tokens,
                                                      model.max_len - longest))


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


def evaluate(workdir, split):
  """Metrics of the latest checkpoint on `split`, computed exactly as training does."""
  config = configs.load(workdir)
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    raise UsageError(f"No checkpoints in {workdir}: train first.")
  run, _, _ = build_run(config, workdir, eval_split=split)
  step = int(run.state.step)
  if step == 0:
    raise UsageError(f"No checkpoint in {workdir}/checkpoints: train first.")
  with jax.set_mesh(run.mesh), nn.logical_axis_rules(run.rules):
    totals = loop.evaluate_totals(run, run.state.params, loop.jit_eval_step(run))
  results = run.finalize_eval(totals)
  report = {"step": step, "split": split, "metrics": results}
  if "confusion" in totals:
    report["confusion_matrix"] = metrics.confusion_matrix_json(totals["confusion"])
  if jax.process_index() == 0:
    name = os.path.join(workdir, f"eval_{split}_{step}")
    with open(name + ".json", "w") as f:
      json.dump(report, f, indent=2)
    print(f"step {step}, {split}: " + " ".join(f"{k}={v:.4f}" for k, v in results.items()))
    if "confusion" in totals:
      metrics.save_confusion_matrix_png(totals["confusion"], name + "_confusion.png")
      print(metrics.format_confusion_matrix(totals["confusion"]))
      print(f"confusion matrix: {name}_confusion.png")
    print(json.dumps(report))


def sample(workdir):


  config = configs.load(workdir)
  tokenizer = tokenizers.load(os.path.join(workdir, "tokenizer"))
  model = build_model(config, tokenizer)
  mesh = partitioning.make_mesh(config.mesh.shape)
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
    print_samples(config, model, tokenizer, params, prompts, FLAGS.num_samples,
                  max_new_tokens=FLAGS.max_new_tokens, temperature=FLAGS.temperature,
                  top_k=FLAGS.top_k, top_p=FLAGS.top_p, seed=FLAGS.seed)


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
  functions, meta = task.serving(config, model, params, tokenizer)
  return config, tokenizer, step, params, functions, meta


def export(workdir, out):
  config, _, step, params, functions, meta = load_for_inference(workdir)
  card = export_lib.write(out, config=config, workdir=workdir, step=step, params=params,
                          functions=functions, meta=meta)
  print(f"bigflax: exported step {step} of {workdir} ({card['parameters']:,} parameters, "
        f"functions {sorted(functions)}) to {out}")


def load_served_model(source):
  """A bundle directory, or a run directory's latest checkpoint with the framework's own
  functions jitted: either way a `bundle.Bundle` for the server."""
  if os.path.exists(os.path.join(source, "bundle.json")):
    return bundle_lib.load(source)
  config, tokenizer, step, params, functions, meta = load_for_inference(source)
  jitted = {name: jax.jit(fn) for name, (fn, _) in functions.items()}
  return bundle_lib.Bundle(config.task.name, meta, jax.tree.map(jnp.asarray, params), jitted,
                           tokenizer, info={"source": os.path.abspath(source),
                                            "trained_steps": step})


def serve_command(source):
  from bigflax.infer import serve  # pylint: disable=import-outside-toplevel
  serve.run(load_served_model, source, host=FLAGS.host, port=FLAGS.port,
            api_key=FLAGS.api_key, max_batch=FLAGS.max_batch, max_wait_ms=FLAGS.max_wait_ms,
            warmup=FLAGS.warmup)


def main(argv):
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f"Give one command, one of {COMMANDS}; got {argv[1:]}.")
  if argv[1] == "serve" and bool(FLAGS.workdir) == bool(FLAGS.bundle):
    raise app.UsageError("serve needs one of --workdir or --bundle.")
  if argv[1] == "export" and not FLAGS.out:
    raise app.UsageError("export needs --out: the bundle directory to write.")
  if not FLAGS.workdir and argv[1] != "serve":
    raise app.UsageError("--workdir is required.")
  command = argv[1]
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax's INFO logs would drown the progress bar
  try:
    initialize_distributed()
    if command == "train":
      if FLAGS.config is None:
        raise UsageError("train needs --config experiments/<name>.py.")
      train(FLAGS.config, FLAGS.workdir)
    else:
      source = FLAGS.workdir or FLAGS.bundle
      if not os.path.isdir(source):
        raise UsageError(f"--{'workdir' if FLAGS.workdir else 'bundle'}={source} does not "
                         f"exist.")
      if command == "eval":
        evaluate(FLAGS.workdir, FLAGS.split)
      elif command == "export":
        export(FLAGS.workdir, FLAGS.out)
      elif command == "serve":
        serve_command(source)
      else:
        sample(FLAGS.workdir)
  except (UsageError, ValueError, OSError) as e:
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
  app.run(main, flags_parser=parse_flags)
