"""Causal language modelling: predict token t+1 from tokens <= t.

A batch may carry `weights` (1 where a target counts): supervised fine-tuning (tasks/sft.py)
trains on answer tokens only with this very loss. Evaluation reports loss, perplexity,
accuracy and precision/recall/F1 over the vocabulary (tokens seen or predicted)."""

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


def batch_spec(config):
  """Shapes of a global batch, for planning a run without its data."""
  shape = (config.data.global_batch_size, config.data.seq_len)
  return {"inputs": jax.ShapeDtypeStruct(shape, jnp.int32),
          "targets": jax.ShapeDtypeStruct(shape, jnp.int32)}


def outputs(model, params, batch, rngs):
  """(logits, labels, weights) of every position: what a distillation compares."""
  logits = model.apply({"params": params}, batch["inputs"], rngs=rngs)
  weights = batch.get("weights", jnp.ones(batch["targets"].shape, jnp.float32))
  return logits, batch["targets"], weights


def loss_fn(model, params, batch, rng):
  logits, targets, weights = outputs(model, params, batch, {"dropout": rng})
  count = jnp.maximum(weights.sum(), 1.0)
  loss = (losses.cross_entropy(logits, targets) * weights).sum() / count
  correct = losses.correct(jax.lax.stop_gradient(logits), targets)
  return loss, {"loss": loss, "perplexity": jnp.exp(loss),
                "accuracy": (correct * weights).sum() / count}


def eval_fn(model, params, batch):
  logits, targets, weights = outputs(model, params, batch, {})
  return {"loss": (losses.cross_entropy(logits, targets) * weights).sum(),
          "correct": (losses.correct(logits, targets) * weights).sum(),
          "tokens": weights.sum(),
          **metrics.class_count_sums(targets, logits.argmax(-1), logits.shape[-1], weights)}


def finalize(totals: dict) -> dict:
  loss = float(totals["loss"] / totals["tokens"])
  return {"loss": loss, "perplexity": metrics.perplexity(loss),
          "accuracy": float(totals["correct"] / totals["tokens"]),
          **metrics.averaged_metrics(totals["true_positives"], totals["support"],
                                     totals["predicted"], present_only=True)}



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
