"""Regression with mean squared error on in-memory features."""

import jax
import jax.numpy as jnp

from bigflax import losses
from bigflax.data import batches, sources, synthetic
from bigflax.tasks import base


def make_data(config, tokenizer, split, *, process_index, process_count):
  del tokenizer
  return make_feature_batches(
    config.data, split, process_index=process_index, process_count=process_count
  )


def make_feature_batches(
  data_config, split: str, *, process_index: int, process_count: int
) -> batches.Batches:
  """Batches of a synthetic feature set (`data/synthetic.py`); 'train' is shuffled. The
  classify task reads its feature sets through this too."""
  sources.check_kind(data_config.name, "features")
  arrays = synthetic.make(data_config.name, split, data_config.num_examples, data_config.seed)
  return batches.split_batches(
    arrays, data_config, split, process_index=process_index, process_count=process_count
  )


def init_inputs(config):
  return (jnp.zeros((1, 2), jnp.float32),)


def tokens_per_example(config):
  return 1


def batch_spec(config):
  """Shapes of a global batch, for planning a run without its data."""
  rows = config.data.global_batch_size
  return {
    "features": jax.ShapeDtypeStruct((rows, 2), jnp.float32),
    "targets": jax.ShapeDtypeStruct((rows, 1), jnp.float32),
  }


def loss_fn(model, params, batch, rng):
  predictions = model.apply({"params": params}, batch["features"], rngs={"dropout": rng})
  loss = losses.mean_squared_error(predictions, batch["targets"]).mean()
  return loss, {"loss": loss}


def eval_fn(model, params, batch):
  predictions = model.apply({"params": params}, batch["features"])
  errors = losses.mean_squared_error(predictions, batch["targets"])
  return {"squared_error": errors.sum(), "count": jnp.asarray(errors.size, jnp.float32)}


def finalize(totals):
  mse = float(totals["squared_error"] / totals["count"])
  return {"loss": mse, "mse": mse, "rmse": mse**0.5}


TASK = base.Task(
  name="regression",
  make_data=make_data,
  init_inputs=init_inputs,
  tokens_per_example=tokens_per_example,
  loss_fn=loss_fn,
  eval_fn=eval_fn,
  finalize=finalize,
  batch_spec=batch_spec,
)
