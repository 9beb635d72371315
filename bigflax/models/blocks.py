"""One transformer layer (`Block`: attention, MLP, norms, residuals) and `stack`, which
applies a model's layers, scanned and rematerialized as it asks.

A model builds one `BlockConfig` from its own fields and hands it whole to `stack`,
`Block`, `Attention` and `MLP`, so a new block option is a field here, and a field of each
model that offers it passed on by name in that model's `block_config()`. What a layer reads
besides its input, the same for every layer (masks, positions, the encoder's output),
travels as one `BlockInputs`.
"""

import dataclasses
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from bigflax.models import attention, layers

Array = jax.Array
Dtype = Any


# ---------------------------------------------------------------- the block config


@dataclasses.dataclass(frozen=True)
class BlockConfig:
  """Hyperparameters of one transformer layer, handed whole to Block, Attention and MLP.

  A model builds it in its `block_config()`, naming each field it sets from its own
  fields (the config.model.* a user sets) or derives from them; the rest keep the
  defaults here.
  """

  num_heads: int
  mlp_dim: int
  head_dim: int | None = None  # default embed_dim // num_heads
  num_kv_heads: int | None = None  # fewer key/value than query heads: grouped-query
  causal: bool = False  # self-attention sees only earlier positions
  cross_attention: bool = False  # a sublayer attending to an encoder's output
  activation: str = "gelu"  # a key of layers.ACTIVATIONS or of layers.GATED
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
  lora: layers.LoRA | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32


@flax.struct.dataclass
class BlockInputs:
  """What every layer of a stack reads besides its input x; None where a model has none.
  A pytree of arrays, so `stack` broadcasts it whole to scanned layers."""

  mask: Array | None = None  # self-attention: True where a query may see a key
  positions: Array | None = None  # (B, T) RoPE positions; None: 0.. or the cache index
  segment_ids: Array | None = None  # (B, T) packed documents, kept apart (0 is padding)
  encoded: Array | None = None  # (B, S, d) the encoder's output, for cross-attention
  encoder_mask: Array | None = None  # cross-attention: True where a query may see a key


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
  def __call__(
    self,
    x: Array,
    kv_input: Array | None = None,
    mask: Array | None = None,
    positions: Array | None = None,
    segment_ids: Array | None = None,
  ) -> Array:
    c = self.config
    self_attention = kv_input is None
    kv_heads = c.num_kv_heads or c.num_heads
    if c.num_heads % kv_heads:
      raise ValueError(f"num_heads={c.num_heads} must be a multiple of num_kv_heads={kv_heads}")
    head_dim = c.head_dim or x.shape[-1] // c.num_heads

    def project(name, heads, inputs):
      return layers.DenseGeneral(
        (heads, head_dim),
        ("embed", "heads", "kv"),
        c.init_std,
        c.use_bias or c.qkv_bias,
        lora=c.lora,
        dtype=c.dtype,
        param_dtype=c.param_dtype,
        name=name,
      )(inputs)

    kv_input = x if self_attention else kv_input
    q_BxTxHxD = project("query", c.num_heads, x)
    k_BxSxKxD = project("key", kv_heads, kv_input)
    v_BxSxKxD = project("value", kv_heads, kv_input)
    decode = c.decode and self_attention
    if decode:  # from here on S = max_len, the cache's slots
      k_BxSxKxD, v_BxSxKxD, mask, positions = self._update_cache(
        k_BxSxKxD, v_BxSxKxD, mask, positions
      )
    if c.use_rope and self_attention:
      if positions is None:
        positions = jnp.arange(x.shape[1])[None]
      q_BxTxHxD = attention.rope(q_BxTxHxD, positions, c.rope_max_wavelength, c.rope_scaling)
      if not decode:  # cached keys were rotated when they were written
        k_BxSxKxD = attention.rope(k_BxSxKxD, positions, c.rope_max_wavelength, c.rope_scaling)
    axes = ("batch", "length", "heads", "kv")
    q_BxTxHxD = layers.constrain(q_BxTxHxD, axes)
    k_BxSxKxD = layers.constrain(k_BxSxKxD, axes)
    v_BxSxKxD = layers.constrain(v_BxSxKxD, axes)

    # KV-cache decoding (its mask is causal and windowed already; a step's few queries)
    # and cross-attention take the xla path whatever config.attention_impl says.
    xla_only = decode or not self_attention
    dropout = None
    if c.attention_dropout_rate > 0 and self.has_rng("dropout"):
      dropout = lambda p: layers.apply_dropout(p, c.attention_dropout_rate, self)
    out_BxTxHxD = attention.attend(
      q_BxTxHxD,
      k_BxSxKxD,
      v_BxSxKxD,
      mask=mask,
      implementation="xla" if xla_only else c.attention_impl,
      causal=c.causal and not xla_only,
      segment_ids=None if xla_only else segment_ids,
      sliding_window=0 if xla_only else c.sliding_window,
      dropout=dropout,
      partition=layers.mesh_spec(axes),
    )
    out_BxTxHxD = layers.constrain(out_BxTxHxD, axes)
    return layers.DenseGeneral(
      (x.shape[-1],),
      ("heads", "kv", "embed"),
      c.out_init_std,
      c.use_bias,
      in_dims=2,
      lora=c.lora,
      dtype=c.dtype,
      param_dtype=c.param_dtype,
      name="out",
    )(out_BxTxHxD)

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
      k_BxTxKxD = attention.rope(k_BxTxKxD, positions, c.rope_max_wavelength, c.rope_scaling)
    cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k_BxTxKxD, (0, i, 0, 0))
    cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v_BxTxKxD, (0, i, 0, 0))
    index.value = i + t
    query_pos = i + jnp.arange(t)
    slots = jnp.arange(c.max_len)
    cache_mask = (slots[None, :] <= query_pos[:, None])[None, None]
    if c.sliding_window:  # the cache keeps every slot; the window masks the old ones
      cache_mask = cache_mask & attention.sliding_window_mask(query_pos, slots, c.sliding_window)
    mask = cache_mask if mask is None else mask & cache_mask
    return cached_k.value, cached_v.value, mask, positions


class MLP(nn.Module):
  """Position-wise feed-forward of width `config.mlp_dim`; a gated activation (a key of
  layers.GATED: 'swiglu', 'geglu') gives the gated form."""

  config: BlockConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = self.config

    def dense(name, features, axes, std):
      return layers.DenseGeneral(
        (features,),
        axes,
        std,
        c.use_bias,
        lora=c.lora,
        dtype=c.dtype,
        param_dtype=c.param_dtype,
        name=name,
      )

    up = lambda name: dense(name, c.mlp_dim, ("embed", "mlp"), c.init_std)(x)
    if c.activation in layers.GATED:
      h = layers.GATED[c.activation](up("gate")) * up("up")
    elif c.activation in layers.ACTIVATIONS:
      h = layers.ACTIVATIONS[c.activation](up("up"))
    else:
      raise ValueError(
        f"Unknown activation {c.activation!r}; choose one of "
        f"{sorted(layers.ACTIVATIONS) + sorted(layers.GATED)}."
      )
    h = layers.constrain(h, ("batch", "length", "mlp"))
    h = layers.apply_dropout(h, c.dropout_rate, self)
    return dense("down", x.shape[-1], ("mlp", "embed"), c.out_init_std)(h)


# ---------------------------------------------------------------- the block


class Block(nn.Module):
  """One transformer layer: self-attention, optional cross-attention, MLP, each with its
  norm and residual (the layout of `config.pre_norm`)."""

  config: BlockConfig

  @nn.compact
  def __call__(self, x: Array, inputs: BlockInputs = BlockInputs()) -> Array:
    c = self.config
    sublayers = [
      (
        "attention",
        lambda h: Attention(c, name="attention")(
          h, mask=inputs.mask, positions=inputs.positions, segment_ids=inputs.segment_ids
        ),
      )
    ]
    if c.cross_attention:
      sublayers.append(
        (
          "cross_attention",
          lambda h: Attention(c, name="cross_attention")(
            h, kv_input=inputs.encoded, mask=inputs.encoder_mask
          ),
        )
      )
    sublayers.append(("mlp", lambda h: MLP(c, name="mlp")(h)))

    x = layers.constrain(x, ("batch", "length", "embed"))
    for name, sublayer in sublayers:
      norm = layers.Norm(c.norm, c.norm_eps, c.dtype, name=f"{name}_norm")
      if c.pre_norm:
        x = x + layers.apply_dropout(sublayer(norm(x)), c.dropout_rate, self)
      else:
        x = norm(x + layers.apply_dropout(sublayer(x), c.dropout_rate, self))
      x = layers.constrain(x, ("batch", "length", "embed"))
    return x


REMAT_POLICIES = {
  "full": None,  # recompute everything in the backward pass
  "dots": jax.checkpoint_policies.checkpoint_dots,
  "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def stack(
  config: BlockConfig,
  num_layers: int,
  x: Array,
  inputs: BlockInputs = BlockInputs(),
  *,
  scan: bool = False,
  remat: str = "none",
) -> Array:
  """Applies `num_layers` blocks of `config` to x, each reading the same `inputs`.

  scan=True stacks the layers' parameters on a leading "layers" axis and runs one
  compiled body (fast compiles for deep models); remat trades compute for memory.
  Call from inside a parent module's compact method; the blocks become its children.
  """
  block = Block
  if remat != "none":
    if remat not in REMAT_POLICIES:
      raise ValueError(
        f"Unknown remat policy {remat!r}; choose 'none' or one of {sorted(REMAT_POLICIES)}."
      )
    block = nn.remat(Block, policy=REMAT_POLICIES[remat], prevent_cse=not scan)
  if not scan:
    for i in range(num_layers):
      x = block(config, name=f"layer_{i}")(x, inputs)
    return x

  def body(module, carry, inputs):
    return module(carry, inputs), None

  scanned = nn.scan(
    body,
    variable_axes={"params": 0, "cache": 0},
    split_rngs={"params": True, "dropout": True},
    in_axes=(nn.broadcast,),
    length=num_layers,
    metadata_params={nn.PARTITION_NAME: "layers"},
  )
  x, _ = scanned(block(config, name="layers"), x, inputs)
  return x
