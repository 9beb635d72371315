"""Causal language modelling: predict token t+1 from tokens <= t."""

import functools

import jax
import jax.numpy as jnp

from bigflax import losses, metrics
from bigflax.data import pipeline
from bigflax.infer import decode


def make_data(config, tokenizer, split, *, process_index, process_count):
  """Documents tokenized and packed into windows; the batch of step s is fixed by s."""
  return pipeline.make_lm_batches(config.data, tokenizer, split,
                                  process_index=process_index, process_count=process_count)


def init_inputs(config):
  return (jnp.zeros((1, config.data.seq_len), jnp.int32),)


def tokens_per_example(config):
  return config.data.seq_len


def loss_fn(model, params, batch, rng):
  logits = model.apply({"params": params}, batch["inputs"], rngs={"dropout": rng})
  nll = losses.cross_entropy(logits, batch["targets"])
  loss = nll.mean()
  accuracy = losses.correct(jax.lax.stop_gradient(logits), batch["targets"]).mean()
  return loss, {"loss": loss, "perplexity": jnp.exp(loss), "accuracy": accuracy}


def eval_fn(model, params, batch):
  logits = model.apply({"params": params}, batch["inputs"])
  nll = losses.cross_entropy(logits, batch["targets"])
  return {"loss": nll.sum(),
          "correct": losses.correct(logits, batch["targets"]).sum(),
          "tokens": jnp.asarray(nll.size, jnp.float32)}


def finalize(totals: dict) -> dict:
  loss = float(totals["loss"] / totals["tokens"])
  return {"loss": loss, "perplexity": metrics.perplexity(loss),
          "accuracy": float(totals["correct"] / totals["tokens"])}


def serving(config, model, params, tokenizer):
  """What an export serialises and a server runs: ({name: (fn, example args)}, meta).

  prefill(params, tokens (b, t), lengths (b,)) -> (logits (b, V), state) for left-padded
  prompts, decode_step(params, state, tokens (b,)) -> (logits, state) with the KV cache in
  `state`, and sample(logits, seeds, step, temperature, top_k, top_p) -> tokens (b,). The
  batch b and the prompt length t are symbolic.
  """
  del config
  decoder = model.clone(decode=True)
  prefill = functools.partial(decode.prefill, decoder)
  ints = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32)
  floats = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
  b, t = jax.export.symbolic_shape("b, t", constraints=(f"t <= {model.max_len}",))
  prefill_args = (params, ints(b, t), ints(b))
  _, state = jax.eval_shape(prefill, *prefill_args)
  b, = jax.export.symbolic_shape("b")  # a decode step has no prompt length
  state = jax.tree.map(lambda s: jax.ShapeDtypeStruct(
      tuple(d if isinstance(d, int) else b for d in s.shape), s.dtype), state)
  functions = {
      "prefill": (prefill, prefill_args),
      "decode_step": (functools.partial(decode.decode_step, decoder),
                      (params, state, ints(b))),
      "sample": (functools.partial(decode.sample_rows, vocab_size=tokenizer.vocab_size),
                 (floats(b, model.vocab_size), ints(b), ints(), floats(b), ints(b),
                  floats(b))),
  }
  # A prompt starts after an eos, as documents do in training.
  meta = {"max_len": model.max_len, "vocab_size": tokenizer.vocab_size,
          "eos_id": tokenizer.eos_id, "pad_id": tokenizer.pad_id,
          "prompt_prefix": [tokenizer.eos_id]}
  return functions, meta
