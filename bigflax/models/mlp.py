"""A plain multilayer perceptron for small in-memory problems (regression, classifiers)."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bigflax.models import layers


class MLPModel(nn.Module):
  """features (B, F) -> outputs (B, num_outputs) float32; no hidden layers = linear model."""

  num_outputs: int
  hidden_dims: tuple = ()
  activation: str = "relu"
  init_std: float = 0.1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features: jax.Array) -> jax.Array:
    x = features.astype(self.dtype)
    for i, width in enumerate(self.hidden_dims):
      x = layers.ACTIVATIONS[self.activation](
        nn.Dense(
          width,
          dtype=self.dtype,
          param_dtype=self.param_dtype,
          kernel_init=layers.normal(self.init_std, ("embed", "mlp")),
          name=f"hidden_{i}",
        )(x)
      )
    return nn.Dense(
      self.num_outputs,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=layers.normal(self.init_std, ("mlp", None)),
      name="output",
    )(x).astype(jnp.float32)


def flops_per_token(config, num_params: int, seq_len: int) -> float:
  """Per example (the 'token' of a non-sequence task): 6N for forward + backward."""
  del config, seq_len
  return 6 * num_params
