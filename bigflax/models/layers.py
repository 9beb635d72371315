"""Transformer building blocks. Each exists here once and every model reuses it.

A model builds one `BlockConfig` from its own fields and hands it whole to `stack`, `Block`,
`Attention` and `MLP`, so a new block option is a field here and in the models that offer it.

Parameters and key activations carry logical axis names ("batch", "length", "embed",
"heads", "kv", "mlp", "vocab", "layers"); `bigflax.train.partitioning` alone maps them to
mesh axes. Dropout is active exactly when the caller passes a 'dropout' rng.

(A little over 400 lines: the blocks read best together; the attention arithmetic itself is
in `attention.py`.)
"""

import dataclasses
import functools
import re
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bigflax.models import attention

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
        "embedding", normal(self.init_std, self.axes),
        (self.num_embeddings, self.features), self.param_dtype)

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


def sinusoidal_positions(positions: Array, features: int,
                         max_wavelength: float = 10_000.0) -> Array:
  """The fixed position encoding of "Attention Is All You Need": (B, T) -> (B, T, features).

  Channel 2i is sin(pos / max_wavelength^(2i/features)), channel 2i+1 its cosine.
  """
  inverse_freq = max_wavelength ** (-np.arange(0, features, 2, dtype=np.float32) / features)
  angle = positions[..., None].astype(jnp.float32) * inverse_freq  # (B, T, features/2)
  return jnp.stack([jnp.sin(angle), jnp.cos(angle)], axis=-1).reshape(
      *angle.shape[:-1], features)


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
    in_shape = x.shape[x.ndim - self.in_dims:]
    kernel = self.param("kernel", normal(self.init_std, self.axes),
                        in_shape + tuple(self.features), self.param_dtype)
    y = self._contract(x, kernel, self.in_dims)
    if self.use_bias:
      bias = self.param("bias", zeros(self.axes[self.in_dims:]), tuple(self.features),
                        self.param_dtype)
      y = y + bias.astype(self.dtype)
    path = "/".join(self.scope.path) + "/kernel"
    if self.lora is not None and re.search(self.lora.targets, path):
      rank = self.lora.rank
      a = self.param("lora_a", normal(1 / np.sqrt(np.prod(in_shape)),
                                      self.axes[:self.in_dims] + (None,)),
                     in_shape + (rank,), self.param_dtype)
      b = self.param("lora_b", zeros((None,) + self.axes[self.in_dims:]),
                     (rank,) + tuple(self.features), self.param_dtype)
      h = self._contract(apply_dropout(x, self.lora.dropout, self), a, self.in_dims)
      y = y + self.lora.scale * self._contract(h, b, 1)
    return y

  def _contract(self, x: Array, w: Array, dims: int) -> Array:
    """x's last `dims` axes with w's first `dims` axes."""
    contract = (tuple(range(x.ndim - dims, x.ndim)), tuple(range(dims)))
    return jax.lax.dot_general(x.astype(self.dtype), w.astype(self.dtype),
                               (contract, ((), ())))


# ---------------------------------------------------------------- the block config


@dataclasses.dataclass(frozen=True)
class BlockConfig:
  """Hyperparameters of one transformer layer, handed whole to Block, Attention and MLP.

  A model builds it with `BlockConfig.of(model, ...)` from its own fields (the
  config.model.* a user sets), so the block options are listed here alone.
  """
  num_heads: int
  mlp_dim: int
  head_dim: int | None = None  # default embed_dim // num_heads
  num_kv_heads: int | None = None  # fewer key/value than query heads: grouped-query
  causal: bool = False  # self-attention sees only earlier positions
  cross_attention: bool = False  # a sublayer attending to an encoder's output
  activation: str = "gelu"  # a key of ACTIVATIONS or of GATED
  norm: str = "layernorm"  # or "rmsnorm", "rmsnorm_offset" (Gemma's: scale 1 + w)
  norm_eps: float = 1e-5
  pre_norm: bool = True  # x + f(norm(x)) (GPT-2, ViT); False: norm(x + f(x)) (BERT)
  use_bias: bool = True
  qkv_bias: bool = False  # biases on query, key and value even without use_bias (Qwen2)
  use_rope: bool = False
  rope_max_wavelength: float = 10_000.0
  rope_scaling: attention.RopeScaling | None = None
  sliding_window: int = 0  # > 0: self-attention sees only this many latest slots
  attention_impl: str = "xla"  # attention.IMPLEMENTATIONS, "auto" resolved already
  dropout_rate: float = 0.0  # on the residual branches and the MLP's hidden layer
  attention_dropout_rate: float = 0.0  # on the attention probabilities
  init_std: float = 0.02
  out_init_std: float = 0.02  # the projections back into the residual stream
  decode: bool = False  # self-attention appends to a KV cache of length max_len
  max_len: int = 0
  lora: LoRA | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @classmethod
  def of(cls, model: nn.Module, **derived) -> "BlockConfig":
    """The fields of `model` that share a name with a field here (a model field of that
    name must mean the same), then `derived`: what the model computes from its fields."""
    shared = ({f.name for f in dataclasses.fields(cls)}
              & {f.name for f in dataclasses.fields(model)})
    return cls(**{**{name: getattr(model, name) for name in shared}, **derived})


# ---------------------------------------------------------------- attention


class Attention(nn.Module):
  """Multi-head attention, MHA or GQA: self-attention, or cross-attention to `kv_input`.

  Self-attention is causal under `config.causal` (query t sees only keys <= t; any `mask`
  given is and-ed in) and rotates queries and keys under `config.use_rope`. Under
  `config.decode` its keys and values are appended to a 'cache' collection of length
  `config.max_len`, and queries at positions cache_index.. see the cached keys up to their
  own position. Cross-attention sees all of `kv_input` that `mask` allows. `segment_ids`
  (B, T) keep self-attention within each packed document. Shape suffixes as in
  `attention`; `attention.attend` does the arithmetic, as `config.attention_impl` says.
  """
  config: BlockConfig

  @nn.compact
  def __call__(self, x: Array, kv_input: Array | None = None, mask: Array | None = None,
               positions: Array | None = None, segment_ids: Array | None = None) -> Array:
    c = self.config
    self_attention = kv_input is None
    kv_heads = c.num_kv_heads or c.num_heads
    if c.num_heads % kv_heads:
      raise ValueError(f"num_heads={c.num_heads} must be a multiple of "
                       f"num_kv_heads={kv_heads}")
    head_dim = c.head_dim or x.shape[-1] // c.num_heads

    def project(name, heads, inputs):
      return DenseGeneral((heads, head_dim), ("embed", "heads", "kv"), c.init_std,
                          c.use_bias or c.qkv_bias, lora=c.lora, dtype=c.dtype,
                          param_dtype=c.param_dtype, name=name)(inputs)

    kv_input = x if self_attention else kv_input
    q_BxTxHxD = project("query", c.num_heads, x)
    k_BxSxKxD = project("key", kv_heads, kv_input)
    v_BxSxKxD = project("value", kv_heads, kv_input)
    decode = c.decode and self_attention
    if decode:  # from here on S = max_len, the cache's slots
      k_BxSxKxD, v_BxSxKxD, mask, positions = self._update_cache(k_BxSxKxD, v_BxSxKxD,
                                                                  mask, positions)
    if c.use_rope and self_attention:
      if positions is None:
        positions = jnp.arange(x.shape[1])[None]
      q_BxTxHxD = attention.rope(q_BxTxHxD, positions, c.rope_max_wavelength,
                                 c.rope_scaling)
      if not decode:  # cached keys were rotated when they were written
        k_BxSxKxD = attention.rope(k_BxSxKxD, positions, c.rope_max_wavelength,
                                   c.rope_scaling)
    axes = ("batch", "length", "heads", "kv")
    q_BxTxHxD = constrain(q_BxTxHxD, axes)
    k_BxSxKxD, v_BxSxKxD = constrain(k_BxSxKxD, axes), constrain(v_BxSxKxD, axes)

    # KV-cache decoding (its mask is causal and windowed already; a step's few queries)
    # and cross-attention take the xla path whatever config.attention_impl says.
    xla_only = decode or not self_attention
    dropout = None
    if c.attention_dropout_rate > 0 and self.has_rng("dropout"):
      dropout = lambda p: apply_dropout(p, c.attention_dropout_rate, self)
    out_BxTxHxD = attention.attend(
        q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, mask=mask,
        implementation="xla" if xla_only else c.attention_impl,
        causal=c.causal and not xla_only, segment_ids=None if xla_only else segment_ids,
        sliding_window=0 if xla_only else c.sliding_window, dropout=dropout,
        partition=mesh_spec(axes))
    out_BxTxHxD = constrain(out_BxTxHxD, axes)
    return DenseGeneral((x.shape[-1],), ("heads", "kv", "embed"), c.out_init_std,
                        c.use_bias, in_dims=2, lora=c.lora, dtype=c.dtype,
                        param_dtype=c.param_dtype, name="out")(out_BxTxHxD)

  def _update_cache(self, k_BxTxKxD, v_BxTxKxD, mask, positions):
    """Writes this step's T keys and values at the cache index; returns the whole cache
    (B, max_len, K, D) and the mask of the slots each query may see."""
    c = self.config
    b, t, kv_heads, d = k_BxTxKxD.shape
    shape = (b, c.max_len, kv_heads, d)
    cached_k = self.variable("cache", "cached_key", jnp.zeros, shape, k_BxTxKxD.dtype)
    cached_v = self.variable("cache", "cached_value", jnp.zeros, shape, v_BxTxKxD.dtype)
    index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
    if self.is_initializing():  # only create the (empty) cache
      return k_BxTxKxD, v_BxTxKxD, mask, positions
    i = index.value
    if positions is None:
      positions = (i + jnp.arange(t))[None]
    if c.use_rope:
      k_BxTxKxD = attention.rope(k_BxTxKxD, positions, c.rope_max_wavelength,
                                 c.rope_scaling)
    cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k_BxTxKxD, (0, i, 0, 0))
    cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v_BxTxKxD, (0, i, 0, 0))
    index.value = i + t
    query_pos = i + jnp.arange(t)
    slots = jnp.arange(c.max_len)
    cache_mask = (slots[None, :] <= query_pos[:, None])[None, None]
    if c.sliding_window:  # the cache keeps every slot; the window masks the old ones
      cache_mask = cache_mask & attention.sliding_window_mask(query_pos, slots,
                                                              c.sliding_window)
    mask = cache_mask if mask is None else mask & cache_mask
    return cached_k.value, cached_v.value, mask, positions


# ---------------------------------------------------------------- MLP and norms


ACTIVATIONS = {
    "gelu": functools.partial(jax.nn.gelu, approximate=True),  # GPT-2's "gelu_new"
    "gelu_exact": functools.partial(jax.nn.gelu, approximate=False),  # BERT
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}
# Gated linear units (Shazeer, 2020): act(x W_gate) * (x W_up).
GATED = {"swiglu": jax.nn.silu, "geglu": ACTIVATIONS["gelu"]}  # Llama's; Gemma's (tanh)


class MLP(nn.Module):
  """Position-wise feed-forward of width `config.mlp_dim`; a GATED activation ('swiglu',
  'geglu') gives the gated form."""
  config: BlockConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = self.config

    def dense(name, features, axes, std):
      return DenseGeneral((features,), axes, std, c.use_bias, lora=c.lora, dtype=c.dtype,
                          param_dtype=c.param_dtype, name=name)

    up = lambda name: dense(name, c.mlp_dim, ("embed", "mlp"), c.init_std)(x)
    if c.activation in GATED:
      h = GATED[c.activation](up("gate")) * up("up")
    elif c.activation in ACTIVATIONS:
      h = ACTIVATIONS[c.activation](up("up"))
    else:
      raise ValueError(f"Unknown activation {c.activation!r}; choose one of "
                       f"{sorted(ACTIVATIONS) + sorted(GATED)}.")
    h = constrain(h, ("batch", "length", "mlp"))
    h = apply_dropout(h, c.dropout_rate, self)
    return dense("down", x.shape[-1], ("mlp", "embed"), c.out_init_std)(h)


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
    return nn.LayerNorm(epsilon=eps, dtype=dtype, scale_init=scale_init,
                        bias_init=zeros(("embed",)), name=name)
  if kind == "rmsnorm":
    return nn.RMSNorm(epsilon=eps, dtype=dtype, scale_init=scale_init, name=name)
  if kind == "rmsnorm_offset":
    return OffsetRMSNorm(eps, dtype, name=name)
  raise ValueError(f"Unknown norm {kind!r}; choose 'layernorm', 'rmsnorm' or "
                   f"'rmsnorm_offset'.")


def apply_dropout(x: Array, rate: float, module: nn.Module) -> Array:
  """Dropout only in training, i.e. when the caller passed a 'dropout' rng."""
  if rate > 0 and module.has_rng("dropout"):
    return nn.Dropout(rate, deterministic=False)(x)
  return x


# ---------------------------------------------------------------- the block


class Block(nn.Module):
  """One transformer layer: self-attention, optional cross-attention, MLP, each with its
  norm and residual (the layout of `config.pre_norm`)."""
  config: BlockConfig

  @nn.compact
  def __call__(self, x: Array, mask: Array | None = None, positions: Array | None = None,
               encoded: Array | None = None, encoder_mask: Array | None = None,
               segment_ids: Array | None = None) -> Array:
    c = self.config
    sublayers = [("attention", lambda h: Attention(c, name="attention")(
        h, mask=mask, positions=positions, segment_ids=segment_ids))]
    if c.cross_attention:
      sublayers.append(("cross_attention", lambda h: Attention(c, name="cross_attention")(
          h, kv_input=encoded, mask=encoder_mask)))
    sublayers.append(("mlp", lambda h: MLP(c, name="mlp")(h)))

    x = constrain(x, ("batch", "length", "embed"))
    for name, sublayer in sublayers:
      norm = Norm(c.norm, c.norm_eps, c.dtype, name=f"{name}_norm")
      if c.pre_norm:
        x = x + apply_dropout(sublayer(norm(x)), c.dropout_rate, self)
      else:
        x = norm(x + apply_dropout(sublayer(x), c.dropout_rate, self))
      x = constrain(x, ("batch", "length", "embed"))
    return x


REMAT_POLICIES = {
    "full": None,  # recompute everything in the backward pass
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def stack(config: BlockConfig, num_layers: int, x: Array, *args, scan: bool = False,
          remat: str = "none") -> Array:
  """Applies `num_layers` blocks of `config` to x (and `args`, Block's further inputs).

  scan=True stacks the layers' parameters on a leading "layers" axis and runs one
  compiled body (fast compiles for deep models); remat trades compute for memory.
  Call from inside a parent module's compact method; the blocks become its children.
  """
  block = Block
  if remat != "none":
    if remat not in REMAT_POLICIES:
      raise ValueError(f"Unknown remat policy {remat!r}; choose 'none' or one of "
                       f"{sorted(REMAT_POLICIES)}.")
    block = nn.remat(Block, policy=REMAT_POLICIES[remat], prevent_cse=not scan)
  if not scan:
    for i in range(num_layers):
      x = block(config, name=f"layer_{i}")(x, *args)
    return x

  def body(module, carry, *broadcast):
    return module(carry, *broadcast), None

  scanned = nn.scan(
      body, variable_axes={"params": 0, "cache": 0}, split_rngs={"params": True,
                                                                   "dropout": True},
      in_axes=(nn.broadcast,) * len(args), length=num_layers,
      metadata_params={nn.PARTITION_NAME: "layers"})
  x, _ = scanned(block(config, name="layers"), x, *args)
  return x
