"""Masked-language modelling (BERT): 15 % of positions are chosen; of those 80 % become
[MASK], 10 % a random token, 10 % stay; loss and accuracy count the chosen positions only.

The masking is data work: it happens on the host, per global batch, seeded by the step,
so a batch stays a pure function of (seed, step) and a resume replays it exactly.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from bigflax import losses, metrics
from bigflax.data import batches, pipeline
from bigflax.tasks import base


def mask_tokens(
  step: int, batch: dict, *, seed: int, rate: float, mask_id: int, vocab_size: int
) -> dict:
  tokens = batch["tokens"]
  rng = np.random.default_rng([seed, step])
  chosen = rng.random(tokens.shape) < rate
  action = rng.random(tokens.shape)
  random_tokens = rng.integers(0, vocab_size, tokens.shape, dtype=tokens.dtype)
  inputs = np.where(chosen & (action < 0.8), mask_id, tokens)
  inputs = np.where(chosen & (action >= 0.8) & (action < 0.9), random_tokens, inputs)
  return {
    "inputs": inputs.astype(np.int32),
    "targets": tokens,
    "weights": chosen.astype(np.float32),
  }


def mask_id(tokenizer) -> int:
  """The tokenizer's [MASK], or the first id past its vocabulary (a spare embedding row)."""
  return getattr(tokenizer, "mask_id", None) or tokenizer.vocab_size


def make_data(config, tokenizer, split, *, process_index, process_count):
  windows = pipeline.packed_windows(config.data, tokenizer, split, config.data.seq_len)
  transform = functools.partial(
    mask_tokens,
    seed=config.data.seed,
    rate=config.task.get("mask_rate", 0.15),
    mask_id=mask_id(tokenizer),
    vocab_size=tokenizer.vocab_size,
  )
  return batches.split_batches(
    {"tokens": windows},
    config.data,
    split,
    process_index=process_index,
    process_count=process_count,
    transform=transform,
  )


def init_inputs(config):
  return (jnp.zeros((1, config.data.seq_len), jnp.int32), None, None, "mlm")


def tokens_per_example(config):
  return config.data.seq_len


def batch_spec(config):
  """Shapes of a global batch, for planning a run without its data."""
  shape = (config.data.global_batch_size, config.data.seq_len)
  return {
    "inputs": jax.ShapeDtypeStruct(shape, jnp.int32),
    "targets": jax.ShapeDtypeStruct(shape, jnp.int32),
    "weights": jax.ShapeDtypeStruct(shape, jnp.float32),
  }


def _masked_sums(model, params, batch, rngs):
  logits = model.apply({"params": params}, batch["inputs"], None, None, "mlm", rngs=rngs)
  weights = batch["weights"]
  nll = losses.cross_entropy(logits, batch["targets"])
  correct = losses.correct(logits, batch["targets"])
  return {
    "loss": (nll * weights).sum(),
    "correct": (correct * weights).sum(),
    "count": weights.sum(),
  }


def loss_fn(model, params, batch, rng):
  mean = metrics.means(_masked_sums(model, params, batch, {"dropout": rng}), "count")
  return mean["loss"], {
    "loss": mean["loss"],
    "perplexity": jnp.exp(mean["loss"]),
    "accuracy": mean["correct"],
  }


def eval_fn(model, params, batch):
  return _masked_sums(model, params, batch, {})


def finalize(totals):
  mean = metrics.means(totals, "count")
  loss = float(mean["loss"])
  return {"loss": loss, "perplexity": metrics.perplexity(loss), "accuracy": float(mean["correct"])}


TASK = base.Task(
  name="mlm",
  make_data=make_data,
  init_inputs=init_inputs,
  tokens_per_example=tokens_per_example,
  loss_fn=loss_fn,
  eval_fn=eval_fn,
  finalize=finalize,
  batch_spec=batch_spec,
)
