"""Checkpoints through orbax: async, atomic (a save killed mid-way is never the latest),
keep-N, holding the train state and the data position. Every step also holds its content
hashes (hashes.py); every reader checks them, and a step that fails to verify or to read
is named and the newest intact step restored instead."""

import sys

from etils import epath
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from bigflax.train import hashes


def _absolute(directory) -> epath.Path:
  # Not Path.absolute() alone: it turns gs://bucket/run into $PWD/gs:/bucket/run.
  path = epath.Path(directory)
  return path if path.is_absolute() else path.absolute()


class Manager(ocp.CheckpointManager):
  """orbax's CheckpointManager whose steps also hold their content hashes, written once
  every process has written its files: for an async save in orbax's commit thread (off
  the training step's path), just before the step is renamed into place, so that every
  committed step has them; for a synchronous save right after it commits."""

  def __init__(self, directory, options: ocp.CheckpointManagerOptions):
    self._saving = None  # the step whose commit is under way
    self._async = options.enable_async_checkpointing
    if self._async:  # orbax runs the callback on the primary process only
      options.async_options = ocp.AsyncOptions(post_finalization_callback=self._hash_saving)
    super().__init__(directory, options=options, item_names=("state", "data"))

  def save(self, step, *args, **kwargs) -> bool:
    self.wait_until_finished()  # as orbax's save does first: no commit reads _saving now
    self._saving = step
    saved = super().save(step, *args, **kwargs)
    if saved and not self._async and jax.process_index() == 0:
      hashes.write(self.directory / str(step))
    return saved

  def _hash_saving(self):
    in_progress = self.directory / f"{self._saving}{ocp.path.step.TMP_DIR_SUFFIX}"
    # gs:// commits a step in place (a commit_success.txt file), without the rename.
    hashes.write(in_progress if in_progress.exists() else self.directory / str(self._saving))


def manager(directory, keep: int | None, async_save: bool = True) -> Manager:
  """Keeps the newest `keep` steps; 0 or None keeps all."""
  options = ocp.CheckpointManagerOptions(
    max_to_keep=keep or None, create=True, enable_async_checkpointing=async_save
  )
  return Manager(_absolute(directory), options)


def save(
  mgr: ocp.CheckpointManager, step: int, state, data_position: dict, force: bool = False
) -> bool:
  return mgr.save(
    step,
    force=force,
    args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_position)
    ),
  )


def _warn(message: str):
  if jax.process_index() == 0:
    print(f"bigflax: {message}", file=sys.stderr, flush=True)


def _everywhere(ok: bool) -> bool:
  """Whether `ok` holds on every process: all of them restore the same step."""
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.asarray(ok))))


def _short(error: Exception) -> str:
  # orbax wraps TensorStore's error (dozens of lines); its first line says what failed.
  while error.__cause__ is not None:
    error = error.__cause__
  lines = str(error).strip().splitlines() or [""]
  return f"{type(error).__name__}: {lines[0][:300]}"


def _newest_intact(directory: epath.Path, steps, read):
  """(step, read(step)) of the newest of `steps` whose files match their hashes and read;
  each step passed over is named, with what failed."""
  failures = {}
  for step in sorted(steps, reverse=True):
    # Process 0 hashes the files (all processes see the same ones); every process reads.
    problems = hashes.problems(directory / str(step)) if jax.process_index() == 0 else []
    if problems is None:
      _warn(
        f"checkpoint step {step} in {directory} has no content hashes (saved before "
        f"bigflax recorded them): restoring it unverified."
      )
      problems = []
    restored = None
    if not problems:
      try:
        restored = read(step)
      except Exception as e:  # pylint: disable=broad-except  # reported, older step tried
        problems = [_short(e)]
    if _everywhere(not problems):
      if failures:
        _warn(
          f"restoring step {step} instead of the damaged step(s) {', '.join(map(str, failures))}."
        )
      return step, restored
    failures[step] = problems or ["failed to read on another process"]
    _warn(f"checkpoint step {step} in {directory} is damaged: {'; '.join(problems)}")
  tried = "\n".join(f"  step {step}: {'; '.join(p)}" for step, p in failures.items())
  raise ValueError(
    f"No intact checkpoint in {directory}; tried:\n{tried}\nIf every step fails alike, "
    f"the checkpoints were written by another model or optimizer config (see "
    f"config.json next to them); otherwise they are damaged: restore them from a copy, "
    f"or move them out of {directory} (a run then starts from step 0), or use a new "
    f"--workdir."
  )


def _restore(mgr: ocp.CheckpointManager, abstract_state, step: int | None):
  """(step, orbax's restored Composite) of `step` or of the newest intact step; (None,
  None) if there is no checkpoint."""
  steps = mgr.all_steps() if step is None else [step]
  if not steps:
    return None, None
  args = ocp.args.Composite(
    state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
  )
  return _newest_intact(mgr.directory, steps, lambda s: mgr.restore(s, args=args))


def restore(mgr: ocp.CheckpointManager, abstract_state, step: int | None = None):
  """(state, data_position) of `step`, or by default of the newest intact step; None if
  there is no checkpoint."""
  _, restored = _restore(mgr, abstract_state, step)
  return None if restored is None else (restored.state, restored.data)


def resume(mgr: ocp.CheckpointManager, abstract_state):
  """`restore` for the run that writes to `mgr`: damaged steps newer than the one restored
  are moved aside (to <step>.damaged), so that the run saves those steps again and
  retention never keeps a damaged step over an intact one."""
  step, restored = _restore(mgr, abstract_state, None)
  if restored is None:
    return None
  newer = [s for s in mgr.all_steps() if s > step]
  if newer and jax.process_index() == 0:
    for damaged in newer:
      aside = mgr.directory / f"{damaged}.damaged"
      while aside.exists():
        aside = aside.with_name(aside.name + "_")
      (mgr.directory / str(damaged)).rename(aside)
      _warn(f"moved the damaged step {damaged} aside to {aside}.")
  if newer:
    multihost_utils.sync_global_devices("bigflax: damaged checkpoints moved aside")
    mgr.reload()
  return restored.state, restored.data


def latest_step(directory) -> int | None:
  """The newest committed step (not verified: the readers below check it)."""
  return ocp.CheckpointManager(_absolute(directory), item_names=("state", "data")).latest_step()


def restore_params_with_step(directory, target=None, step: int | None = None):
  """(step, parameters) of a checkpoint under `directory`: of `step`, or by default of the
  newest intact step; the optimizer state is not read. With `target` (ShapeDtypeStructs
  carrying shardings, the model's parameter tree) they are read straight onto those
  devices, only what `target` names; without, as numpy arrays, for a caller on other
  devices (a pod's checkpoint on a laptop) to lay out itself."""
  directory = _absolute(directory)
  steps = ocp.CheckpointManager(directory, item_names=("state", "data")).all_steps()
  steps = steps if step is None else [step]
  if not steps:
    raise FileNotFoundError(f"No checkpoint in {directory}.")
  checkpointer = ocp.PyTreeCheckpointer()

  def read(step):
    path = directory / str(step) / "state"
    if target is None:
      wanted = checkpointer.metadata(path).item_metadata.tree["params"]
      restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
    else:
      wanted = target
      restore_args = jax.tree.map(
        lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, global_shape=x.shape, dtype=x.dtype),
        target,
      )
    return checkpointer.restore(
      path,
      args=ocp.args.PyTreeRestore(
        item={"params": wanted}, restore_args={"params": restore_args}, partial_restore=True
      ),
    )["params"]

  return _newest_intact(directory, steps, read)


def restore_params(directory, target=None, step: int | None = None):
  """The parameters alone of `restore_params_with_step`."""
  return restore_params_with_step(directory, target, step)[1]
