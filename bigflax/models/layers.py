"""The parts every model is built from, each here once: logical-axis helpers, embeddings,
the projection (and its LoRA adapters), activations, norms and dropout. The transformer
layer made of them, and the stack of layers, are `blocks.py`.

Parameters and key activations carry logical axis names ("batch", "length", "embed",
"heads", "kv", "mlp", "vocab", "layers"); `bigflax.train.partitioning` alone maps them to
mesh axes. Dropout is active exactly when the caller passes a 'dropout' rng.
"""

from collections.abc import Callable
import dataclasses
import functools
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Dtype = Any


def partitioned(init_fn: Callable, axes: tuple) -> Callable:
  return nn.with_logical_partitioning(init_fn, axes)


def normal(stddev: float, axes: tuple) -> Callable:
  return partitioned(nn.initializers.normal(stddev), axes)


def zeros(axes: tuple) -> Callable:
  return partitioned(nn.initializers.zeros_init(), axes)


def constrain(x: Array, axes: tuple) -> Array:
  return nn.with_logical_constraint(x, axes)


def mesh_spec(axes: tuple) -> jax.sharding.PartitionSpec | None:
  """The mesh axes of logical `axes` under the current rules; None outside a mesh."""
  rules = nn.get_logical_axis_rules()
  if not rules or jax.sharding.get_abstract_mesh().empty:
    return None
  spec = tuple(nn.logical_to_mesh_axes(axes, rules))
  return jax.sharding.PartitionSpec(*spec, *(None,) * (len(axes) - len(spec)))


# ---------------------------------------------------------------- embeddings


class Embed(nn.Module):
  """Token (or learned position) embedding; `attend` gives the tied output head."""

  num_embeddings: int
  features: int
  init_std: float = 0.02
  axes: tuple = ("vocab", "embed")
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    self.embedding = self.param(
      "embedding",
      normal(self.init_std, self.axes),
      (self.num_embeddings, self.features),
      self.param_dtype,
    )

  def __call__(self, ids: Array) -> Array:
    return jnp.take(self.embedding, ids, axis=0).astype(self.dtype)

  def attend(self, x: Array) -> Array:
    return tied_logits(x, self.embedding.astype(self.dtype))


@jax.custom_vjp
def tied_logits(x: Array, embedding: Array) -> Array:
  """x (..., d) @ embedding (vocab, d)^T, with a cheaper gradient for the embedding."""
  return jnp.einsum("...d,vd->...v", x, embedding)


def _tied_logits_fwd(x, embedding):
  return tied_logits(x, embedding), (x, embedding)


def _tied_logits_bwd(residuals, g):
  x, embedding = residuals
  # d embedding = (x^T g)^T: XLA then transposes the small (tokens, d) activations instead
  # of the (tokens, vocab) gradient, about 9% of a small GPT's step on CPU.
  x2, g2 = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
  d_embedding = jax.lax.dot_general(x2, g2, (((0,), (0,)), ((), ()))).T
  d_x = jnp.einsum("...v,vd->...d", g, embedding)
  return d_x.astype(x.dtype), d_embedding.astype(embedding.dtype)


tied_logits.defvjp(_tied_logits_fwd, _tied_logits_bwd)


def sinusoidal_positions(
  positions: Array, features: int, max_wavelength: float = 10_000.0
) -> Array:
  """The fixed position encoding of "Attention Is All You Need": (B, T) -> (B, T, features).

  Channel 2i is sin(pos / max_wavelength^(2i/features)), channel 2i+1 its cosine.
  """
  inverse_freq = max_wavelength ** (-np.arange(0, features, 2, dtype=np.float32) / features)
  angle = positions[..., None].astype(jnp.float32) * inverse_freq  # (B, T, features/2)
  return jnp.stack([jnp.sin(angle), jnp.cos(angle)], axis=-1).reshape(*angle.shape[:-1], features)


# ---------------------------------------------------------------- projections


@dataclasses.dataclass(frozen=True)
class LoRA:
  """Low-rank adapters (Hu et al., 2021) on every DenseGeneral whose kernel's parameter
  path (e.g. 'layer_0/attention/query/kernel'; 'layers/...' when scanned) matches the
  regex `targets`: y = x W + (alpha / rank) dropout(x) A B. A is random and B zero, so
  the adapted model starts out as the base model."""

  rank: int
  alpha: float
  dropout: float
  targets: str  # the defaults are configs.lora()'s

  @property
  def scale(self) -> float:
    return self.alpha / self.rank


class DenseGeneral(nn.Module):
  """x (..., *in) -> (..., *features), contracting the last `in_dims` axes of x.

  Unlike flax's DenseGeneral the kernel is created in its final shape, so its logical
  axis names (`axes`: the input axes, then the feature axes) always match its rank.
  With `lora` matching this layer's kernel it adds the adapter parameters lora_a
  (*in, rank) and lora_b (rank, *features).
  """

  features: tuple
  axes: tuple
  init_std: float
  use_bias: bool = True
  in_dims: int = 1
  lora: LoRA | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    in_shape = x.shape[x.ndim - self.in_dims :]
    kernel = self.param(
      "kernel", normal(self.init_std, self.axes), in_shape + tuple(self.features), self.param_dtype
    )
    y = self._contract(x, kernel, self.in_dims)
    if self.use_bias:
      bias = self.param(
        "bias", zeros(self.axes[self.in_dims :]), tuple(self.features), self.param_dtype
      )
      y = y + bias.astype(self.dtype)
    path = "/".join(self.scope.path) + "/kernel"
    if self.lora is not None and re.search(self.lora.targets, path):
      rank = self.lora.rank
      a = self.param(
        "lora_a",
        normal(1 / np.sqrt(np.prod(in_shape)), self.axes[: self.in_dims] + (None,)),
        in_shape + (rank,),
        self.param_dtype,
      )
      b = self.param(
        "lora_b",
        zeros((None,) + self.axes[self.in_dims :]),
        (rank,) + tuple(self.features),
        self.param_dtype,
      )
      h = self._contract(apply_dropout(x, self.lora.dropout, self), a, self.in_dims)
      y = y + self.lora.scale * self._contract(h, b, 1)
    return y

  def _contract(self, x: Array, w: Array, dims: int) -> Array:
    """x's last `dims` axes with w's first `dims` axes."""
    contract = (tuple(range(x.ndim - dims, x.ndim)), tuple(range(dims)))
    return jax.lax.dot_general(x.astype(self.dtype), w.astype(self.dtype), (contract, ((), ())))


# ---------------------------------------------------------------- activations, norms, dropout


ACTIVATIONS = {
  "gelu": functools.partial(jax.nn.gelu, approximate=True),  # GPT-2's "gelu_new"
  "gelu_exact": functools.partial(jax.nn.gelu, approximate=False),  # BERT
  "relu": jax.nn.relu,
  "silu": jax.nn.silu,
}
# Gated linear units (Shazeer, 2020): act(x W_gate) * (x W_up).
GATED = {"swiglu": jax.nn.silu, "geglu": ACTIVATIONS["gelu"]}  # Llama's; Gemma's (tanh)


class OffsetRMSNorm(nn.Module):
  """RMSNorm scaled by (1 + scale), the scale starting at 0 (Gemma's)."""

  eps: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = self.param("scale", zeros(("embed",)), (x.shape[-1],), jnp.float32)
    y = nn.RMSNorm(epsilon=self.eps, dtype=self.dtype, use_scale=False)(x)
    return y * (1 + scale).astype(self.dtype)


def Norm(kind: str, eps: float = 1e-5, dtype: Dtype = jnp.float32, name: str | None = None):
  """LayerNorm, RMSNorm (flax's own) or OffsetRMSNorm, with logically partitioned
  parameters."""
  scale_init = partitioned(nn.initializers.ones_init(), ("embed",))
  if kind == "layernorm":
    return nn.LayerNorm(
      epsilon=eps, dtype=dtype, scale_init=scale_init, bias_init=zeros(("embed",)), name=name
    )
  if kind == "rmsnorm":
    return nn.RMSNorm(epsilon=eps, dtype=dtype, scale_init=scale_init, name=name)
  if kind == "rmsnorm_offset":
    return OffsetRMSNorm(eps, dtype, name=name)
  raise ValueError(f"Unknown norm {kind!r}; choose 'layernorm', 'rmsnorm' or 'rmsnorm_offset'.")


def apply_dropout(x: Array, rate: float, module: nn.Module) -> Array:
  """Dropout only in training, i.e. when the caller passed a 'dropout' rng."""
  if rate > 0 and module.has_rng("dropout"):
    return nn.Dropout(rate, deterministic=False)(x)
  return x
