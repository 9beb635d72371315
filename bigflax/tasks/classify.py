"""Classification of in-memory feature vectors: softmax over classes, or a single sigmoid
output for a binary problem (`model.num_outputs = 1`)."""

import jax.numpy as jnp

from bigflax import losses, metrics
from bigflax.data import pipeline, synthetic


def make_data(config, tokenizer, split, *, process_index, process_count):
  del tokenizer
  arrays = synthetic.make(config.data.name, split, config.data.num_examples, config.data.seed)
  return pipeline.Batches(arrays, config.data.global_batch_size, seed=config.data.seed,
                          shuffle=split == "train", process_index=process_index,
                          process_count=process_count)


def init_inputs(config):
  return (jnp.zeros((1, 2), jnp.float32),)


def tokens_per_example(config):
  return 1


def _loss_and_predictions(logits, labels):
  if logits.shape[-1] == 1:  # sigmoid: the logit of class 1
    logit = logits[..., 0]
    return losses.sigmoid_cross_entropy(logit, labels), (logit > 0).astype(jnp.int32)
  return losses.cross_entropy(logits, labels), logits.argmax(-1)


def loss_fn(model, params, batch, rng):
  logits = model.apply({"params": params}, batch["features"], rngs={"dropout": rng})
  nll, predictions = _loss_and_predictions(logits, batch["targets"])
  return nll.mean(), {"loss": nll.mean(),
                      "accuracy": (predictions == batch["targets"]).mean()}


def eval_fn(model, params, batch):
  logits = model.apply({"params": params}, batch["features"])
  nll, predictions = _loss_and_predictions(logits, batch["targets"])
  num_classes = max(logits.shape[-1], 2)
  return {"loss": nll.sum(), "count": jnp.asarray(nll.size, jnp.float32),
          "confusion": metrics.confusion_matrix(batch["targets"], predictions, num_classes)}


def finalize(totals):
  return {"loss": float(totals["loss"] / totals["count"]),
          **metrics.classification_metrics(totals["confusion"])}
