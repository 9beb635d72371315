"""bigflax command line: `python -m bigflax COMMAND --config experiments/X.py --workdir DIR`.

Commands:
  train   train (or resume) the experiment in --workdir
  eval    the task's metrics for the latest checkpoint in --workdir (--split), or lm-eval
          tasks on it (--harness=TASKS; also on a HF directory)
  sample  decode from the latest checkpoint in --workdir with a KV cache (or from a HF
          GPT-2 checkpoint directory given as --workdir)
  promote --candidate RUN --incumbent RUN: serve the candidate only if it is not worse
  launch  train on a Cloud TPU slice through gcloud (bigflax/launch.py; --help)
  sweep   a hyperparameter sweep, one run directory per trial (bigflax/sweep.py; --help)
  prepare --config X: tokenize data.corpora once into shards in data.prepared_dir
  plan    --config X --topology v5e:4x4: will it fit, how fast, how costly (no --workdir)
  diff    RUN_A RUN_B: what differs between two runs' configs and environments
  export  write the latest checkpoint in --workdir as a self-contained bundle (--out)
  serve   serve --workdir, --bundle or --registry's promoted run over HTTP (--host, --port,
          --api_key, --feedback_dir)

Exit status: 0 done; 2 a mistake in the command line, config or workdir, or a diverged run
(train.max_skipped_steps); 75 `train` stopped by SIGTERM with its checkpoint saved: run the
same command again to resume.

Flags, dispatch and errors only: the work is in run.py (training), inference.py (eval,
sample, export, serve), promote.py, plan.py, run_info.py; this is the one reader of FLAGS.
"""

import json
import os
import sys

from absl import app, flags, logging
from etils import epath
import jax
from ml_collections import config_flags

from bigflax import configs, inference, plan, promote, run, run_info
from bigflax.configs import UsageError
from bigflax.data import prepare as data_prepare
from bigflax.train import loop

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment file, e.g. experiments/gpt_tiny.py"
                                " (or file.py:arg); override fields with --config.a.b=value.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, config.json.")
flags.DEFINE_string("split", "validation", "eval: the split to evaluate.")
flags.DEFINE_string("harness", None, "eval: lm-eval tasks to run instead (comma-separated; "
                    "local ones in experiments/harness), e.g. stdlib_qa_choice.")
flags.DEFINE_integer("harness_limit", None, "eval --harness: documents per task (default "
                     "the run's harness.limit; 0 = all).")
flags.DEFINE_string("prompt", None, "sample: the prompt (default: config.sample.prompts).")
flags.DEFINE_integer("max_new_tokens", None, "sample: tokens to generate.")
flags.DEFINE_float("temperature", None, "sample: 0 = greedy.")
flags.DEFINE_integer("top_k", None, "sample: keep the k most likely tokens (0 = all).")
flags.DEFINE_float("top_p", None, "sample: nucleus sampling mass (1 = all).")
flags.DEFINE_integer("num_samples", 1, "sample: continuations per prompt.")
flags.DEFINE_integer("seed", None, "sample: rng seed.")
flags.DEFINE_string("out", None, "export: the bundle directory to write (new or empty); "
                    "plan: also write the report as JSON to this file.")
flags.DEFINE_enum("format", "bundle", ["bundle", "hf", "hf_bf16"], "export: a bigflax "
                  "bundle, or a HF checkpoint directory (GPT-2 and Llama-family models; "
                  "float32 or bfloat16 safetensors).")
flags.DEFINE_string("bundle", None, "serve: an exported bundle (instead of --workdir).")
flags.DEFINE_string("host", "127.0.0.1", "serve: the address to bind; 0.0.0.0 exposes the "
                    "server to the network.")
flags.DEFINE_integer("port", 8000, "serve: the port.")
flags.DEFINE_string("api_key", None, "serve: if set (or env BIGFLAX_API_KEY, which ps "
                    "does not show), requests need 'Authorization: Bearer KEY'.")
flags.DEFINE_string("admin_key", None, "serve: the key of /admin/* (or env "
                    "BIGFLAX_ADMIN_KEY); without one /admin/* is refused.")
flags.DEFINE_list("reload_roots", [], "serve: directories /admin/reload may load runs or "
                  "bundles from (besides --registry).")
flags.DEFINE_bool("insecure", False, "serve: allow a non-loopback --host without a key.")
flags.DEFINE_integer("max_batch", 8, "serve: rows (prompts x n, or inputs) per forward batch; "
                     "LMs: decode slots.")
flags.DEFINE_float("max_wait_ms", 10.0, "serve: how long a bucketed batch waits for more "
                   "requests.")
flags.DEFINE_enum("batching", "continuous", ["continuous", "bucketed"], "serve: LMs: rows "
                  "join and leave decode slots at every step, or batches run to their end.")
flags.DEFINE_integer("max_queue", 256, "serve: requests waiting for the worker; 429 beyond.")
flags.DEFINE_integer("max_body_bytes", 1 << 20, "serve: request body limit; 413 beyond.")
flags.DEFINE_float("timeout_s", 60.0, "serve: per-request deadline, queueing included; 504.")
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
flags.DEFINE_string("metric", None, "promote: the deciding metric (default: the task's, "
                    "accuracy for classifiers, loss otherwise).")
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

COMMANDS = ("train", "eval", "sample", "promote", "plan", "diff", "export", "serve",
            "prepare")
NO_WORKDIR = ("promote", "plan", "diff", "serve", "prepare")  # serve takes --workdir or --bundle


def initialize_distributed():
  if FLAGS.coordinator_address or (FLAGS.num_processes or 1) > 1:
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes,
                               process_id=FLAGS.process_id)
  elif FLAGS.distributed:
    jax.distributed.initialize()


def check_usage(command, argv):
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


def source_dir() -> tuple[str, str]:
  """(flag, directory) of the run, bundle or registry a command reads; it must exist."""
  flag = next(f for f in ("workdir", "bundle", "registry") if FLAGS[f].value)
  if not epath.Path(FLAGS[flag].value).is_dir():
    raise UsageError(f"--{flag}={FLAGS[flag].value} does not exist.")
  return flag, FLAGS[flag].value


def experiment():
  if FLAGS.config is None:
    raise UsageError("this command needs --config experiments/<name>.py.")
  return FLAGS.config


def plan_command():
  configs.validate(experiment())
  report = plan.plan(experiment(), FLAGS.topology, FLAGS.tokens, FLAGS.price_per_chip_hour)
  print(plan.format_report(report))
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      f.write(plan.to_json(report))
  print(json.dumps(json.loads(plan.to_json(report))))


def promote_command():
  for name in ("candidate", "incumbent"):
    if not FLAGS[name].value or not os.path.isdir(FLAGS[name].value):
      raise UsageError(f"--{name}={FLAGS[name].value} is not a run directory.")
  promote.promote(FLAGS.candidate, FLAGS.incumbent, FLAGS.split, FLAGS.metric,
                  FLAGS.min_delta, FLAGS.registry)


def sample_command():
  source_dir()
  options = {name: FLAGS[name].value for name in
             ("num_samples", "max_new_tokens", "temperature", "top_k", "top_p", "seed")}
  inference.sample(FLAGS.workdir, None if FLAGS.prompt is None else [FLAGS.prompt], options)


def serve_command():
  flag, source = source_dir()
  try:
    from bigflax.infer import serve  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise UsageError(f"serve needs the HTTP libraries ({e.name} is missing): "
                     f"pip install -e '.[serve]'") from e
  limits = serve.api.Limits(max_body_bytes=FLAGS.max_body_bytes, max_queue=FLAGS.max_queue,
                            timeout_s=FLAGS.timeout_s)
  serve.run(inference.load_served_model, None if flag == "registry" else source,
            host=FLAGS.host, port=FLAGS.port, insecure=FLAGS.insecure,
            api_key=FLAGS.api_key or os.environ.get("BIGFLAX_API_KEY"),
            admin_key=FLAGS.admin_key or os.environ.get("BIGFLAX_ADMIN_KEY"),
            reload_roots=tuple(FLAGS.reload_roots), max_batch=FLAGS.max_batch,
            max_wait_ms=FLAGS.max_wait_ms, continuous=FLAGS.batching == "continuous",
            limits=limits, warmup=FLAGS.warmup, feedback_dir=FLAGS.feedback_dir,
            registry=FLAGS.registry)


def eval_command():
  source_dir()
  inference.evaluate(FLAGS.workdir, FLAGS.split, FLAGS.harness, FLAGS.harness_limit)


def export_command():
  source_dir()
  if FLAGS.format == "bundle":
    inference.export(FLAGS.workdir, FLAGS.out)
  else:
    inference.export_hf(FLAGS.workdir, FLAGS.out,
                        "bfloat16" if FLAGS.format == "hf_bf16" else "float32")


# What each command runs once the flags are checked (and jax.distributed is up).
DISTRIBUTED = {
    "train": lambda: run.train(experiment(), FLAGS.workdir),
    "eval": eval_command,
    "sample": sample_command,
    "promote": promote_command,
    "export": export_command,
    "serve": serve_command,
    "prepare": lambda: data_prepare.prepare(experiment()),
}


def main(argv):
  command = argv[1] if len(argv) > 1 else None
  check_usage(command, argv)
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax's INFO logs would drown the progress bar
  try:
    if command == "diff":
      print(run_info.format_diff(argv[2], argv[3], run_info.diff(argv[2], argv[3])))
    elif command == "plan":
      plan_command()
    else:
      initialize_distributed()
      DISTRIBUTED[command]()
  except loop.Preempted as e:
    print(f"bigflax {command}: {e}", file=sys.stderr)
    sys.exit(loop.EXIT_PREEMPTED)
  except (UsageError, plan.PlanError, ValueError, OSError) as e:
    if FLAGS.traceback:
      raise
    print(f"bigflax {command}: error: {e}", file=sys.stderr)
    sys.exit(2)


def parse_flags(argv):
  """absl flag parsing, with config mistakes reported in one line instead of a traceback."""
  try:
    return FLAGS(argv)
  except Exception as e:  # absl/ml_collections raise several types for a bad override
    try:
      message = configs.unknown_override(argv) or str(e)
    except Exception:  # the experiment file itself is broken: show the original error
      message = str(e)
    print(f"bigflax: error: {message}", file=sys.stderr)
    sys.exit(2)


def entry_point():
  if sys.argv[1:2] == ["launch"]:  # their own flags; they start train processes
    from bigflax import launch  # pylint: disable=import-outside-toplevel
    sys.exit(launch.main(sys.argv[2:]))
  if sys.argv[1:2] == ["sweep"]:
    from bigflax import sweep  # pylint: disable=import-outside-toplevel
    sys.exit(sweep.main(sys.argv[2:]))
  app.run(main, flags_parser=parse_flags)
