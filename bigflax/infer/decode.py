"""Autoregressive sampling with a KV cache: one prefill of the prompt, then one token per
step inside a single compiled `lax.scan`."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp


def filter_logits(logits: jax.Array, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
  """Sets logits outside the top-k / nucleus (top-p) set to -inf."""
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
    cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    # Keep the smallest prefix whose mass reaches top_p (always at least one token).
    keep = cumulative - jax.nn.softmax(sorted_logits, axis=-1) < top_p
    threshold = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < threshold, -jnp.inf, logits)
  return logits


def sample_next(logits, rng, temperature: float, top_k: int, top_p: float):
  if temperature == 0:
    return logits.argmax(-1)
  return jax.random.categorical(rng, filter_logits(logits / temperature, top_k, top_p))


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "temperature",
                                             "top_k", "top_p", "vocab_size"))
def generate(model: nn.Module, params, prompt: jax.Array, rng: jax.Array, *,
             max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0, vocab_size: int | None = None) -> jax.Array:
  """prompt (B, P) int -> (B, max_new_tokens) sampled continuations.

  `model` is built with decode=True; P + max_new_tokens must fit in its max_len.
  `vocab_size` (the tokenizer's) excludes the padding rows of a rounded-up embedding.
  """
  def sample_token(logits, rng):
    if vocab_size is not None:
      logits = jnp.where(jnp.arange(logits.shape[-1]) < vocab_size, logits, -jnp.inf)
    return sample_next(logits, rng, temperature, top_k, top_p)

  cache_shapes = jax.eval_shape(model.init, jax.random.key(0), prompt[:, :1])["cache"]
  cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), cache_shapes)
  logits, variables = model.apply({"params": params, "cache": cache}, prompt,
                                  mutable=["cache"])
  first = sample_token(logits[:, -1], jax.random.fold_in(rng, 0))

  def step(carry, i):
    token, cache = carry
    logits, variables = model.apply({"params": params, "cache": cache}, token[:, None],
                                    mutable=["cache"])
    nxt = sample_token(logits[:, -1], jax.random.fold_in(rng, i))
    return (nxt, variables["cache"]), nxt

  _, rest = jax.lax.scan(step, (first, variables["cache"]), jnp.arange(1, max_new_tokens))
  return jnp.concatenate([first[:, None], rest.T], axis=1)
