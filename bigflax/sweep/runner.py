"""Hyperparameter sweeps: each trial is its own run directory, trained by its own process.

An experiment file may define `get_sweep()` next to `get_config()`, returning trials (dicts
of config field -> value) built with the helpers of `bigflax/sweep/space.py`:

  def get_sweep():
    return sweep.product(**{"optim.lr": [1e-3, 3e-3], "model.embed_dim": [64, 128]})

  python -m bigflax sweep --config experiments/X.py --workdir DIR [--parallel N]

trains every trial with `python -m bigflax train --config X --workdir DIR/<trial>
--config.k=v ...`: a trial is resumable like any run, a finished one is skipped when the
sweep is run again, a failed one is reported with its log and the sweep goes on, one stopped
by SIGTERM (exit 75) is recorded as preempted and resumed by the next sweep, which then
exits 75 itself. Then it writes DIR/results.csv, DIR/results.md (sorted by --metric, also
printed; a non-finite result last) and DIR/results.png (the metric against each swept
field). Running trials: bigflax/sweep/trials.py.

Adaptive search: `--optuna N` asks Optuna's TPE sampler for trials from a search space
(`get_search_space()`, or `get_sweep()` returning a dict of distributions), prunes trials
whose intermediate evaluations fall below the median (MedianPruner; the trial process is
stopped), and keeps the study in DIR/study.db. `--storage URL` (e.g. a PostgreSQL URL) lets
several machines pull trials from one study. Trial N of study S trains in DIR/S-trial-NNN.
Each running trial's sweep records a heartbeat in the study; a trial whose heartbeat stopped
(its sweep was killed) is marked failed by the next sweep and tried again once, in its own
directory, so it resumes from its checkpoint. `--launcher tpu` trains the trials on a Cloud
TPU slice through `bigflax.launch`.
"""

import concurrent.futures
import importlib.util
import json
import math
import pathlib
import re
import sys
import threading
import warnings

from etils import epath

from bigflax import configs, launch
from bigflax.sweep import results as sweep_results
from bigflax.sweep import trials as sweep_trials
from bigflax.train import loop

# Optuna's RDB storage: a trial's sweep records a heartbeat every HEARTBEAT_SECONDS; one
# silent for STALE_SECONDS belongs to a killed sweep and is failed (then retried once).
HEARTBEAT_SECONDS, STALE_SECONDS = 30, 120
# How long a SQLite writer waits for another (--parallel trials, heartbeats, several sweeps)
# before "database is locked"; sqlite3's own default is 5 s.
SQLITE_TIMEOUT_SECONDS = 120
# What trials are ranked by unless --metric says otherwise.
DEFAULT_METRIC = "validation/loss"


# ---------------------------------------------------------------------------------------
# The two modes.


def grid(args, runner, experiment, overrides) -> list[dict]:
  """Every trial of get_sweep(); returns the result rows."""
  if not hasattr(experiment, "get_sweep"):
    raise ValueError(
      f"{args.config} defines no get_sweep(): add one returning trials, e.g. "
      f"sweep.product(**{{'optim.lr': [1e-3, 3e-4]}})."
    )
  trials = experiment.get_sweep()
  if isinstance(trials, dict):
    raise ValueError(
      f"{args.config}: get_sweep() returns a search space (a dict); run it "
      f"with --optuna N_TRIALS, or return a list of trials."
    )
  names = [sweep_trials.trial_name(t) for t in trials]
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise ValueError(f"{args.config}: get_sweep() gives several trials named {duplicates}.")
  _check_fields(args.config, overrides, trials)
  directory = epath.Path(args.workdir)
  jobs = []
  for name, trial in zip(names, trials):
    train_args = sweep_trials.trial_args(args.config, directory / name, overrides, trial)
    jobs.append((name, trial, train_args))
  print(f"bigflax sweep: {len(jobs)} trials in {directory}", flush=True)
  if args.dry_run:
    for _, _, train_args in jobs:
      if isinstance(runner, sweep_trials.TpuRunner):
        for step in launch.train_steps(runner.slice, train_args, runner.launch_dir):
          launch.print_step(step)
      else:
        print(" ".join([sys.executable, "-m", "bigflax", "train", *train_args]))
    return []

  lock = threading.Lock()
  done = [0]

  def run(job):
    name, trial, train_args = job
    workdir = directory / name
    if sweep_trials.finished_earlier(workdir, train_args):
      record = json.loads((workdir / sweep_trials.STATUS_FILE).read_text())
      message = "finished earlier, skipped"
    else:
      record = sweep_trials.run_trial(runner, train_args, workdir)
      message = {
        "done": f"done in {record['seconds']:.0f} s",
        "preempted": "preempted (SIGTERM; checkpoint saved): the next sweep resumes it",
      }.get(record["status"], f"FAILED (exit {record['returncode']}), log: {record['log']}")
    row = dict(
      trial=name,
      **trial,
      **sweep_trials.final_metrics(workdir),
      status=record["status"],
      seconds=record["seconds"],
      log=record["log"],
    )
    with lock:
      done[0] += 1
      value = row.get(args.metric)
      shown = f", {args.metric}={value:.4f}" if isinstance(value, float) else ""
      print(f"bigflax sweep: [{done[0]}/{len(jobs)}] {name}: {message}{shown}", flush=True)
    return row

  if args.parallel == 1:  # in this thread, where Ctrl-C lands
    return [run(job) for job in jobs]
  with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
    return list(pool.map(run, jobs))


def optuna_search(args, runner, experiment, overrides) -> list[dict]:
  """Trials from Optuna's TPE sampler until the study holds --optuna finished trials."""
  import optuna
  import sqlalchemy

  space = (
    experiment.get_search_space()
    if hasattr(experiment, "get_search_space")
    else experiment.get_sweep()
    if hasattr(experiment, "get_sweep")
    else None
  )
  if not isinstance(space, dict) or not space:
    raise ValueError(
      f"{args.config}: --optuna needs get_search_space() (or get_sweep()) "
      f"returning {{field: LogUniform(...) | Uniform | IntUniform | Choice}}."
    )
  _check_fields(args.config, overrides, [{k: None for k in space}])
  directory = epath.Path(args.workdir)
  url = args.storage or f"sqlite:///{pathlib.Path(args.workdir).absolute()}/study.db"
  if not args.storage:
    if "://" in args.workdir:
      raise ValueError(f"--workdir={args.workdir} is remote: give --storage URL for the study.")
    pathlib.Path(args.workdir).mkdir(parents=True, exist_ok=True)
  try:
    study = optuna.create_study(
      study_name=args.study_name or pathlib.Path(args.config.split(":")[0]).stem,
      storage=study_storage(url),
      load_if_exists=True,
      direction="minimize" if args.mode == "min" else "maximize",
      sampler=optuna.samplers.TPESampler(seed=args.seed),
      pruner=optuna.pruners.MedianPruner(n_startup_trials=args.prune_after, n_warmup_steps=0),
    )
    print(f"bigflax sweep: Optuna study {study.study_name!r} in {url}", flush=True)
    _fail_stale_trials(study)
    return _optimize(args, runner, study, space, directory, overrides)
  except sqlalchemy.exc.OperationalError as e:  # e.g. SQLite's "database is locked"
    raise OSError(
      f"the study's storage {url} failed: {e.orig}. Trials already finished are "
      f"kept; run the same sweep again to go on, with fewer --parallel trials or "
      f"--storage postgresql://... for many writers."
    ) from None


def study_storage(url: str):
  """Optuna's RDB storage with heartbeats (stale trials are failed, then retried once) and,
  for SQLite, writers that wait SQLITE_TIMEOUT_SECONDS for each other."""
  import optuna

  with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    return optuna.storages.RDBStorage(
      url,
      engine_kwargs=(
        {"connect_args": {"timeout": SQLITE_TIMEOUT_SECONDS}} if url.startswith("sqlite") else None
      ),
      heartbeat_interval=HEARTBEAT_SECONDS,
      grace_period=STALE_SECONDS,
      heartbeat_stale_trial_callback=_retry_once,
    )


def _retry_once(study, trial):
  """Requeues a stale trial once, under its name, so the retry trains in its directory (a
  sweep killed before the trial had a name gives it the one it would have had)."""
  import optuna

  trial.user_attrs.setdefault("name", trial_dir_name(study.study_name, trial.number))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)(study, trial)


def trial_dir_name(study_name: str, number: int) -> str:
  """Optuna trial `number`'s run directory: by study and trial, so that two studies in one
  sweep directory never share one."""
  return f"{re.sub(r'[^A-Za-z0-9_.=-]+', '_', study_name)}-trial-{number:03d}"


def _fail_stale_trials(study):
  """Fails (and requeues) the RUNNING trials whose sweep stopped beating, saying so."""
  import optuna

  running = {t.number for t in study.get_trials(states=(optuna.trial.TrialState.RUNNING,))}
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    optuna.storages.fail_stale_trials(study)
  for t in study.get_trials(states=(optuna.trial.TrialState.FAIL,)):
    if t.number in running:  # a retry's retry_history is not empty: it is not retried again
      again = (
        "tried again, resuming from its checkpoint"
        if not t.system_attrs.get("retry_history")
        else "not tried again (it was the retry)"
      )
      name = t.user_attrs.get("name", trial_dir_name(study.study_name, t.number))
      print(
        f"bigflax sweep: {name} was RUNNING with no "
        f"heartbeat for over {STALE_SECONDS} s (its sweep was killed): marked failed, "
        f"{again}",
        flush=True,
      )


def _optimize(args, runner, study, space, directory, overrides) -> list[dict]:
  import optuna

  def objective(trial):
    values = {k: d.suggest(trial, k) for k, d in space.items()}
    # A retried trial has its first try's name (a user attribute), so its directory and
    # checkpoint, with the same hyperparameters.
    name = trial.user_attrs.get("name") or trial_dir_name(study.study_name, trial.number)
    trial.set_user_attr("name", name)
    workdir = directory / name
    train_args = sweep_trials.trial_args(args.config, workdir, overrides, values)

    def should_prune(step, value):
      trial.report(value, step)
      return trial.should_prune()

    record = sweep_trials.run_trial(runner, train_args, workdir, args.metric, should_prune)
    value = sweep_trials.final_metrics(workdir).get(args.metric)
    print(
      f"bigflax sweep: {name} {sweep_trials.trial_name(values)}: {record['status']}"
      + (f", {args.metric}={value:.4f}" if value is not None else "")
      + ("" if record["status"] != "failed" else f", log: {record['log']}"),
      flush=True,
    )
    if record["status"] == "pruned":
      raise optuna.TrialPruned()
    if record["status"] in ("failed", "preempted") or value is None:
      raise TrialFailed(f"{name} failed, log: {record['log']}")
    if not math.isfinite(value):
      raise TrialFailed(f"{name}: {args.metric}={value} is not finite")
    return value

  finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
  remaining = args.optuna - len(study.get_trials(states=finished))
  if remaining > 0:
    study.optimize(
      objective,
      n_trials=remaining,
      n_jobs=args.parallel,
      catch=(TrialFailed,),
      callbacks=[optuna.study.MaxTrialsCallback(args.optuna, states=finished)],
    )
  rows = {}  # by directory: a retried trial's row replaces its failed first try's
  for t in study.trials:
    name = t.user_attrs.get("name")
    if name:
      workdir = directory / name
      status = {"COMPLETE": "done", "PRUNED": "pruned", "FAIL": "failed"}.get(
        t.state.name, t.state.name.lower()
      )  # or waiting, running
      seconds = t.duration.total_seconds() if t.duration else ""
      rows[name] = dict(
        trial=name,
        **t.params,
        **sweep_trials.final_metrics(workdir),
        status=status,
        seconds=seconds,
        log=str(workdir / sweep_trials.LOG_FILE),
      )
  return list(rows.values())


class TrialFailed(Exception):
  pass


def _check_fields(config_arg, overrides, trials):
  """Names a swept field or an override that the experiment's config does not have."""
  fields = sorted({k for t in trials for k in t})  # the CLI's own check: the same message
  problem = configs.unknown_override(
    ["--config", config_arg, *overrides, *(f"--config.{k}=0" for k in fields)]
  )
  if problem:
    raise ValueError(problem)


def load_experiment(config_arg: str):
  path = config_arg.split(":")[0]
  if not pathlib.Path(path).is_file():
    raise ValueError(f"--config={config_arg}: no such experiment file.")
  spec = importlib.util.spec_from_file_location("experiment", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def main(args, overrides: list[str]) -> int:
  """`args`: the sweep command's flags (bigflax/cli.py), `config` as text; `overrides`: the
  --config.a.b=value arguments, applied to every trial."""
  args.metric = args.metric or DEFAULT_METRIC  # --metric is promote's too, with its default
  tpu, launch_dir = args.launcher == "tpu", launch.new_launch_dir()
  try:
    if args.parallel < 1:
      raise ValueError(f"--parallel={args.parallel} must be at least 1.")
    experiment = load_experiment(args.config)
    if tpu:
      slice_ = launch.slice_from_args(args)
      launch.check_workdir(slice_, args.workdir)
      if args.parallel != 1:
        raise ValueError("--launcher tpu trains one trial at a time on the slice: drop --parallel.")
      runner = sweep_trials.TpuRunner(slice_, launch_dir)
      setup = launch.setup_steps(slice_, args, launch_dir)
      launch.run_steps(setup, args.dry_run)
    else:
      runner = sweep_trials.LocalRunner()
    search = optuna_search if args.optuna else grid
    if args.optuna and args.dry_run:
      raise ValueError("--dry-run lists a grid sweep's trials; Optuna chooses them as it goes.")
    try:
      rows = search(args, runner, experiment, overrides)
    except BaseException:
      if tpu and not args.dry_run:  # a trial may still train there, detached
        print(
          f"\nbigflax sweep: stopped before the end; nothing was stopped or deleted.\n"
          f"{launch.still_running(slice_, launch_dir, runner.workdir)}",
          file=sys.stderr,
        )
      raise
    if tpu and args.delete:  # every trial has ended
      launch.run_steps([launch.delete_step(slice_)], args.dry_run)
  except KeyboardInterrupt:
    print("bigflax sweep: interrupted", file=sys.stderr)
    return 130
  except (ValueError, OSError, launch.StepFailed, launch.StillRunning) as e:
    print(f"bigflax sweep: error: {e}", file=sys.stderr)
    return 2
  if args.dry_run:
    return 0
  fields = list(
    dict.fromkeys(
      k for r in rows for k in r if k not in ("trial", "status", "seconds", "log") and "/" not in k
    )
  )
  table = sweep_results.write(epath.Path(args.workdir), rows, fields, args.metric, args.mode)
  print(table)
  print(f"bigflax sweep: {args.workdir}/results.csv, results.md, results.png")
  not_finite = [
    r["trial"]
    for r in rows
    if isinstance(r.get(args.metric), float) and not math.isfinite(r[args.metric])
  ]
  if not_finite:
    print(
      f"bigflax sweep: {len(not_finite)} trial(s) ended with a non-finite {args.metric}, "
      f"ranked last: {not_finite}"
    )
  failed = [r["trial"] for r in rows if r["status"] == "failed"]
  if failed:
    print(
      f"bigflax sweep: {len(failed)} trial(s) failed: {failed}; see their {sweep_trials.LOG_FILE}."
    )
  preempted = [r["trial"] for r in rows if r["status"] == "preempted"]
  if preempted:
    print(
      f"bigflax sweep: {len(preempted)} trial(s) preempted: {preempted}; run the same "
      f"sweep again to resume them."
    )
    return loop.EXIT_PREEMPTED
  return 0
