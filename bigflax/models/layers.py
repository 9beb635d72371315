"""Transformer building blocks. Each exists here once and every model reuses it.

Parameters and key activations carry logical axis names ("batch", "length", "embed",
"heads", "kv", "mlp", "vocab", "layers"); `bigflax.train.partitioning` alone maps them to
mesh axes. Dropout is active exactly when the caller passes a 'dropout' rng.
"""

import dataclasses
import functools
import re
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Dtype = Any

NEG_INF = -1e10  # finite, so fully masked rows give a uniform softmax instead of NaN


def partitioned(init_fn: Callable, axes: tuple) -> Callable:
  return nn.with_logical_partitioning(init_fn, axes)


def normal(stddev: float, axes: tuple) -> Callable:
  return partitioned(nn.initializers.normal(stddev), axes)


def zeros(axes: tuple) -> Callable:
  return partitioned(nn.initializers.zeros_init(), axes)


def constrain(x: Array, axes: tuple) -> Array:
  return nn.with_logical_constraint(x, axes)


# ---------------------------------------------------------------- masks


def padding_mask(query_valid: Array, key_valid: Array) -> Array:
  """(B, 1, T, S) boolean from per-token validity (B, T) and (B, S)."""
  return (query_valid[:, None, :, None] & key_valid[:, None, None, :]).astype(bool)


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


def rope(x: Array, positions: Array, max_wavelength: float = 10_000.0) -> Array:
  """Rotary position embedding of x (B, T, H, D) at integer positions (B, T).

  Rotates pairs (x[i], x[i + D/2]) (the GPT-NeoX / LLaMA layout).
  """
  half = x.shape[-1] // 2
  freq = max_wavelength ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angle = positions[..., None, None].astype(jnp.float32) * freq  # (B, T, 1, D/2)
  sin, cos = jnp.sin(angle), jnp.cos(angle)
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


def sinusoidal_positions(positions: Array, features: int,
                         max_wavelength: float = 10_000.0) -> Array:
  """The fixed position encoding of "Attention Is All You Need": (B, T) -> (B, T, features).

  Channel 2i is sin(pos / max_wavelength^(2i/features)), channel 2i+1 its cosine.
  """
  inverse_freq = max_wavelength ** (-np.arange(0, features, 2, dtype=np.float32) / features)
  angle = positions[..., None].astype(jnp.float32) * inverse_freq  # (B, T, features/2)
  return jnp.stack([jnp.sin(angle), jnp.cos(angle)], axis=-1).reshape(
      *angle.shape[:-1], features)


# ---------------------------------------------------------------- attention


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



def causal_attention(q: Array, k: Array, v: Array, mask: Array | None = None,
                     dropout: Callable[[Array], Array] = lambda p: p) -> Array:
  """Self-attention where query t sees keys <= t (and `mask`, if given).

  The queries are split in blocks and block i only meets keys up to its own end, which
  skips the fully masked upper triangle: 5/8 of the work with 4 blocks.
  """
  t = q.shape[1]
  blocks = next((n for n in (4, 2) if t % n == 0 and t // n >= CAUSAL_BLOCK_MIN), 1)
  size = t // blocks
  outputs = []
  for i in range(blocks):
    queries, end = slice(i * size, (i + 1) * size), (i + 1) * size
    block_mask = (jnp.arange(end)[None, :] <= jnp.arange(i * size, end)[:, None])[None, None]
    if mask is not None:  # its query dimension may be 1 (a padding mask broadcasts)
      block_mask = block_mask & mask[..., queries if mask.shape[-2] > 1 else slice(None), :end]
    outputs.append(dot_product_attention(q[:, queries], k[:, :end], v[:, :end], block_mask,
                                         dropout))
  return jnp.concatenate(outputs, axis=1)


CAUSAL_BLOCK_MIN = 64  # shorter query blocks cost more in overhead than they save


def dot_product_attention(q: Array, k: Array, v: Array, mask: Array | None = None,
                          dropout: Callable[[Array], Array] = lambda p: p) -> Array:
  """Softmax attention with grouped-query support.

  q: (B, T, H, D); k, v: (B, S, K, D) with H a multiple of K; mask: boolean broadcastable
  to (B, 1, T, S). Logits and softmax are in float32 whatever the input dtype.
  """
  b, t, h, d = q.shape
  kv_heads = k.shape[2]
  q = q.reshape(b, t, kv_heads, h // kv_heads, d)
  logits = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32)
  logits = logits / np.sqrt(d).astype(np.float32)
  if mask is not None:
    logits = jnp.where(mask[:, :, None], logits, NEG_INF)  # (B, 1, 1, T, S)
  probs = dropout(jax.nn.softmax(logits, axis=-1)).astype(v.dtype)
  out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
  return out.reshape(b, t, h, d)


class Attention(nn.Module):
  """Multi-head attention: self or cross, MHA or GQA, optional RoPE and KV cache.

  `causal=True` lets query t see only keys <= t; any `mask` given is and-ed in. With
  `decode=True` keys and values are appended to a 'cache' collection of length `max_len`,
  and queries at positions cache_index.. see the cached keys up to their own position.
  """
  num_heads: int
  head_dim: int
  num_kv_heads: int | None = None
  causal: bool = False
  use_bias: bool = True
  use_rope: bool = False
  rope_max_wavelength: float = 10_000.0
  dropout_rate: float = 0.0
  init_std: float = 0.02
  out_init_std: float = 0.02
  decode: bool = False
  max_len: int = 0  # cache length, only used when decode=True
  lora: LoRA | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, kv_input: Array | None = None, mask: Array | None = None,
               positions: Array | None = None) -> Array:
    kv_heads = self.num_kv_heads or self.num_heads
    if self.num_heads % kv_heads:
      raise ValueError(f"num_heads={self.num_heads} must be a multiple of "
                       f"num_kv_heads={kv_heads}")

    def project(name, heads, inputs):
      return DenseGeneral((heads, self.head_dim), ("embed", "heads", "kv"), self.init_std,
                          self.use_bias, lora=self.lora, dtype=self.dtype,
                          param_dtype=self.param_dtype, name=name)(inputs)

    kv_input = x if kv_input is None else kv_input
    q = project("query", self.num_heads, x)
    k = project("key", kv_heads, kv_input)
    v = project("value", kv_heads, kv_input)

    if self.decode:
      k, v, mask, positions = self._update_cache(k, v, mask, positions)
    if self.use_rope:
      if positions is None:
        positions = jnp.arange(x.shape[1])[None]
      q = rope(q, positions, self.rope_max_wavelength)
      if not self.decode:  # cached keys were rotated when they were written
        k = rope(k, positions, self.rope_max_wavelength)
    q = constrain(q, ("batch", "length", "heads", "kv"))
    k = constrain(k, ("batch", "length", "heads", "kv"))
    v = constrain(v, ("batch", "length", "heads", "kv"))

    dropout = lambda p: apply_dropout(p, self.dropout_rate, self)
    if self.causal and not self.decode:  # under decode the cache mask is causal already
      out = causal_attention(q, k, v, mask, dropout)
    else:
      out = dot_product_attention(q, k, v, mask, dropout)
    out = constrain(out, ("batch", "length", "heads", "kv"))
    return DenseGeneral((x.shape[-1],), ("heads", "kv", "embed"), self.out_init_std,
                        self.use_bias, in_dims=2, lora=self.lora, dtype=self.dtype,
                        param_dtype=self.param_dtype, name="out")(out)

  def _update_cache(self, k, v, mask, positions):
    b, t, kv_heads, d = k.shape
    shape = (b, self.max_len, kv_heads, d)
    cached_k = self.variable("cache", "cached_key", jnp.zeros, shape, k.dtype)
    cached_v = self.variable("cache", "cached_value", jnp.zeros, shape, v.dtype)
    index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
    if self.is_initializing():  # only create the (empty) cache
      return k, v, mask, positions
    i = index.value
    if positions is None:
      positions = (i + jnp.arange(t))[None]
    if self.use_rope:
      k = rope(k, positions, self.rope_max_wavelength)
    cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k, (0, i, 0, 0))
    cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v, (0, i, 0, 0))
    index.value = i + t
    query_pos = i + jnp.arange(t)
    cache_mask = (jnp.arange(self.max_len)[None, :] <= query_pos[:, None])[None, None]
    mask = cache_mask if mask is None else mask & cache_mask
    return cached_k.value, cached_v.value, mask, positions


# ---------------------------------------------------------------- MLP and norms


ACTIVATIONS = {
    "gelu": functools.partial(jax.nn.gelu, approximate=True),  # GPT-2's "gelu_new"
    "gelu_exact": functools.partial(jax.nn.gelu, approximate=False),  # BERT
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}


class MLP(nn.Module):
  """Position-wise feed-forward; `activation='swiglu'` gives the gated SiLU form."""
  hidden_dim: int
  activation: str = "gelu"
  use_bias: bool = True
  dropout_rate: float = 0.0
  init_std: float = 0.02
  out_init_std: float = 0.02
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  lora: LoRA | None = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    def dense(name, features, axes, std):
      return DenseGeneral((features,), axes, std, self.use_bias, lora=self.lora,
                          dtype=self.dtype, param_dtype=self.param_dtype, name=name)

    if self.activation == "swiglu":
      h = (jax.nn.silu(dense("gate", self.hidden_dim, ("embed", "mlp"), self.init_std)(x))
           * dense("up", self.hidden_dim, ("embed", "mlp"), self.init_std)(x))
    elif self.activation in ACTIVATIONS:
      h = ACTIVATIONS[self.activation](
          dense("up", self.hidden_dim, ("embed", "mlp"), self.init_std)(x))
    else:
      raise ValueError(f"Unknown activation {self.activation!r}; choose one of "
                       f"{sorted(ACTIVATIONS) + ['swiglu']}.")
    h = constrain(h, ("batch", "length", "mlp"))
    h = apply_dropout(h, self.dropout_rate, self)
    return dense("down", x.shape[-1], ("mlp", "embed"), self.out_init_std)(h)


def Norm(kind: str, eps: float = 1e-5, dtype: Dtype = jnp.float32, name: str | None = None):
  """LayerNorm or RMSNorm (flax's own), with logically partitioned parameters."""
  scale_init = partitioned(nn.initializers.ones_init(), ("embed",))
  if kind == "layernorm":
    return nn.LayerNorm(epsilon=eps, dtype=dtype, scale_init=scale_init,
                        bias_init=zeros(("embed",)), name=name)
  if kind == "rmsnorm":
    return nn.RMSNorm(epsilon=eps, dtype=dtype, scale_init=scale_init, name=name)
  raise ValueError(f"Unknown norm {kind!r}; choose 'layernorm' or 'rmsnorm'.")


def apply_dropout(x: Array, rate: float, module: nn.Module) -> Array:
  """Dropout only in training, i.e. when the caller passed a 'dropout' rng."""
  if rate > 0 and module.has_rng("dropout"):
    return nn.Dropout(rate, deterministic=False)(x)
  return x


# ---------------------------------------------------------------- the block


class Block(nn.Module):
  """One transformer layer: self-attention, optional cross-attention, MLP.

  `pre_norm=True` is the GPT-2 / ViT layout (x + f(norm(x))); False is BERT's post-norm
  (norm(x + f(x))).
  """
  num_heads: int
  head_dim: int
  mlp_dim: int
  num_kv_heads: int | None = None
  causal: bool = False  # self-attention sees only earlier positions
  activation: str = "gelu"
  norm: str = "layernorm"
  norm_eps: float = 1e-5
  pre_norm: bool = True
  use_bias: bool = True
  use_rope: bool = False
  rope_max_wavelength: float = 10_000.0
  cross_attention: bool = False
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  init_std: float = 0.02
  out_init_std: float = 0.02
  decode: bool = False
  max_len: int = 0
  lora: LoRA | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, mask: Array | None = None, positions: Array | None = None,
               encoded: Array | None = None, encoder_mask: Array | None = None) -> Array:
    attention = functools.partial(
        Attention, num_heads=self.num_heads, head_dim=self.head_dim,
        use_bias=self.use_bias, dropout_rate=self.attention_dropout_rate,
        init_std=self.init_std, out_init_std=self.out_init_std, lora=self.lora,
        dtype=self.dtype, param_dtype=self.param_dtype)
    sublayers = [("attention", lambda h: attention(
        num_kv_heads=self.num_kv_heads, causal=self.causal, use_rope=self.use_rope,
        rope_max_wavelength=self.rope_max_wavelength, decode=self.decode,
        max_len=self.max_len, name="attention")(h, mask=mask, positions=positions))]
    if self.cross_attention:
      sublayers.append(("cross_attention", lambda h: attention(name="cross_attention")(
          h, kv_input=encoded, mask=encoder_mask)))
    sublayers.append(("mlp", lambda h: MLP(
        self.mlp_dim, self.activation, self.use_bias, self.dropout_rate, self.init_std,
        self.out_init_std, self.dtype, self.param_dtype, self.lora, name="mlp")(h)))

    x = constrain(x, ("batch", "length", "embed"))
    for name, sublayer in sublayers:
      norm = Norm(self.norm, self.norm_eps, self.dtype, name=f"{name}_norm")
      if self.pre_norm:
        x = x + apply_dropout(sublayer(norm(x)), self.dropout_rate, self)
      else:
        x = norm(x + apply_dropout(sublayer(x), self.dropout_rate, self))
      x = constrain(x, ("batch", "length", "embed"))
    return x


REMAT_POLICIES = {
    "full": None,  # recompute everything in the backward pass
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def stack(block: Callable[..., Block], num_layers: int, x: Array, *args,
          scan: bool = False, remat: str = "none") -> Array:
  """Applies `num_layers` blocks (`block(name=...)` builds one) to x.

  scan=True stacks the layers' parameters on a leading "layers" axis and runs one
  compiled body (fast compiles for deep models); remat trades compute for memory.
  Call from inside a parent module's compact method; the blocks become its children.
  """
  block_cls = block.func if isinstance(block, functools.partial) else block
  kwargs = block.keywords if isinstance(block, functools.partial) else {}
  if remat != "none":
    if remat not in REMAT_POLICIES:
      raise ValueError(f"Unknown remat policy {remat!r}; choose 'none' or one of "
                       f"{sorted(REMAT_POLICIES)}.")
    block_cls = nn.remat(block_cls, policy=REMAT_POLICIES[remat], prevent_cse=not scan)
  if not scan:
    for i in range(num_layers):
      x = block_cls(**kwargs, name=f"layer_{i}")(x, *args)
    return x

  def body(module, carry, *broadcast):
    return module(carry, *broadcast), None

  scanned = nn.scan(
      body, variable_axes={"params": 0, "cache": 0}, split_rngs={"params": True,
                                                                   "dropout": True},
      in_axes=(nn.broadcast,) * len(args), length=num_layers,
      metadata_params={nn.PARTITION_NAME: "layers"})
  x, _ = scanned(block_cls(**kwargs, name="layers"), x, *args)
  return x
