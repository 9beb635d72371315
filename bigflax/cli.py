"""bigflax command line: `python -m bigflax COMMAND [--flag=value ...]`.

`python -m bigflax --help` lists the commands (COMMANDS below: each one's summary, the flags it
reads and an example); `python -m bigflax COMMAND --help` shows one command's flags;
`--helpfull` adds the libraries' own flags (absl, orbax, grain, tfds).

Exit status: 0 done; 2 a mistake in the command line, config or workdir, or a diverged run
(train.max_skipped_steps); 75 `train` stopped by SIGTERM with its checkpoint saved: run the
same command again to resume.

Flags, dispatch and errors only: the work is in run.py (training), trained.py (eval,
sample, export, serve), promote.py, plan.py, run_info.py, launch.py, sweep.py; this is the one
reader of FLAGS. The command line is checked against COMMANDS before anything heavy is
imported, so help and mistakes answer at once; jax and the libraries load when a command runs.
Each command re-executes itself once at start with glibc's huge-page tunable
(bigflax/startup.py).

Over 400 lines on purpose: a third of it is the flag declarations and the COMMANDS table,
which are read together with the checks and dispatch beside them; split, each half would
need the other to make sense.
"""

import dataclasses
import difflib
import json
import os
import sys
import textwrap
import types

from absl import app, flags, logging
from etils import epath
from ml_collections import config_flags

from bigflax import configs, startup
from bigflax.configs import UsageError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
  "config",
  None,
  "Experiment file, e.g. experiments/gpt_tiny.py"
  " (or file.py:arg); override fields with --config.a.b=value.",
  lock_config=True,
)
flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, config.json.")
flags.DEFINE_string("split", "validation", "eval: the split to evaluate.")
flags.DEFINE_string(
  "harness",
  None,
  "eval: lm-eval tasks to run instead (comma-separated; "
  "local ones in experiments/harness), e.g. stdlib_qa_choice.",
)
flags.DEFINE_integer(
  "harness_limit",
  None,
  "eval --harness: documents per task (default the run's harness.limit; 0 = all).",
)
flags.DEFINE_string("prompt", None, "sample: the prompt (default: config.sample.prompts).")
flags.DEFINE_integer("max_new_tokens", None, "sample: tokens to generate.")
flags.DEFINE_float("temperature", None, "sample: 0 = greedy.")
flags.DEFINE_integer("top_k", None, "sample: keep the k most likely tokens (0 = all).")
flags.DEFINE_float("top_p", None, "sample: nucleus sampling mass (1 = all).")
flags.DEFINE_integer("num_samples", 1, "sample: continuations per prompt.")
flags.DEFINE_integer("seed", None, "sample: rng seed; sweep --optuna: the sampler's seed.")
flags.DEFINE_string(
  "out",
  None,
  "export: the bundle directory to write (new or empty); "
  "plan: also write the report as JSON to this file.",
)
flags.DEFINE_enum(
  "format",
  "bundle",
  ["bundle", "hf", "hf_bf16"],
  "export: a bigflax "
  "bundle, or a HF checkpoint directory (GPT-2 and Llama-family models; "
  "float32 or bfloat16 safetensors).",
)
flags.DEFINE_string("bundle", None, "serve: an exported bundle (instead of --workdir).")
flags.DEFINE_string(
  "host", "127.0.0.1", "serve: the address to bind; 0.0.0.0 exposes the server to the network."
)
flags.DEFINE_integer("port", 8000, "serve: the port.")
flags.DEFINE_string(
  "api_key",
  None,
  "serve: if set (or env BIGFLAX_API_KEY, which ps "
  "does not show), requests need 'Authorization: Bearer KEY'.",
)
flags.DEFINE_string(
  "admin_key",
  None,
  "serve: the key of /admin/* (or env BIGFLAX_ADMIN_KEY); without one /admin/* is refused.",
)
flags.DEFINE_list(
  "reload_roots",
  [],
  "serve: directories /admin/reload may load runs or bundles from (besides --registry).",
)
flags.DEFINE_bool("insecure", False, "serve: allow a non-loopback --host without a key.")
flags.DEFINE_integer(
  "max_batch", 8, "serve: rows (prompts x n, or inputs) per forward batch; LMs: decode slots."
)
flags.DEFINE_float("max_wait_ms", 10.0, "serve: how long a bucketed batch waits for more requests.")
flags.DEFINE_enum(
  "batching",
  "continuous",
  ["continuous", "bucketed"],
  "serve: LMs: rows join and leave decode slots at every step, or batches run to their end.",
)
flags.DEFINE_integer("max_queue", 256, "serve: requests waiting for the worker; 429 beyond.")
flags.DEFINE_integer("max_body_bytes", 1 << 20, "serve: request body limit; 413 beyond.")
flags.DEFINE_float("timeout_s", 60.0, "serve: per-request deadline, queueing included; 504.")
flags.DEFINE_bool("warmup", False, "serve: compile every batch shape before serving.")
flags.DEFINE_string(
  "coordinator_address",
  None,
  "Multi-process: host:port of process 0 "
  "(jax.distributed). On Cloud TPU leave unset and pass --distributed.",
)
flags.DEFINE_integer("num_processes", None, "Multi-process: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-process: this process's index.")
flags.DEFINE_bool(
  "distributed",
  False,
  "Call jax.distributed.initialize() with the platform's defaults (Cloud TPU pods, SLURM).",
)
flags.DEFINE_string("candidate", None, "promote: the run that may replace the incumbent.")
flags.DEFINE_string(
  "incumbent",
  None,
  "promote: the served run; its data's --split is the held-out set both runs are judged on.",
)
flags.DEFINE_string(
  "metric",
  None,
  "promote: the deciding metric (default: the task's, "
  "accuracy for classifiers, loss otherwise); sweep: split/name to rank "
  "trials by (default validation/loss).",
)
flags.DEFINE_float("min_delta", 0.0, "promote: the improvement required (0 = not worse).")
flags.DEFINE_string(
  "registry",
  None,
  "promote: directory of served.json and "
  "promotions.jsonl (default: the incumbent's parent directory). serve: "
  "serve the run served.json names and swap in each newly promoted one.",
)
flags.DEFINE_string(
  "feedback_dir",
  None,
  "serve: log every answer as JSON lines here and "
  "take ratings on POST /v1/feedback (a dataset for data.name=feedback).",
)
flags.DEFINE_string(
  "topology",
  "local",
  "plan: a TPU slice (v5e:4x4, v5p:2x2x2, v4:2x2x1, "
  "v6e:8x8, ...) or 'local' (the devices present).",
)
flags.DEFINE_float("tokens", None, "plan: a token budget, for wall time and cost.")
flags.DEFINE_float("price_per_chip_hour", None, "plan: price of one chip-hour, for the cost.")
flags.DEFINE_bool("traceback", False, "Show full tracebacks for configuration errors.")

# launch and sweep (--launcher tpu): the Cloud TPU slice, through gcloud.
flags.DEFINE_string("tpu", None, "launch, sweep: the TPU VM (node) name.")
flags.DEFINE_string("zone", None, "launch, sweep: the slice's zone, e.g. us-west4-a.")
flags.DEFINE_string("accelerator_type", None, "launch, sweep: e.g. v5litepod-16, v4-32.")
flags.DEFINE_string("project", None, "launch, sweep: the GCP project (default: gcloud's).")
flags.DEFINE_string(
  "runtime_version", None, "launch, sweep: the TPU software version (default: per generation)."
)
flags.DEFINE_bool("create", False, "launch, sweep: create the slice first.")
flags.DEFINE_bool("queued", False, "launch, sweep: --create as a queued resource.")
flags.DEFINE_bool("spot", False, "launch, sweep: --create with Spot capacity.")
flags.DEFINE_bool("delete", False, "launch, sweep: delete the slice at the end.")
flags.DEFINE_string(
  "python",
  "{}.{}".format(*sys.version_info[:2]),
  "launch, sweep: Python version of the workers' venv (default: this one's).",
)
flags.DEFINE_bool("dry_run", False, "launch, sweep: print the commands, run nothing.")
flags.DEFINE_integer("parallel", 1, "sweep: trials trained at once.")
flags.DEFINE_enum(
  "mode", "min", ["min", "max"], "sweep: whether a lower or a higher --metric is better."
)
flags.DEFINE_integer(
  "optuna",
  0,
  "sweep: adaptive search: the study's number of finished trials (0 = the grid of get_sweep()).",
)
flags.DEFINE_string(
  "storage", None, "sweep --optuna: the study's storage URL (default sqlite in --workdir/study.db)."
)
flags.DEFINE_string(
  "study_name", None, "sweep --optuna: the study (default: the experiment's name)."
)
flags.DEFINE_integer(
  "prune_after", 5, "sweep --optuna: trials finished before the median pruner starts."
)
flags.DEFINE_enum(
  "launcher",
  "local",
  ["local", "tpu"],
  "sweep: train the trials here, or on the Cloud TPU slice --tpu.",
)
# The spellings launch and sweep took before they read absl flags.
ALIASES = {
  "dry-run": "dry_run",
  "accelerator-type": "accelerator_type",
  "runtime-version": "runtime_version",
}
for alias, name in ALIASES.items():
  flags.DEFINE_alias(alias, name)

DISTRIBUTED_FLAGS = ("coordinator_address", "num_processes", "process_id", "distributed")
SLICE_FLAGS = (
  "tpu",
  "zone",
  "accelerator_type",
  "project",
  "runtime_version",
  "create",
  "queued",
  "spot",
  "delete",
  "python",
)


@dataclasses.dataclass(frozen=True)
class Command:
  summary: str  # its line in `python -m bigflax --help`
  flags: tuple[str, ...]  # the flags it reads; the others of this file are refused
  example: str
  required: tuple[str, ...] = ()


COMMANDS = {
  "train": Command(
    "train (or resume) the experiment in --workdir",
    ("config", "workdir", *DISTRIBUTED_FLAGS, "traceback"),
    "python -m bigflax train --config experiments/gpt_tiny.py --workdir "
    "runs/gpt_tiny --config.train.num_steps=100",
    ("config", "workdir"),
  ),
  "eval": Command(
    "the task's metrics for the latest checkpoint in --workdir, or lm-eval tasks (--harness)",
    ("workdir", "split", "harness", "harness_limit", *DISTRIBUTED_FLAGS, "traceback"),
    "python -m bigflax eval --workdir runs/gpt_tiny --split validation",
    ("workdir",),
  ),
  "sample": Command(
    "decode from the latest checkpoint in --workdir (or a HF GPT-2 checkpoint directory)",
    (
      "workdir",
      "prompt",
      "max_new_tokens",
      "temperature",
      "top_k",
      "top_p",
      "num_samples",
      "seed",
      *DISTRIBUTED_FLAGS,
      "traceback",
    ),
    "python -m bigflax sample --workdir runs/gpt_tiny --prompt 'def parse(' --max_new_tokens 50",
    ("workdir",),
  ),
  "promote": Command(
    "serve --candidate in place of --incumbent only if it is not worse",
    (
      "candidate",
      "incumbent",
      "split",
      "metric",
      "min_delta",
      "registry",
      *DISTRIBUTED_FLAGS,
      "traceback",
    ),
    "python -m bigflax promote --candidate runs/sft_fb --incumbent runs/sft_qa --metric loss",
    ("candidate", "incumbent"),
  ),
  "launch": Command(
    "train on a Cloud TPU slice through gcloud (bigflax/launch.py)",
    ("config", "workdir", "dry_run", *SLICE_FLAGS),
    "python -m bigflax launch --tpu my-tpu --zone us-west4-a "
    "--accelerator-type v5litepod-16 --config experiments/gpt_tiny.py "
    "--workdir gs://BUCKET/run --create --delete",
    ("config", "workdir", "tpu", "zone", "accelerator_type"),
  ),
  "sweep": Command(
    "a hyperparameter sweep, one run directory per trial (bigflax/sweep.py)",
    (
      "config",
      "workdir",
      "parallel",
      "metric",
      "mode",
      "optuna",
      "storage",
      "study_name",
      "seed",
      "prune_after",
      "launcher",
      "dry_run",
      *SLICE_FLAGS,
    ),
    "python -m bigflax sweep --config experiments/gpt_tiny_sweep.py "
    "--workdir runs/gpt_sweep --parallel 2",
    ("config", "workdir"),
  ),
  "prepare": Command(
    "tokenize data.corpora once into shards in data.prepared_dir",
    ("config", *DISTRIBUTED_FLAGS, "traceback"),
    "python -m bigflax prepare --config experiments/gpt_site_packages.py",
    ("config",),
  ),
  "plan": Command(
    "will it fit, how fast, how costly on a TPU slice (no --workdir)",
    ("config", "topology", "tokens", "price_per_chip_hour", "out", "traceback"),
    "python -m bigflax plan --config experiments/llama2_7b.py --topology v5p:2x2x2",
    ("config",),
  ),
  "diff": Command(
    "RUN_A RUN_B: what differs between two runs' configs and environments",
    ("traceback",),
    "python -m bigflax diff runs/a runs/b",
  ),
  "export": Command(
    "write the latest checkpoint in --workdir as a bundle or a HF checkpoint (--out)",
    ("workdir", "out", "format", *DISTRIBUTED_FLAGS, "traceback"),
    "python -m bigflax export --workdir runs/gpt_tiny --out bundles/gpt_tiny",
    ("workdir", "out"),
  ),
  "serve": Command(
    "serve --workdir, --bundle or --registry's promoted run over HTTP",
    (
      "workdir",
      "bundle",
      "registry",
      "host",
      "port",
      "api_key",
      "admin_key",
      "reload_roots",
      "insecure",
      "max_batch",
      "max_wait_ms",
      "batching",
      "max_queue",
      "max_body_bytes",
      "timeout_s",
      "warmup",
      "feedback_dir",
      *DISTRIBUTED_FLAGS,
      "traceback",
    ),
    "python -m bigflax serve --workdir runs/gpt_tiny --port 8000",
  ),
}
OWN_FLAGS = {name for c in COMMANDS.values() for name in c.flags}
# Accepted by every command: scripts and tests pass --workdir to all of them.
ACCEPTED_BY_ALL = ("workdir",)
LAUNCHERS = ("launch", "sweep")  # they read their flags in-process and start train commands
HELP = ("-h", "--help", "-?", "--helpshort")
ENVIRONMENT_NOTE = (
  "Each command re-executes itself once with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 "
  "(glibc >= 2.35: malloc backs XLA's CPU buffers with huge pages, 13-20 % off a train "
  "step); set GLIBC_TUNABLES yourself (to anything) or BIGFLAX_NO_REEXEC=1 to keep the "
  "environment as it is."
)


def overview() -> str:
  width = max(map(len, COMMANDS))
  lines = ["usage: python -m bigflax COMMAND [--flag=value ...]", "", "Commands:"]
  lines += [f"  {name:<{width}}  {c.summary}" for name, c in COMMANDS.items()]
  lines.append("")
  for paragraph in (
    "python -m bigflax COMMAND --help: the command's flags and an example; --helpfull: "
    "also the libraries' flags.",
    "Exit status: 0 done; 2 a mistake in the command line, config or workdir, or a "
    "diverged run; 75 train stopped by SIGTERM, its checkpoint saved (run it again to "
    "resume).",
    ENVIRONMENT_NOTE,
  ):
    lines += textwrap.wrap(paragraph, 92) + [""]
  return "\n".join(lines[:-1])


def command_help(name: str) -> str:
  command = COMMANDS[name]
  lines = [
    f"python -m bigflax {name}: {command.summary}",
    "",
    "Example:",
    f"  {command.example}",
    "",
    "Flags (* required):",
  ]
  for flag in command.flags:
    spelled = f"--{flag}" + "".join(f", --{a}" for a, n in ALIASES.items() if n == flag)
    default = FLAGS[flag].default
    shown = "" if default in (None, False, [], "") else f" (default: {default})"
    lines.append(f"  {spelled}{'*' if flag in command.required else ''}")
    lines += textwrap.wrap(
      FLAGS[flag].help + shown, 88, initial_indent="      ", subsequent_indent="      "
    )
  if "config" in command.flags:
    lines.append("  --config.a.b=value: override a field of the experiment's config")
  lines += ["", "The libraries' flags (absl logging, orbax, grain, tfds): --helpfull."]
  return "\n".join(lines)


def given_flags(args: list[str]) -> list[str]:
  """The flag names in a command line (`--nox` as x, an alias as its flag), in order."""
  names, i = [], 0
  while i < len(args):
    arg, i = args[i], i + 1
    if arg == "--":
      break
    if not arg.startswith("-") or arg == "-":
      continue
    name = arg.lstrip("-").split("=", 1)[0]
    name = ALIASES.get(name, name)
    if name not in FLAGS and name.startswith("no") and name[2:] in FLAGS:
      name = name[2:]  # --nowarmup
    elif "=" not in arg and (
      name in FLAGS
      and not FLAGS[name].boolean
      or name not in FLAGS
      and i < len(args)
      and not args[i].startswith("-")
    ):
      i += 1  # its value is the next argument
    names.append(name)
  return names


def did_you_mean(word: str, choices) -> str:
  close = difflib.get_close_matches(word, choices, n=1)
  return f" Did you mean {close[0]}?" if close else ""


def check_command_line(args: list[str]) -> str:
  """The command, once its flags are ones it reads and its required flags are given; raises
  UsageError naming the mistake. Only this file's tables: nothing heavy is imported."""
  command = args[0] if args else None
  if command is None:
    raise UsageError(f"give a command.\n\n{overview()}")
  if command not in COMMANDS:
    raise UsageError(
      f"unknown command {command!r}.{did_you_mean(command, COMMANDS)} The "
      f"command comes first: python -m bigflax COMMAND [flags]; "
      f"python -m bigflax --help lists them."
    )
  names = given_flags(args[1:])
  reads = COMMANDS[command].flags
  for name in names:
    if name in OWN_FLAGS and name not in reads and name not in ACCEPTED_BY_ALL:
      raise UsageError(
        f"{command} does not read --{name}.{did_you_mean(name, reads)} "
        f"Its flags: python -m bigflax {command} --help."
      )
  if "flagfile" not in names:
    for name in COMMANDS[command].required:
      if name not in names:
        raise UsageError(f"{command} needs --{name}; e.g.\n  {COMMANDS[command].example}")
  return command


def help_text(args: list[str]) -> str | None:
  """What `--help` asks for: the commands, or one command's flags."""
  if args[:1] and args[0] in HELP:
    return overview()
  if args[:1] and args[0] in COMMANDS and any(a in HELP for a in args[1:]):
    return command_help(args[0])
  return None


def initialize_distributed():
  import jax  # pylint: disable=import-outside-toplevel

  if FLAGS.coordinator_address or (FLAGS.num_processes or 1) > 1:
    jax.distributed.initialize(
      coordinator_address=FLAGS.coordinator_address,
      num_processes=FLAGS.num_processes,
      process_id=FLAGS.process_id,
    )
  elif FLAGS.distributed:
    jax.distributed.initialize()


def check_usage(command, positional):
  if len(positional) != (2 if command == "diff" else 0):
    raise UsageError(
      f"unexpected arguments {positional} (diff takes two run directories, "
      f"the other commands none); e.g.\n  {COMMANDS[command].example}"
    )
  if command == "serve" and (
    FLAGS.workdir and FLAGS.bundle or not (FLAGS.workdir or FLAGS.bundle or FLAGS.registry)
  ):
    raise UsageError(
      "serve needs --workdir or --bundle (not both), or --registry (then "
      "it serves the run the registry's served.json names)."
    )


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


# The commands import what they run when they run: `--help` and mistakes answer without jax.
# pylint: disable=import-outside-toplevel


def train_command():
  from bigflax import run

  run.train(experiment(), FLAGS.workdir)


def prepare_command():
  from bigflax.data import prepare

  prepare.prepare(experiment())


def diff_command(run_a, run_b):
  from bigflax import run_info

  print(run_info.format_diff(run_a, run_b, run_info.diff(run_a, run_b)))


def plan_command():
  from bigflax.plan import planner as plan
  from bigflax.plan import report as plan_report

  configs.validate(experiment())
  report = plan.plan(experiment(), FLAGS.topology, FLAGS.tokens, FLAGS.price_per_chip_hour)
  print(plan_report.format_report(report))
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      f.write(plan_report.to_json(report))
  print(json.dumps(json.loads(plan_report.to_json(report))))


def promote_command():
  from bigflax import promote

  for name in ("candidate", "incumbent"):
    if not FLAGS[name].value or not os.path.isdir(FLAGS[name].value):
      raise UsageError(f"--{name}={FLAGS[name].value} is not a run directory.")
  promote.promote(
    FLAGS.candidate, FLAGS.incumbent, FLAGS.split, FLAGS.metric, FLAGS.min_delta, FLAGS.registry
  )


def sample_command():
  from bigflax import trained

  source_dir()
  options = {
    name: FLAGS[name].value
    for name in ("num_samples", "max_new_tokens", "temperature", "top_k", "top_p", "seed")
  }
  trained.sample(FLAGS.workdir, None if FLAGS.prompt is None else [FLAGS.prompt], options)


def serve_command():
  from bigflax import trained

  flag, source = source_dir()
  try:
    from bigflax.infer import serve
  except ImportError as e:
    raise UsageError(
      f"serve needs the HTTP libraries ({e.name} is missing): pip install -e '.[serve]'"
    ) from e
  limits = serve.api.Limits(
    max_body_bytes=FLAGS.max_body_bytes, max_queue=FLAGS.max_queue, timeout_s=FLAGS.timeout_s
  )
  serve.run(
    trained.load_served_model,
    None if flag == "registry" else source,
    host=FLAGS.host,
    port=FLAGS.port,
    insecure=FLAGS.insecure,
    api_key=FLAGS.api_key or os.environ.get("BIGFLAX_API_KEY"),
    admin_key=FLAGS.admin_key or os.environ.get("BIGFLAX_ADMIN_KEY"),
    reload_roots=tuple(FLAGS.reload_roots),
    max_batch=FLAGS.max_batch,
    max_wait_ms=FLAGS.max_wait_ms,
    continuous=FLAGS.batching == "continuous",
    limits=limits,
    warmup=FLAGS.warmup,
    feedback_dir=FLAGS.feedback_dir,
    registry=FLAGS.registry,
  )


def eval_command():
  from bigflax import trained

  source_dir()
  trained.evaluate(FLAGS.workdir, FLAGS.split, FLAGS.harness, FLAGS.harness_limit)


def export_command():
  from bigflax import trained

  source_dir()
  if FLAGS.format == "bundle":
    trained.export(FLAGS.workdir, FLAGS.out)
  else:
    trained.export_hf(
      FLAGS.workdir, FLAGS.out, "bfloat16" if FLAGS.format == "hf_bf16" else "float32"
    )


# What each command runs once the flags are checked (and jax.distributed is up).
DISTRIBUTED = {
  "train": train_command,
  "eval": eval_command,
  "sample": sample_command,
  "promote": promote_command,
  "export": export_command,
  "serve": serve_command,
  "prepare": prepare_command,
}


def import_libraries():
  """The modules the commands run, imported before the flags are parsed: as before, the
  libraries' own absl flags (orbax, grain, tfds) are accepted and --helpfull lists them."""
  from bigflax import promote, run, trained  # noqa: F401  pylint: disable=unused-import


def main(argv) -> int:
  """absl's main: argv is [program, command, positional arguments...]."""
  from bigflax.plan import planner as plan
  from bigflax.train import loop

  command, positional = argv[1], argv[2:]
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax's INFO logs would drown the progress bar
  try:
    check_usage(command, positional)
    if command == "diff":
      diff_command(*positional)
    elif command == "plan":
      plan_command()
    else:
      initialize_distributed()
      DISTRIBUTED[command]()
  except loop.Preempted as e:
    print(f"bigflax {command}: {e}", file=sys.stderr)
    return loop.EXIT_PREEMPTED
  except (UsageError, plan.PlanError, ValueError, OSError) as e:
    if FLAGS.traceback:
      raise
    print(f"bigflax {command}: error: {e}", file=sys.stderr)
    return 2
  return 0


# pylint: enable=import-outside-toplevel


def parse_flags(argv):
  """absl flag parsing, with config mistakes reported in one line instead of a traceback."""
  try:
    return FLAGS(argv)
  except Exception as e:  # absl/ml_collections raise several types for a bad override
    try:
      message = configs.unknown_override(argv) or str(e)
    except Exception:  # the experiment file itself is broken: show the original error
      message = str(e)
    if isinstance(e, flags.UnrecognizedFlagError) and argv[1] in COMMANDS:
      message = unknown_flag(e, argv[1])
    print(f"bigflax: error: {message}", file=sys.stderr)
    sys.exit(2)


def unknown_flag(error: flags.UnrecognizedFlagError, command: str) -> str:
  """absl's message, with the closest of the command's own flags rather than absl's guess
  among every library's flags."""
  close = difflib.get_close_matches(error.flagname, COMMANDS[command].flags, n=1)
  message = (
    f"{str(error).split(' Did you mean')[0]} Did you mean --{close[0]}?" if close else (str(error))
  )
  return f"{message} ({command}'s flags: python -m bigflax {command} --help)"


def split_config(args: list[str]) -> tuple[str, list[str], list[str]]:
  """(--config's value, the --config.a.b=value overrides, the other arguments): launch and
  sweep hand the experiment to the train commands they start, as text."""
  config, overrides, rest = None, [], []
  i = 0
  while i < len(args):
    arg, i = args[i], i + 1
    if arg == "--config":
      if i == len(args):
        raise UsageError("--config needs a value: --config experiments/X.py.")
      config, i = args[i], i + 1
    elif arg.startswith("--config="):
      config = arg.split("=", 1)[1]
    elif arg.startswith("--config."):
      if "=" not in arg:
        raise UsageError(f"{arg}: config overrides are --config.a.b=value.")
      overrides.append(arg)
    else:
      rest.append(arg)
  return config, overrides, rest


def run_launcher(args: list[str]) -> int:
  """`python -m bigflax launch|sweep ...` in this process (args without the program); returns
  the exit status. Its flags are parsed afresh each time (tests call it several times)."""
  try:
    command = check_command_line(args)
    if command not in LAUNCHERS:
      raise UsageError(f"{command} runs through entry_point, not run_launcher.")
    config, overrides, rest = split_config(args[1:])
    FLAGS.unparse_flags()
    positional = FLAGS(["bigflax", *rest])[1:]
    if positional:
      raise UsageError(f"{command} takes no positional arguments; got {positional}.")
  except (UsageError, flags.Error) as e:
    message = unknown_flag(e, command) if isinstance(e, flags.UnrecognizedFlagError) else e
    print(f"bigflax {args[0] if args else ''}: error: {message}", file=sys.stderr)
    return 2
  options = types.SimpleNamespace(
    config=config,
    **{name: FLAGS[name].value for name in COMMANDS[command].flags if name != "config"},
  )
  if command == "launch":
    from bigflax import launch  # pylint: disable=import-outside-toplevel

    return launch.main(options, overrides)
  from bigflax.sweep import runner  # pylint: disable=import-outside-toplevel

  return runner.main(options, overrides)


def entry_point():
  startup.reexec()  # first: glibc reads GLIBC_TUNABLES only when a process starts
  startup.skip_absent_tpu()  # before jax starts its backends
  args = sys.argv[1:]
  shown = help_text(args)
  if shown:
    print(shown)
    sys.exit(0)
  if "--helpfull" in args:  # every flag, the libraries' too: absl's own listing
    import_libraries()
    print(FLAGS.get_help())
    sys.exit(0)
  try:
    command = check_command_line(args)
  except UsageError as e:
    print(f"bigflax: error: {e}", file=sys.stderr)
    sys.exit(2)
  if command in LAUNCHERS:
    sys.exit(run_launcher(args))
  import_libraries()
  app.run(main, flags_parser=parse_flags)
