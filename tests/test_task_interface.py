"""A task and an evaluator kind defined here alone, registered, then trained, evaluated,
exported and served through the functions the command line dispatches to: nothing else
in bigflax learns them."""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bigflax import configs, evals, losses, tasks, trained
from bigflax import run as run_lib
from bigflax.data import batches
from bigflax.infer import bundle as bundle_lib
from bigflax.train import writers


def quadrant_data(config, tokenizer, split, *, process_index, process_count):
  """Points in the plane, labelled 1 where x * y > 0 (an XOR: no linear model solves it)."""
  del tokenizer
  rng = np.random.default_rng([config.data.seed, ("train", "validation").index(split)])
  features = rng.uniform(-1, 1, (512, 2)).astype(np.float32)
  labels = (features[:, 0] * features[:, 1] > 0).astype(np.int32)
  return batches.Batches(
    {"features": features, "label": labels},
    config.data.global_batch_size,
    seed=config.data.seed,
    shuffle=split == "train",
    process_index=process_index,
    process_count=process_count,
  )


def logits(model, params, batch, rngs=None):
  return model.apply({"params": params}, batch["features"], rngs=rngs or {})


def loss_fn(model, params, batch, rng):
  nll = losses.cross_entropy(logits(model, params, batch, {"dropout": rng}), batch["label"])
  return nll.mean(), {"loss": nll.mean()}


def eval_fn(model, params, batch):
  out = logits(model, params, batch)
  return {
    "nll": losses.cross_entropy(out, batch["label"]).sum(),
    "correct": (out.argmax(-1) == batch["label"]).sum(),
    "count": jnp.asarray(batch["label"].size, jnp.float32),
  }


def serving(config, model, params, tokenizer):
  del config, tokenizer
  (b,) = jax.export.symbolic_shape("b")
  forward = lambda params, features: logits(model, params, {"features": features})
  meta = {"input": "features", "input_shape": [2], "labels": ["apart", "together"]}
  return {"forward": (forward, (params, jax.ShapeDtypeStruct((b, 2), jnp.float32)))}, meta


QUADRANT = tasks.Task(
  name="quadrant",
  make_data=quadrant_data,
  init_inputs=lambda config: (jnp.zeros((1, 2), jnp.float32),),
  tokens_per_example=lambda config: 1,
  loss_fn=loss_fn,
  eval_fn=eval_fn,
  finalize=lambda t: {
    "loss": float(t["nll"] / t["count"]),
    "accuracy": float(t["correct"] / t["count"]),
  },
  serving=serving,
  served_as="classify",
  default_metric="accuracy",
)


def parameter_norm(context, every=0):
  """A toy evaluator kind: the parameters' norm and how many eval rows the context holds."""
  rows = sum(len(batch["label"]) for batch in context.eval_batches())
  return evals.Evaluator(
    "toy",
    every,
    lambda params, step: {"param_norm": float(optax.tree.norm(params)), "eval_rows": rows},
  )


def quadrant_config():
  config = configs.base()
  config.task.name = "quadrant"
  config.model = dict(name="mlp", num_outputs=2, hidden_dims=(32,), init_std=0.5)
  config.tokenizer.kind = "none"
  config.data.update(name="quadrants", global_batch_size=64, seq_len=1)
  config.optim.update(lr=0.05, warmup_steps=0, weight_decay=0.0)
  config.train.update(num_steps=150, log_every=50, eval_every=150, checkpoint_every=150)
  config.evals = [dict(kind="sums"), dict(kind="parameter_norm", every=50)]
  return config


def test_a_task_defined_in_a_test_trains_evaluates_exports_and_serves(tmp_path):
  tasks.register(QUADRANT)
  evals.register("parameter_norm", parameter_norm)
  workdir = str(tmp_path / "run")
  run_lib.train(quadrant_config(), workdir)
  toy = writers.read(workdir, "toy")
  assert sorted(toy) == [50, 100, 150]  # every 50 steps
  assert toy[50]["param_norm"] != toy[100]["param_norm"]
  assert toy[150]["eval_rows"] == 20 * 64  # train.eval_steps batches of 64
  assert sorted(writers.read(workdir, "validation")) == [150]  # train.eval_every

  report = trained.evaluate(workdir, "validation")
  assert report["step"] == 150
  assert report["metrics"]["accuracy"] > 0.9  # chance is 0.5; a linear model gets ~0.5
  assert report["toy"] == {"param_norm": toy[150]["param_norm"], "eval_rows": 20 * 64}
  written = json.loads((tmp_path / "run" / "eval_validation_150.json").read_text())
  assert written["metrics"] == report["metrics"] and written["toy"] == report["toy"]

  trained.export(workdir, str(tmp_path / "bundle"))
  sys.path.insert(0, str(tmp_path / "bundle"))
  try:
    import load_bundle  # pylint: disable=import-outside-toplevel

    bundle = load_bundle.load(str(tmp_path / "bundle"))
  finally:
    sys.path.pop(0)
  probabilities = np.asarray(bundle.classify(np.array([[0.5, 0.5], [0.5, -0.5]], np.float32)))
  assert probabilities.argmax(-1).tolist() == [1, 0]

  served = trained.load_served_model(workdir)  # what `serve --workdir` runs
  assert isinstance(served, bundle_lib.Bundle) and served.task == "classify"
  np.testing.assert_allclose(
    np.asarray(served.classify(np.array([[0.5, 0.5], [0.5, -0.5]], np.float32))),
    probabilities,
    atol=1e-5,
  )
