"""Translation with an encoder-decoder (`models.seq2seq`): encode the source once, then
greedy or beam search over the decoder's KV cache."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from bigflax.infer import beam_search as search


@functools.partial(
  jax.jit,
  static_argnames=(
    "model",
    "beam_size",
    "max_len",
    "bos_id",
    "eos_id",
    "pad_id",
    "alpha",
    "vocab_size",
  ),
)
def translate(
  model: nn.Module,
  params,
  source: jax.Array,
  source_mask: jax.Array,
  *,
  beam_size: int,
  max_len: int,
  bos_id: int,
  eos_id: int,
  pad_id: int = 0,
  alpha: float = 0.6,
  vocab_size: int | None = None,
) -> jax.Array:
  """(B, S) source ids and mask -> (B, max_len) target ids: the best beam (greedy when
  beam_size is 1), padded with pad_id after EOS. `vocab_size` (the tokenizer's) keeps
  the padding rows of a rounded-up embedding out of the output."""
  if max_len > model.max_len:
    raise ValueError(
      f"max_len={max_len} exceeds the decoder's cache (model.max_len={model.max_len})."
    )
  encoded = model.apply({"params": params}, source, source_mask, method="encode")
  decoder = model.clone(decode=True)
  if beam_size > 1:  # every beam of an example attends to that example's source
    encoded, source_mask = (jnp.repeat(x, beam_size, axis=0) for x in (encoded, source_mask))

  def cache_shapes(rows):
    like = lambda x: jax.ShapeDtypeStruct((rows, *x.shape[1:]), x.dtype)
    return jax.eval_shape(
      functools.partial(decoder.init, method="run_decoder"),
      jax.random.key(0),
      like(encoded),
      like(source_mask),
      jax.ShapeDtypeStruct((rows, 1), jnp.int32),
    )["cache"]

  # shape[0], not len(): an export traces with a symbolic batch size.
  batch_size = source.shape[0]
  cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), cache_shapes(encoded.shape[0]))

  def logits_fn(tokens, cache):
    logits, variables = decoder.apply(
      {"params": params, "cache": cache},
      encoded,
      source_mask,
      tokens[:, None],
      method="run_decoder",
      mutable=["cache"],
    )
    return logits[:, -1], variables["cache"]

  options = dict(
    max_len=max_len, bos_id=bos_id, eos_id=eos_id, pad_id=pad_id, vocab_size=vocab_size
  )
  if beam_size == 1:
    return search.greedy_search(logits_fn, cache, batch_size=batch_size, **options)
  sequences, _ = search.beam_search(
    logits_fn,
    cache,
    search.cache_batch_axes(cache_shapes),
    batch_size=batch_size,
    beam_size=beam_size,
    alpha=alpha,
    **options,
  )
  return sequences[:, 0]
