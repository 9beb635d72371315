"""Softmax attention as functions of queries, keys, values and a mask; `layers.Attention`
projects its inputs and calls them.

Shape suffixes name the axes: B batch, T queries, S keys, H query heads, K key/value heads,
G = H / K query heads per key/value head, D head dim.
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

NEG_INF = -1e10  # finite, so fully masked rows give a uniform softmax instead of NaN
CAUSAL_BLOCK_MIN = 64  # shorter query blocks cost more in overhead than they save


def padding_mask(query_valid: Array, key_valid: Array) -> Array:
  """(B, 1, T, S) boolean from per-token validity (B, T) and (B, S)."""
  return (query_valid[:, None, :, None] & key_valid[:, None, None, :]).astype(bool)


class RopeScaling(NamedTuple):
  """Llama 3.1's RoPE frequency scaling (HF rope_type "llama3")."""
  factor: float
  low_freq_factor: float
  high_freq_factor: float
  original_max_len: int


def rope_frequencies(head_dim: int, max_wavelength: float = 10_000.0,
                     scaling: RopeScaling | None = None) -> Array:
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
  smooth = jnp.clip((ratio - scaling.low_freq_factor)
                    / (scaling.high_freq_factor - scaling.low_freq_factor), 0.0, 1.0)
  return (1 - smooth) * freq / scaling.factor + smooth * freq


def rope(x: Array, positions: Array, max_wavelength: float = 10_000.0,
         scaling: RopeScaling | None = None) -> Array:
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


def dot_product_attention(q: Array, k: Array, v: Array, mask: Array | None = None,
                          dropout: Callable[[Array], Array] = lambda p: p) -> Array:
  """Softmax attention with grouped-query support.

  q: (B, T, H, D); k, v: (B, S, K, D) with H a multiple of K; mask: boolean broadcastable
  to (B, 1, T, S). Logits and softmax are in float32 whatever the input dtype.
  """
  b, t, h, d = q.shape
  kv_heads = k.shape[2]
  q_BxTxKxGxD = q.reshape(b, t, kv_heads, h // kv_heads, d)
  logits_BxKxGxTxS = jnp.einsum("btkgd,bskd->bkgts", q_BxTxKxGxD, k,
                                preferred_element_type=jnp.float32)
  logits_BxKxGxTxS = logits_BxKxGxTxS / np.sqrt(d).astype(np.float32)
  if mask is not None:  # (B, 1, T, S) -> (B, 1, 1, T, S)
    logits_BxKxGxTxS = jnp.where(mask[:, :, None], logits_BxKxGxTxS, NEG_INF)
  probs_BxKxGxTxS = dropout(jax.nn.softmax(logits_BxKxGxTxS, axis=-1)).astype(v.dtype)
  out_BxTxKxGxD = jnp.einsum("bkgts,bskd->btkgd", probs_BxKxGxTxS, v)
  return out_BxTxKxGxD.reshape(b, t, h, d)


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
