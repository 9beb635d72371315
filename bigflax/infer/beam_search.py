"""Greedy and beam search over a decoder's KV cache, batched, with EOS handling and the
GNMT / t5x length penalty.

Both take `logits_fn(tokens (N,), cache) -> (logits (N, V), cache)`: one decoder step for
N = batch (greedy) or batch * beam_size (beam search) rows, each continuing the tokens
it was fed before. A hypothesis ends at `eos_id` or after `max_len` tokens. Sequences come
back without the start token, padded with `pad_id` after their EOS.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

NEG_INF = -1e9  # finite: -inf - -inf would give NaN in the score arithmetic


def length_penalty(length, alpha: float):
  """((5 + length) / 6) ** alpha (Wu et al., 2016, GNMT; t5x's brevity penalty)."""
  return ((5.0 + length) / 6.0) ** alpha


def cache_batch_axes(cache_shapes_fn: Callable[[int], object]) -> object:
  """The batch axis of each cache leaf (None: no batch axis, e.g. a position counter).

  `cache_shapes_fn(batch_size)` gives the cache's shapes (e.g. from jax.eval_shape of the
  decoding model's init); the axis whose size follows the batch size is the batch axis,
  wherever a layer-scanned model puts it.
  """

  def axis(one, two):
    moved = [i for i, (a, b) in enumerate(zip(one.shape, two.shape)) if a != b]
    return moved[0] if moved else None

  return jax.tree.map(axis, cache_shapes_fn(1), cache_shapes_fn(2))


def _mask_vocab(logits, vocab_size):
  if vocab_size is None:
    return logits
  return jnp.where(jnp.arange(logits.shape[-1]) < vocab_size, logits, NEG_INF)


def greedy_search(
  logits_fn: Callable,
  cache,
  *,
  batch_size: int,
  max_len: int,
  bos_id: int,
  eos_id: int,
  pad_id: int = 0,
  vocab_size: int | None = None,
) -> jax.Array:
  """(batch_size, max_len) int32: the most likely token at each step until EOS."""

  def step(state):
    i, tokens, done, cache = state
    logits, cache = logits_fn(tokens[:, i], cache)
    token = _mask_vocab(logits, vocab_size).argmax(-1).astype(jnp.int32)
    token = jnp.where(done, pad_id, token)
    return i + 1, tokens.at[:, i + 1].set(token), done | (token == eos_id), cache

  tokens = jnp.full((batch_size, max_len + 1), pad_id, jnp.int32).at[:, 0].set(bos_id)
  done = jnp.zeros((batch_size,), bool)
  _, tokens, _, _ = jax.lax.while_loop(
    lambda state: (state[0] < max_len) & ~jnp.all(state[2]),
    step,
    (jnp.array(0), tokens, done, cache),
  )
  return tokens[:, 1:]


def beam_search(
  logits_fn: Callable,
  cache,
  cache_axes,
  *,
  batch_size: int,
  beam_size: int,
  max_len: int,
  bos_id: int,
  eos_id: int,
  pad_id: int = 0,
  alpha: float = 0.6,
  vocab_size: int | None = None,
):
  """Returns (sequences (batch, beam, max_len), scores (batch, beam)), best first.

  score = log p(sequence) / length_penalty(its length, alpha), length counting the EOS.
  `cache` holds batch * beam_size rows, row b * beam_size + k for beam k of example b;
  `cache_axes` (from `cache_batch_axes`) names each leaf's batch axis, along which the
  cache follows the surviving beams. Each step keeps the 2 * beam_size best extensions,
  so beam_size live hypotheses remain even when beam_size of them end in EOS. The search
  stops once no live hypothesis can still beat the worst finished one: log-probabilities
  only fall, and the penalty at max_len is the largest a live one can get.
  """
  b, k = batch_size, beam_size
  max_penalty = length_penalty(max_len, alpha)

  def gather(x, beam_index, axis=0):
    """Rows of x (b * k on `axis`) taken at (b, k') beam indices."""
    flat = (jnp.arange(b)[:, None] * k + beam_index).reshape(-1)
    return jnp.take(x, flat, axis=axis)

  def step(state):
    i, seqs, log_probs, finished_seqs, finished_scores, cache = state
    logits, cache = logits_fn(seqs[:, :, i].reshape(-1), cache)
    token_log_probs = jax.nn.log_softmax(_mask_vocab(logits.astype(jnp.float32), vocab_size))
    vocab = token_log_probs.shape[-1]
    candidates = log_probs[:, :, None] + token_log_probs.reshape(b, k, vocab)
    top_log_probs, top_ids = jax.lax.top_k(candidates.reshape(b, k * vocab), 2 * k)
    beam_index, token = top_ids // vocab, (top_ids % vocab).astype(jnp.int32)
    top_seqs = jnp.take_along_axis(seqs, beam_index[:, :, None], axis=1)
    top_seqs = top_seqs.at[:, :, i + 1].set(token)
    ends = (token == eos_id) | (i + 1 == max_len)

    # The best k extensions that go on: their beams' caches come along.
    alive_log_probs, alive = jax.lax.top_k(jnp.where(ends, NEG_INF, top_log_probs), k)
    seqs = jnp.take_along_axis(top_seqs, alive[:, :, None], axis=1)
    source_beam = jnp.take_along_axis(beam_index, alive, axis=1)
    cache = jax.tree.map(
      lambda axis, x: x if axis is None else gather(x, source_beam, axis),
      cache_axes,
      cache,
      is_leaf=lambda axis: axis is None,
    )

    # The best k finished so far, old and new.
    # (A candidate from a beam that was never live, log-prob ~NEG_INF, never finishes.)
    ends_live = ends & (top_log_probs > NEG_INF / 2)
    scores = jnp.where(ends_live, top_log_probs / length_penalty(i + 1, alpha), NEG_INF)
    finished_scores, best = jax.lax.top_k(jnp.concatenate([finished_scores, scores], axis=1), k)
    finished_seqs = jnp.take_along_axis(
      jnp.concatenate([finished_seqs, top_seqs], axis=1), best[:, :, None], axis=1
    )
    return i + 1, seqs, alive_log_probs, finished_seqs, finished_scores, cache

  def searching(state):
    i, _, log_probs, _, finished_scores, _ = state
    can_improve = log_probs[:, 0] / max_penalty > finished_scores[:, -1]
    return (i < max_len) & jnp.any(can_improve)

  seqs = jnp.full((b, k, max_len + 1), pad_id, jnp.int32).at[:, :, 0].set(bos_id)
  # Only beam 0 is live at first: k copies of the start would fill the beam with duplicates.
  log_probs = jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1), jnp.float32), (b, 1))
  finished_scores = jnp.full((b, k), NEG_INF, jnp.float32)
  state = (jnp.array(0), seqs, log_probs, seqs, finished_scores, cache)
  _, _, _, finished_seqs, finished_scores, _ = jax.lax.while_loop(searching, step, state)
  return finished_seqs[:, :, 1:], finished_scores
