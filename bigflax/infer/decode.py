"""Autoregressive sampling with a KV cache: one prefill of the prompt, then one token per
step inside a single compiled `lax.scan` (`generate`); or step by step for a server
(`prefill`, `decode_step`, `sample_rows`), with prompts of different lengths left-padded
into one batch."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp


def filter_logits(logits: jax.Array, top_k=0, top_p=1.0) -> jax.Array:
  """Sets logits outside the top-k / nucleus (top-p) set to -inf.

  top_k and top_p are numbers or per-row arrays (B,) for logits (B, V); top_k=0 and
  top_p=1 keep every token.
  """
  if isinstance(top_k, int) and isinstance(top_p, (int, float)) and not top_k and top_p >= 1:
    return logits  # nothing to filter: skip the sort
  top_k = jnp.broadcast_to(jnp.asarray(top_k), logits.shape[:-1])[..., None]
  top_p = jnp.broadcast_to(jnp.asarray(top_p), logits.shape[:-1])[..., None]
  sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
  kth = jnp.take_along_axis(sorted_logits, jnp.maximum(top_k - 1, 0), axis=-1)
  kth = jnp.where(top_k > 0, kth, -jnp.inf)
  sorted_logits = jnp.where(sorted_logits < kth, -jnp.inf, sorted_logits)
  probs = jax.nn.softmax(sorted_logits, axis=-1)
  # Keep the smallest prefix whose mass reaches top_p (always at least one token).
  keep = (jnp.cumsum(probs, axis=-1) - probs < top_p) | (top_p >= 1)
  threshold = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
  return jnp.where(logits < jnp.maximum(kth, threshold), -jnp.inf, logits)


def sample_next(logits, rng, temperature: float, top_k: int, top_p: float):
  if temperature == 0:
    return logits.argmax(-1)
  return jax.random.categorical(rng, filter_logits(logits / temperature, top_k, top_p))


def sample_rows(
  logits: jax.Array,
  seeds: jax.Array,
  step: jax.Array,
  temperature: jax.Array,
  top_k: jax.Array,
  top_p: jax.Array,
  vocab_size: int | None = None,
):
  """logits (B, V) -> tokens (B,), each row with its own seed and sampling parameters
  (arrays (B,); temperature 0 = greedy). Row i draws with key fold_in(key(seeds[i]), step).
  `vocab_size` (the tokenizer's) excludes the padding rows of a rounded-up embedding."""
  if vocab_size is not None:
    logits = jnp.where(jnp.arange(logits.shape[-1]) < vocab_size, logits, -jnp.inf)
  hot = temperature > 0
  scaled = logits / jnp.where(hot, temperature, 1.0)[:, None]
  keys = jax.vmap(lambda seed: jax.random.fold_in(jax.random.key(seed), step))(seeds)
  drawn = jax.vmap(jax.random.categorical)(keys, filter_logits(scaled, top_k, top_p))
  return jnp.where(hot, drawn, logits.argmax(-1)).astype(jnp.int32)


def prefill(model: nn.Module, params, tokens: jax.Array, lengths: jax.Array):
  """Left-padded prompts through `model` (decode=True) into a fresh KV cache.

  tokens (B, T): row i holds its prompt in the last lengths[i] slots. Returns the logits
  after each prompt (B, V) and the decoding state for `decode_step`: the cache, each row's
  padding `offset` (masked out as keys) and its next `position`.
  """
  offset = tokens.shape[1] - lengths
  positions = jnp.maximum(jnp.arange(tokens.shape[1])[None] - offset[:, None], 0)
  mask = jnp.arange(model.max_len)[None] >= offset[:, None]
  cache_shapes = jax.eval_shape(
    model.init, jax.random.key(0), tokens[:, :1], positions[:, :1], mask
  )["cache"]
  cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), cache_shapes)
  logits, variables = model.apply(
    {"params": params, "cache": cache}, tokens, positions, mask, mutable=["cache"]
  )
  state = {"cache": variables["cache"], "offset": offset, "position": lengths}
  return logits[:, -1], state


def decode_step(model: nn.Module, params, state: dict, tokens: jax.Array):
  """Appends tokens (B,) to the decoding state: (logits for the next token (B, V), state)."""
  mask = jnp.arange(model.max_len)[None] >= state["offset"][:, None]
  logits, variables = model.apply(
    {"params": params, "cache": state["cache"]},
    tokens[:, None],
    state["position"][:, None],
    mask,
    mutable=["cache"],
  )
  state = {
    "cache": variables["cache"],
    "offset": state["offset"],
    "position": state["position"] + 1,
  }
  return logits[:, -1], state


@functools.partial(
  jax.jit,
  static_argnames=("model", "max_new_tokens", "temperature", "top_k", "top_p", "vocab_size"),
)
def generate(
  model: nn.Module,
  params,
  prompt: jax.Array,
  rng: jax.Array,
  *,
  max_new_tokens: int,
  temperature: float = 1.0,
  top_k: int = 0,
  top_p: float = 1.0,
  vocab_size: int | None = None,
) -> jax.Array:
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
  logits, variables = model.apply({"params": params, "cache": cache}, prompt, mutable=["cache"])
  first = sample_token(logits[:, -1], jax.random.fold_in(rng, 0))

  def step(carry, i):
    token, cache = carry
    logits, variables = model.apply(
      {"params": params, "cache": cache}, token[:, None], mutable=["cache"]
    )
    nxt = sample_token(logits[:, -1], jax.random.fold_in(rng, i))
    return (nxt, variables["cache"]), nxt

  _, rest = jax.lax.scan(step, (first, variables["cache"]), jnp.arange(1, max_new_tokens))
  return jnp.concatenate([first[:, None], rest.T], axis=1)
