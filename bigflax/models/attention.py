"""Softmax attention as functions of queries, keys, values and a mask; `blocks.Attention`
projects its inputs and calls them.

Shape suffixes name the axes: B batch, T queries, S keys, H query heads, K key/value heads,
G = H / K query heads per key/value head, D head dim.
"""

from collections.abc import Callable
import functools
from typing import NamedTuple

import jax
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np

Array = jax.Array

NEG_INF = -1e10  # finite, so fully masked rows give a uniform softmax instead of NaN
CAUSAL_BLOCK_MIN = 64  # shorter query blocks cost more in overhead than they save


# model.attention_impl: "xla" is the reference; "auto" is resolved by `choose` before a
# model is built.
IMPLEMENTATIONS = ("xla", "cudnn", "splash", "auto")


def padding_mask(query_valid: Array, key_valid: Array) -> Array:
  """(B, 1, T, S) boolean from per-token validity (B, T) and (B, S)."""
  return (query_valid[:, None, :, None] & key_valid[:, None, None, :]).astype(bool)


def segment_mask(query_segments: Array, key_segments: Array) -> Array:
  """(B, 1, T, S): a query sees only keys of its own segment (packed documents; segment 0
  is padding, which sees only padding)."""
  return query_segments[:, None, :, None] == key_segments[:, None, None, :]


class RopeScaling(NamedTuple):
  """Llama 3.1's RoPE frequency scaling (HF rope_type "llama3")."""

  factor: float
  low_freq_factor: float
  high_freq_factor: float
  original_max_len: int


def rope_frequencies(
  head_dim: int, max_wavelength: float = 10_000.0, scaling: RopeScaling | None = None
) -> Array:
  """The D/2 rotation frequencies of RoPE; `scaling` stretches the low ones (Llama 3.1)."""
  half = head_dim // 2
  freq = max_wavelength ** (-jnp.arange(half, dtype=jnp.float32) / half)
  if scaling is None:
    return freq
  # Wavelengths longer than original_max_len / low_freq_factor are divided by `factor`,
  # shorter than original_max_len / high_freq_factor kept, those between interpolated
  # (Meta's reference code and HF's "llama3" rope_type).
  wavelength = 2 * np.pi / freq
  ratio = scaling.original_max_len / wavelength
  smooth = jnp.clip(
    (ratio - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor),
    0.0,
    1.0,
  )
  return (1 - smooth) * freq / scaling.factor + smooth * freq


def rope(
  x: Array, positions: Array, max_wavelength: float = 10_000.0, scaling: RopeScaling | None = None
) -> Array:
  """Rotary position embedding of x (B, T, H, D) at integer positions (B, T).

  Rotates pairs (x[i], x[i + D/2]) (the GPT-NeoX / LLaMA layout).
  """
  freq = rope_frequencies(x.shape[-1], max_wavelength, scaling)
  angle = positions[..., None, None].astype(jnp.float32) * freq  # (B, T, 1, D/2)
  sin, cos = jnp.sin(angle), jnp.cos(angle)
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


def sliding_window_mask(query_slots: Array, key_slots: Array, window: int) -> Array:
  """(1, 1, T, S): query slot t sees key slot s only when t - s < window (Mistral's local
  attention; HF's sliding_window_overlay). Slots, not positions: left padding shifts a
  row's positions by a constant, so their differences are the same."""
  return (query_slots[:, None] - key_slots[None, :] < window)[None, None]


def dot_product_attention(
  q: Array,
  k: Array,
  v: Array,
  mask: Array | None = None,
  dropout: Callable[[Array], Array] = lambda p: p,
) -> Array:
  """Softmax attention with grouped-query support.

  q: (B, T, H, D); k, v: (B, S, K, D) with H a multiple of K; mask: boolean broadcastable
  to (B, 1, T, S). Logits and softmax are in float32 whatever the input dtype.
  """
  b, t, h, d = q.shape
  kv_heads = k.shape[2]
  q_BxTxKxGxD = q.reshape(b, t, kv_heads, h // kv_heads, d)
  logits_BxKxGxTxS = jnp.einsum(
    "btkgd,bskd->bkgts", q_BxTxKxGxD, k, preferred_element_type=jnp.float32
  )
  logits_BxKxGxTxS = logits_BxKxGxTxS / np.sqrt(d).astype(np.float32)
  if mask is not None:  # (B, 1, T, S) -> (B, 1, 1, T, S)
    logits_BxKxGxTxS = jnp.where(mask[:, :, None], logits_BxKxGxTxS, NEG_INF)
  probs_BxKxGxTxS = dropout(jax.nn.softmax(logits_BxKxGxTxS, axis=-1)).astype(v.dtype)
  out_BxTxKxGxD = jnp.einsum("bkgts,bskd->btkgd", probs_BxKxGxTxS, v)
  return out_BxTxKxGxD.reshape(b, t, h, d)


def causal_attention(
  q: Array,
  k: Array,
  v: Array,
  mask: Array | None = None,
  dropout: Callable[[Array], Array] = lambda p: p,
) -> Array:
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
    outputs.append(
      dot_product_attention(q[:, queries], k[:, :end], v[:, :end], block_mask, dropout)
    )
  return jnp.concatenate(outputs, axis=1)


def choose(requested: str, platform: str, dtype) -> str:
  """The implementation `requested` (model.attention_impl) means on `platform`.

  "auto" is splash on TPU, cuDNN on a GPU when the compute dtype is 16-bit (cuDNN's fused
  attention takes no float32), xla elsewhere.
  """
  if requested not in IMPLEMENTATIONS:
    raise ValueError(f"model.attention_impl={requested!r}; choose one of {IMPLEMENTATIONS}.")
  if requested != "auto":
    return requested
  if platform == "tpu":
    return "splash"
  if platform == "gpu" and jnp.dtype(dtype).itemsize == 2:
    return "cudnn"
  return "xla"


def attend(
  q: Array,
  k: Array,
  v: Array,
  *,
  implementation: str = "xla",
  causal: bool = False,
  mask: Array | None = None,
  segment_ids: Array | None = None,
  sliding_window: int = 0,
  dropout: Callable[[Array], Array] | None = None,
  partition: P | None = None,
) -> Array:
  """The one entry point of softmax attention; every implementation means the same.

  q: (B, T, H, D); k, v: (B, S, K, D) with H a multiple of K (GQA; K = 1 is MQA).
  causal: query t sees keys <= t. mask: boolean broadcastable to (B, 1, T, S).
  segment_ids (B, T), self-attention only: a query sees keys of its own segment.
  sliding_window > 0: query t sees keys s with t - s < sliding_window.
  dropout: on the probabilities (xla only). partition: the PartitionSpec of q on the
  current mesh, which splash runs under (one kernel per device's batch rows and heads).
  """
  if implementation == "auto":  # a model built without models.build: auto on this backend
    implementation = choose("auto", jax.default_backend(), q.dtype)
  if implementation != "xla" and dropout is not None:
    raise ValueError(
      f"model.attention_impl={implementation!r} has no attention dropout; "
      f"set model.attention_dropout_rate=0 or attention_impl='xla'."
    )
  if implementation == "splash":
    if mask is not None:
      raise ValueError(
        "model.attention_impl='splash' takes segment ids, not a dense mask; "
        "use attention_impl='xla' for masked attention."
      )
    return _splash(q, k, v, causal, segment_ids, sliding_window, partition)
  if segment_ids is not None:
    segments = segment_mask(segment_ids, segment_ids)
    mask = segments if mask is None else mask & segments
  if implementation == "cudnn":  # segment ids go in as a dense mask
    window = (sliding_window - 1, 0) if sliding_window else None
    return jax.nn.dot_product_attention(
      q, k, v, mask=mask, is_causal=causal, local_window_size=window, implementation="cudnn"
    )
  if implementation != "xla":
    raise ValueError(f"model.attention_impl={implementation!r}; choose one of {IMPLEMENTATIONS}.")
  if sliding_window:
    window = sliding_window_mask(jnp.arange(q.shape[1]), jnp.arange(k.shape[1]), sliding_window)
    mask = window if mask is None else mask & window
  attend_xla = causal_attention if causal else dot_product_attention
  return attend_xla(q, k, v, mask, dropout or (lambda p: p))


def _splash(q, k, v, causal, segment_ids, sliding_window, partition):
  """Pallas splash attention (the TPU kernel; on other backends the same kernel in
  interpret mode, which is how the tests check it), run per device under shard_map."""
  b, length, h, d = q.shape
  if k.shape[1] != length:
    raise ValueError("model.attention_impl='splash' is for self-attention (keys = queries).")
  if segment_ids is None:
    segment_ids = jnp.ones((b, length), jnp.int32)
  # The kernel's blocks are multiples of 128 tokens: a shorter or odd length is padded
  # with segment 0, which no real token (segment >= 1) sees, and cut off again.
  pad = -length % 128
  if pad:
    q, k, v = (jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))) for x in (q, k, v))
    segment_ids = jnp.pad(segment_ids, ((0, 0), (0, pad)))
  t = length + pad

  def kernel(q, k, v, segment_ids, interpret):
    heads = q.shape[2]
    if sliding_window:
      shape_mask = splash_mask.LocalMask(
        (t, t), (sliding_window - 1, 0 if causal else None), offset=0
      )
    elif causal:
      shape_mask = splash_mask.CausalMask((t, t))
    else:
      shape_mask = splash_mask.FullMask((t, t))
    block = next(n for n in (512, 256, 128) if t % n == 0)
    sizes = splash.BlockSizes(block, block, block, block, block, block, block, block)
    run = splash.make_splash_mha(
      splash_mask.MultiHeadMask([shape_mask] * heads),
      block_sizes=sizes,
      head_shards=1,
      q_seq_shards=1,
      interpret=interpret,
    )
    one = lambda q, k, v, s: run(
      q.swapaxes(0, 1), k.swapaxes(0, 1), v.swapaxes(0, 1), segment_ids=splash.SegmentIds(s, s)
    ).swapaxes(0, 1)
    scaled = q * jnp.asarray(1 / np.sqrt(d), q.dtype)
    return jax.vmap(one)(scaled, k, v, segment_ids).astype(q.dtype)

  def local(q, k, v, segment_ids):
    return jax.lax.platform_dependent(
      q,
      k,
      v,
      segment_ids,
      tpu=functools.partial(kernel, interpret=False),
      default=functools.partial(kernel, interpret=True),
    )

  mesh = jax.sharding.get_abstract_mesh()
  if partition is None or mesh.empty:
    return local(q, k, v, segment_ids)[:, :length]
  # Batch rows and heads split across devices; each device's kernel sees whole sequences.
  rows, heads = partition[0], partition[2]
  qkv = P(rows, None, heads, None)
  out = jax.shard_map(
    local, mesh=mesh, in_specs=(qkv, qkv, qkv, P(rows, None)), out_specs=qkv, check_vma=False
  )(q, k, v, segment_ids)
  return out[:, :length]
