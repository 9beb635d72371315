"""A diverging run (a huge learning rate, no clipping) skips its non-finite steps, stops
after train.max_skipped_steps of them in a row with an error, and never saves a
non-finite state; the step itself leaves the state unchanged on a NaN loss."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from bigflax.train import state as state_lib
from bigflax.train import step as step_lib
from bigflax.train.writers import read
from helpers import TINY, run


def test_a_nan_loss_leaves_the_state_unchanged_and_advances_the_step():
  params = {"w": jnp.ones(3)}
  optimizer = optax.adam(0.1)
  state = state_lib.TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    opt_state=optimizer.init(params),
    rng=jax.random.key(0),
  )

  def loss_fn(params, batch, rng, frozen):
    loss = jnp.sum(params["w"] * batch["x"])
    return loss, {"loss": loss}

  train_step = jax.jit(step_lib.make_train_step(loss_fn, optimizer, lambda step: 0.1))
  new, metrics = train_step(state, {"x": jnp.array([1.0, jnp.nan, 1.0])})
  assert int(new.step) == 1 and int(metrics["skipped"]) == 1
  for a, b in zip(
    jax.tree.leaves((new.params, new.opt_state)), jax.tree.leaves((state.params, state.opt_state))
  ):
    np.testing.assert_array_equal(a, b)
  new, metrics = train_step(new, {"x": jnp.ones(3)})
  assert int(metrics["skipped"]) == 0 and float(new.params["w"][0]) < 1.0


@pytest.mark.slow
def test_a_diverging_run_stops_with_an_error_and_keeps_finite_checkpoints(tfds_dir, tmp_path):
  workdir = tmp_path / "run"
  args = [
    *TINY,
    f"--config.data.data_dir={tfds_dir}",
    "--config.train.num_steps=40",
    "--config.train.checkpoint_every=3",
    "--config.train.log_every=100",
    "--config.train.keep_checkpoints=2",
    "--config.optim.lr=1e30",
    "--config.optim.clip_norm=0",
    "--config.train.max_skipped_steps=4",
  ]
  result = run("train", workdir, *args)
  assert result.returncode == 2, result.stdout + result.stderr
  assert "the run diverged" in result.stderr and "train.max_skipped_steps=4" in result.stderr
  assert "not finite, step skipped" in result.stdout + result.stderr
  records = read(workdir)
  last = max(records)
  assert last < 40 and records[last]["skipped_steps"] >= 4
  checkpoints = workdir / "checkpoints"
  steps = sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
  assert steps
  for step in steps:  # every checkpoint kept, the newest included, is finite
    state = ocp.StandardCheckpointer().restore(os.path.join(checkpoints, str(step), "state"))
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state["params"])), step

  # The rerun resumes mid-streak and counts on: it stops once 4 in a row are skipped in
  # all, not 4 more, and the total goes on from the checkpoint's.
  newest = steps[-1]
  in_a_row_then = 0
  while newest - in_a_row_then in skipped(records):
    in_a_row_then += 1
  assert in_a_row_then >= 1
  result = run("train", workdir, *args)
  assert result.returncode == 2, result.stdout + result.stderr
  records_then, records = records, read(workdir)
  assert max(records) == newest + 4 - in_a_row_then
  assert (
    records[max(records)]["skipped_steps"]
    == records_then[newest]["skipped_steps"] + 4 - in_a_row_then
  )


def skipped(records) -> set:
  """The steps that were skipped, from the running count."""
  count, steps = 0, set()
  for step in sorted(records):
    if records[step]["skipped_steps"] > count:
      steps.add(step)
    count = records[step]["skipped_steps"]
  return steps
