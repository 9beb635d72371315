"""Classification: of in-memory feature vectors (an `mlp`), or of sentences by an encoder
(BERT's pooled output, `head="classify"`). Softmax over classes, or a single sigmoid output
for a binary problem (`model.num_outputs = 1`). Metrics: loss, accuracy, P/R/F1 and the
confusion matrix, from counts summed over every example of every host."""

import jax.numpy as jnp

from bigflax import losses, metrics
from bigflax.data import pipeline, synthetic


def make_data(config, tokenizer, split, *, process_index, process_count):
  kwargs = dict(process_index=process_index, process_count=process_count)
  if config.data.name not in synthetic.NAMES:
    return pipeline.make_text_classification_batches(config.data, tokenizer, split, **kwargs)
  arrays = synthetic.make(config.data.name, split, config.data.num_examples, config.data.seed)
  return pipeline.Batches(arrays, config.data.global_batch_size, seed=config.data.seed,
                          shuffle=split == "train", **kwargs)


def init_inputs(config):
  if config.data.name in synthetic.NAMES:
    return (jnp.zeros((1, 2), jnp.float32),)
  tokens = jnp.zeros((1, config.data.seq_len), jnp.int32)
  return (tokens, tokens, tokens + 1, "classify")


def tokens_per_example(config):
  return 1 if config.data.name in synthetic.NAMES else config.data.seq_len


def _logits(model, params, batch, rngs):
  if "features" in batch:
    return model.apply({"params": params}, batch["features"], rngs=rngs)
  return model.apply({"params": params}, batch["tokens"], batch["segments"], batch["mask"],
                     "classify", rngs=rngs)


def _loss_and_predictions(logits, labels):
  if logits.shape[-1] == 1:  # sigmoid: the logit of class 1
    logit = logits[..., 0]
    return losses.sigmoid_cross_entropy(logit, labels), (logit > 0).astype(jnp.int32)
  return losses.cross_entropy(logits, labels), logits.argmax(-1)


def outputs(model, params, batch, rngs):
  """(logits, labels, weights); weight 0 marks rows that pad a split."""
  logits = _logits(model, params, batch, rngs)
  return logits, batch["label"], batch.get("weight", jnp.ones(batch["label"].shape))


def _sums(model, params, batch, rngs):
  logits, labels, weights = outputs(model, params, batch, rngs)
  nll, predictions = _loss_and_predictions(logits, labels)
  return {"loss": (nll * weights).sum(), "count": weights.sum(),
          "confusion": metrics.confusion_matrix(labels, predictions,
                                                max(logits.shape[-1], 2), weights)}


def loss_fn(model, params, batch, rng):
  sums = _sums(model, params, batch, {"dropout": rng})
  count = jnp.maximum(sums["count"], 1.0)
  return sums["loss"] / count, {"loss": sums["loss"] / count,
                                "accuracy": jnp.trace(sums["confusion"]) / count}


def eval_fn(model, params, batch):
  return _sums(model, params, batch, {})


def finalize(totals):
  return {"loss": float(totals["loss"] / totals["count"]),
          **metrics.classification_metrics(totals["confusion"])}
