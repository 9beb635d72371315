"""Checkpoints through orbax: async, atomic (a save killed mid-way is never the latest),
keep-N, holding the train state and the data position."""

import orbax.checkpoint as ocp
from etils import epath


def manager(directory, keep: int, async_save: bool = True) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                         enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(epath.Path(directory).absolute(), options=options,
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


def restore_params(directory) -> dict:
  """The parameters of the latest checkpoint under `directory`, as host arrays (for
  initialising another run, which may be laid out differently)."""
  mgr = ocp.CheckpointManager(epath.Path(directory).absolute(), item_names=("state", "data"))
  step = mgr.latest_step()
  if step is None:
    raise FileNotFoundError(f"No checkpoint in {directory}.")
  state = ocp.StandardCheckpointer().restore(epath.Path(directory).absolute() / str(step) / "state")
  return state["params"]
