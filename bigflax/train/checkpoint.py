"""Checkpoints through orbax: async, atomic (a save killed mid-way is never the latest),
keep-N, holding the train state and the data position."""

from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp


def _absolute(directory) -> epath.Path:
  # Not Path.absolute() alone: it turns gs://bucket/run into $PWD/gs:/bucket/run.
  path = epath.Path(directory)
  return path if path.is_absolute() else path.absolute()


def manager(directory, keep: int | None, async_save: bool = True) -> ocp.CheckpointManager:
  """Keeps the newest `keep` steps; 0 or None keeps all."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep or None, create=True,
                                         enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(_absolute(directory), options=options,
                               item_names=("state", "data"))


def save(mgr: ocp.CheckpointManager, step: int, state, data_position: dict,
         force: bool = False) -> bool:
  return mgr.save(step, force=force, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_position)))


def restore(mgr: ocp.CheckpointManager, abstract_state, step: int | None = None):
  """(state, data_position) of `step` (default: the latest), or None if there is none."""
  step = mgr.latest_step() if step is None else step
  if step is None:
    return None
  try:
    restored = mgr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
  except (ValueError, KeyError, FileNotFoundError) as e:
    raise ValueError(
        f"Checkpoint {mgr.directory}/{step} does not match this run's state (different "
        f"model or optimizer config?) or is damaged: {str(e)[:500]}\nUse a new --workdir, "
        f"or restore the config the checkpoint was written with (config.json).") from e
  return restored.state, restored.data


def latest_step(directory) -> int | None:
  return ocp.CheckpointManager(_absolute(directory), item_names=("state", "data")).latest_step()


def restore_params(directory, target=None, step: int | None = None):
  """The parameters of a checkpoint under `directory` (default: the latest step); the
  optimizer state is not read. With `target` (ShapeDtypeStructs carrying shardings, the
  model's parameter tree) they are read straight onto those devices, only what `target`
  names; without, as numpy arrays, for a caller on other devices (a pod's checkpoint on a
  laptop) to lay out itself."""
  step = latest_step(directory) if step is None else step
  if step is None:
    raise FileNotFoundError(f"No checkpoint in {directory}.")
  path = _absolute(directory) / str(step) / "state"
  checkpointer = ocp.PyTreeCheckpointer()
  if target is None:
    wanted = checkpointer.metadata(path).item_metadata.tree["params"]
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
  else:
    wanted = target
    restore_args = jax.tree.map(
        lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, global_shape=x.shape,
                                       dtype=x.dtype), target)
  return checkpointer.restore(path, args=ocp.args.PyTreeRestore(
      item={"params": wanted}, restore_args={"params": restore_args},
      partial_restore=True))["params"]
