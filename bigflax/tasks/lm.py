"""Causal language modelling: predict token t+1 from tokens <= t.

A batch may carry `weights` (1 where a target counts): supervised fine-tuning (tasks/sft.py)
trains on answer tokens only with this very loss. Evaluation reports loss, perplexity,
accuracy and precision/recall/F1 over the vocabulary (tokens seen or predicted)."""

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
