"""Training state and its sharded creation."""

from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import optax

from bigflax.train import partitioning


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array  # base key; step s uses fold_in(rng, s), so a resume replays the same noise


def create(init_params: Callable[[jax.Array], Any], optimizer: optax.GradientTransformation,
           rng: jax.Array, mesh, rules):
  """Initialises the state directly in its sharded layout.

  `init_params(rng)` returns parameters boxed with logical axis names (what flax's
  `model.init(...)['params']` gives). Returns (state, shardings): the state is unboxed, the
  shardings tree matches it and is what jit and the checkpointer use.
  """
  params_rng, state_rng = jax.random.split(rng)

  def boxed_state():
    params = init_params(params_rng)
    return TrainState(step=jax.numpy.zeros((), jax.numpy.int32), params=params,
                      opt_state=optimizer.init(params), rng=state_rng)

  abstract = jax.eval_shape(boxed_state)
  shardings = partitioning.logical_shardings(abstract, mesh, rules)
  state = jax.jit(lambda: nn.unbox(boxed_state()), out_shardings=shardings)()
  return state, shardings


def abstract(state_shardings, shapes) -> Any:
  """ShapeDtypeStructs carrying shardings: the target a checkpoint restores onto."""
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      shapes, state_shardings)


def num_params(params) -> int:
  return sum(x.size for x in jax.tree.leaves(params))
