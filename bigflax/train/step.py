"""The jitted train step. It knows nothing of the model or the task: it is given
`loss_fn(params, batch, rng, frozen) -> (loss, metrics)`, where `frozen` holds inputs the
loss reads but never trains (a distillation teacher's parameters; None for most tasks)."""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from bigflax.train.state import TrainState


def _microbatches(batch: dict, n: int) -> dict:
  """(B, ...) -> (n, B/n, ...), taking every n-th row so each device keeps its rows."""

  def split(x):
    if x.shape[0] % n:
      raise ValueError(f"batch size {x.shape[0]} is not divisible by train.microbatches={n}.")
    return jnp.swapaxes(x.reshape(x.shape[0] // n, n, *x.shape[1:]), 0, 1)

  return jax.tree.map(split, batch)


def all_finite(tree) -> jax.Array:
  """One bool: is every element of every floating-point array in `tree` finite?"""
  return jnp.all(
    jnp.array(
      [jnp.isfinite(x).all() for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
      or [True]
    )
  )


def make_train_step(
  loss_fn: Callable,
  optimizer: optax.GradientTransformation,
  schedule: optax.Schedule,
  microbatches: int = 1,
  trained: Callable | None = None,
) -> Callable:
  """`trained(params)` -> a tree of bools: the parameters the optimizer updates. The
  others are constants to the backward pass, which then skips their weight gradients (a
  third of the FLOPs of a frozen layer; what makes LoRA cheap)."""
  if trained is not None:
    full_loss_fn = loss_fn

    def loss_fn(params, *inputs):
      params = jax.tree.map(
        lambda p, t: p if t else jax.lax.stop_gradient(p), params, trained(params)
      )
      return full_loss_fn(params, *inputs)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def train_step(state: TrainState, batch: dict, frozen=None):
    rng = jax.random.fold_in(state.rng, state.step)
    if microbatches == 1:
      (loss, metrics), grads = grad_fn(state.params, batch, rng, frozen)
    else:
      # Accumulate in float32 over a scan: one optimizer update for the whole batch.
      def accumulate(carry, inputs):
        i, microbatch = inputs
        (loss, metrics), grads = grad_fn(
          state.params, microbatch, jax.random.fold_in(rng, i), frozen
        )
        return jax.tree.map(jnp.add, carry, (loss, grads, metrics)), None

      micro = _microbatches(batch, microbatches)
      shapes = jax.eval_shape(
        grad_fn, state.params, jax.tree.map(lambda x: x[0], micro), rng, frozen
      )
      (loss_shape, metric_shapes), grad_shapes = shapes
      zeros = jax.tree.map(
        lambda s: jnp.zeros(s.shape, jnp.float32), (loss_shape, grad_shapes, metric_shapes)
      )
      (loss, grads, metrics), _ = jax.lax.scan(accumulate, zeros, (jnp.arange(microbatches), micro))
      loss, grads, metrics = jax.tree.map(lambda x: x / microbatches, (loss, grads, metrics))
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    # A step whose loss or gradient is not finite is skipped: parameters and optimizer
    # state stay as they were. The step counter still advances (as in MaxText and
    # levanter), so the next step reads the next batch rather than retrying the same one,
    # and the batch of step s stays a function of s alone. A select, not lax.cond: both
    # branches exist anyway, and a select keeps the state donated in place. The verdict
    # must not depend on the new parameters: then every new parameter, moment and update
    # would be held at once before the select (4.3 GiB per device more for Llama-2-7B
    # on 4 chips); finite gradients give finite AdamW updates anyway. (optax.apply_if_finite
    # would add counters to the optimizer state, which would no longer restore from
    # earlier checkpoints.)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jnp.where(finite, new, old)
    metrics = dict(
      metrics,
      grad_norm=grad_norm,
      learning_rate=schedule(state.step),
      skipped=(~finite).astype(jnp.int32),
    )
    return state.replace(
      step=state.step + 1,
      params=jax.tree.map(keep, params, state.params),
      opt_state=jax.tree.map(keep, opt_state, state.opt_state),
    ), metrics

  return train_step
