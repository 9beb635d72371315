"""Causal language modelling: predict token t+1 from tokens <= t."""

import jax
import jax.numpy as jnp

from bigflax import losses, metrics
from bigflax.data import pipeline


def make_data(config, tokenizer, split, *, process_index, process_count):
  """Documents tokenized and packed into windows; the batch of step s is fixed by s."""
  return pipeline.make_lm_batches(config.data, tokenizer, split,
                                  process_index=process_index, process_count=process_count)


def init_inputs(config):
  return (jnp.zeros((1, config.data.seq_len), jnp.int32),)


def tokens_per_example(config):
  return config.data.seq_len


def outputs(model, params, batch, rngs):
  """(logits, labels, weights) of every position: what a distillation compares."""
  logits = model.apply({"params": params}, batch["inputs"], rngs=rngs)
  return logits, batch["targets"], jnp.ones(batch["targets"].shape, jnp.float32)


def loss_fn(model, params, batch, rng):
  logits, targets, _ = outputs(model, params, batch, {"dropout": rng})
  nll = losses.cross_entropy(logits, targets)
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
