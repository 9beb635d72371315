"""The training loop, top to bottom. It trains whatever `run.py` hands it: a state, a
jittable train step, evaluators and data; it imports no model, task or dataset."""

from collections.abc import Callable, Iterator
import dataclasses
import signal
import sys
import time

import flax.linen as nn
import jax
from jax.experimental import multihost_utils
import ml_collections
from tqdm import tqdm

from bigflax.train import checkpoint, chips, partitioning
from bigflax.train import step as step_lib
from bigflax.train.writers import MetricWriter


@dataclasses.dataclass
class Run:
  """What a training run needs; `run.py` builds it from the config."""

  config: ml_collections.ConfigDict  # the `train` section
  workdir: str
  mesh: jax.sharding.Mesh
  rules: tuple  # logical axis -> mesh axis
  state: object
  state_shardings: object
  batch_sharding: jax.sharding.NamedSharding
  train_step: Callable  # (state, batch, frozen) -> (state, metrics)
  # evals.Evaluator's: name, every, run(params, step) -> metrics, printed(key) -> bool
  evaluators: list
  train_batches: Callable[[int], Iterator[dict]]  # start step -> this process's batches
  tokens_per_step: int
  flops_per_step: float
  checkpoints: object  # orbax CheckpointManager
  frozen: object = None  # the train step's untrained input (a distillation teacher's params)
  frozen_shardings: object = None
  # What the restored checkpoint recorded beside the state (next_step, skip counts).
  resumed_position: dict = dataclasses.field(default_factory=dict)


class Diverged(ValueError):
  """train.max_skipped_steps steps in a row had a non-finite loss or gradient."""


# `bigflax train`'s exit status after SIGTERM: the checkpoint is saved, run it again
# (EX_TEMPFAIL, "try again"); a sweep resumes such a trial.
EXIT_PREEMPTED = 75


class Preempted(Exception):
  """SIGTERM stopped the run after saving its checkpoint."""


class _SigtermFlag:
  """Turns SIGTERM into 'save and stop at the next step'. With several processes JAX's
  preemption sync point makes all of them stop at the same step."""

  def __init__(self):
    self.raised_at = None  # time.monotonic() of the signal (several processes: of the stop)
    if jax.process_count() == 1:
      signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    self.raised_at = time.monotonic()

  def should_stop(self, step: int) -> bool:
    if jax.process_count() > 1 and multihost_utils.reached_preemption_sync_point(step):
      self.raised_at = time.monotonic()
    return self.raised_at is not None


def peak_flops_per_device(config) -> float:
  if config.peak_flops_per_device:
    return config.peak_flops_per_device
  return chips.peak_flops(jax.devices()[0].device_kind)


# XLA's bfloat16 propagation sees that the layer loops use the float32 parameter stacks
# only through casts to the compute dtype, and so casts whole stacks once before the loops
# and holds the bfloat16 copy through both: 3 GiB a device of Llama-2-7B on 4 chips.
# Without it each layer casts its own slice. Values only keep more precision, never less.
TRAIN_STEP_COMPILER_OPTIONS = {"xla_disable_hlo_passes": "bfloat16-propagation"}


def jit_train_step(
  train_step: Callable, state_shardings, batch_sharding, frozen_shardings=None
) -> Callable:
  """The train step as the trainer compiles it (`bigflax plan` compiles this very one)."""
  return jax.jit(
    train_step,
    in_shardings=(state_shardings, batch_sharding, frozen_shardings),
    out_shardings=(state_shardings, None),
    donate_argnums=0,
    compiler_options=TRAIN_STEP_COMPILER_OPTIONS,
  )


def run_evaluators(evaluators: list, params, step: int) -> dict:
  """{name: metrics} of `evaluators` run in order on `params`; those sharing a name (the
  task's sums and predictions: "validation") make one record."""
  results = {}
  for evaluator in evaluators:
    results.setdefault(evaluator.name, {}).update(evaluator.run(params, step))
  return results


def train(run: Run) -> object:
  with jax.set_mesh(run.mesh), nn.logical_axis_rules(run.rules):
    return _train(run)


def _train(run: Run) -> object:
  cfg = run.config
  is_main = jax.process_index() == 0
  train_step = jit_train_step(
    run.train_step, run.state_shardings, run.batch_sharding, run.frozen_shardings
  )
  writer = MetricWriter(run.workdir)
  state = run.state
  start = int(state.step)
  writer.truncate(start)
  peak = peak_flops_per_device(cfg) * jax.device_count()
  sigterm = _SigtermFlag()
  batches = run.train_batches(start)
  params_finite = jax.jit(step_lib.all_finite)

  def save(state, step, force=False):
    if not params_finite(state.params):  # only a run started from such parameters
      raise ValueError(
        f"step {step}: the parameters are not finite; not saving them. "
        f"Was the run initialised from non-finite parameters (init_from)?"
      )
    checkpoint.save(
      run.checkpoints,
      step,
      state,
      dict(next_step=step, skipped_steps=skipped_steps, skipped_in_a_row=skipped_in_a_row),
      force=force,
    )

  # A resume carries on counting: a streak cut by preemption still ends the run in time.
  skipped_steps = run.resumed_position.get("skipped_steps", 0)
  skipped_in_a_row = run.resumed_position.get("skipped_in_a_row", 0)

  bar = tqdm(
    total=cfg.num_steps,
    initial=start,
    disable=not is_main,
    desc="train",
    dynamic_ncols=True,
    mininterval=1.0,
  )
  pending = []  # per-step metrics still on device: fetched every log_every steps
  interval_start, interval_steps = time.perf_counter(), 0
  step = start
  while step < cfg.num_steps:
    batch = partitioning.global_batch(next(batches), run.batch_sharding)
    state, step_metrics = train_step(state, batch, run.frozen)
    step += 1
    pending.append((step, step_metrics))
    interval_steps += 1
    bar.update(1)
    if step == start + 1:  # the first step includes compilation: keep it out of speeds
      jax.block_until_ready(step_metrics)
      interval_start, interval_steps = time.perf_counter(), 0

    due = [e for e in run.evaluators if e.every and (step % e.every == 0 or step == cfg.num_steps)]
    save_now = step % cfg.checkpoint_every == 0 or step == cfg.num_steps
    # A checkpoint records the skip counts up to its step: fetch them first.
    log_now = step % cfg.log_every == 0 or save_now or bool(due)
    if log_now:  # wait for the step first: a SIGTERM during the wait stops at this step
      jax.block_until_ready(step_metrics)
    stop = sigterm.should_stop(step)
    if log_now or stop:
      fetched = jax.device_get(pending)
      elapsed = time.perf_counter() - interval_start
      speed = {}  # none for an interval holding only the compiling first step
      if interval_steps:
        steps_per_sec = interval_steps / elapsed
        speed = dict(
          steps_per_sec=steps_per_sec,
          tokens_per_sec=steps_per_sec * run.tokens_per_step,
          mfu=steps_per_sec * run.flops_per_step / peak,
        )
      for s, m in fetched:
        skipped = int(m.pop("skipped"))
        skipped_steps += skipped
        skipped_in_a_row = skipped_in_a_row + 1 if skipped else 0
        if skipped:
          bar.write(
            f"step {s}: loss={float(m['loss']):.4g} grad_norm="
            f"{float(m['grad_norm']):.4g}: not finite, step skipped (parameters "
            f"and optimizer state unchanged; {skipped_steps} skipped so far)"
          )
        writer.write(s, "train", dict(m, skipped_steps=skipped_steps, **speed))
      bar.set_postfix(
        loss=f"{float(fetched[-1][1]['loss']):.4f}", tok_s=f"{speed.get('tokens_per_sec', 0):,.0f}"
      )
      pending = []
      interval_start, interval_steps = time.perf_counter(), 0
      if cfg.max_skipped_steps and skipped_in_a_row >= cfg.max_skipped_steps:
        break
    if stop:  # the checkpoint first: an evaluation may outlast the grace period
      save(state, step, force=True)
      run.checkpoints.wait_until_finished()
      bar.write(
        f"SIGTERM: checkpoint of step {step} committed "
        f"{time.monotonic() - sigterm.raised_at:.1f} s after the signal; rerun the "
        f"same command to resume."
      )
      break

    if due:
      for name, eval_metrics in run_evaluators(due, state.params, step).items():
        writer.write(step, name, eval_metrics)
        printed = [k for k in eval_metrics if any(e.printed(k) for e in due if e.name == name)]
        bar.write(f"step {step}: {name} " + " ".join(f"{k}={eval_metrics[k]:.4f}" for k in printed))
      interval_start, interval_steps = time.perf_counter(), 0  # evaluation is no training

    if save_now:
      save(state, step)
  bar.close()
  run.checkpoints.wait_until_finished()
  writer.close()
  sys.stdout.flush()
  if cfg.max_skipped_steps and skipped_in_a_row >= cfg.max_skipped_steps:
    raise Diverged(
      f"the last {skipped_in_a_row} steps (to step {step}) had a non-finite loss or "
      f"gradient and were skipped (train.max_skipped_steps={cfg.max_skipped_steps}): "
      f"the run diverged. The latest checkpoint (step "
      f"{run.checkpoints.latest_step()}) holds finite parameters; resume with a lower "
      f"optim.lr or with optim.clip_norm set."
    )
  if sigterm.raised_at is not None:
    raise Preempted(
      f"stopped by SIGTERM at step {step}, its checkpoint saved; rerun the "
      f"same command to resume (exit status {EXIT_PREEMPTED})."
    )
  return state
