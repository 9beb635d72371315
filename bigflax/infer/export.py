"""Export: a run as a self-contained bundle directory that runs without bigflax.

The task's inference functions (`tasks/<task>.serving`) are serialised with `jax.export`
(StableHLO, batch dimension symbolic), the parameters written as safetensors, next to the
tokenizer files, the resolved config, a model card and the loader `load_bundle.py` (a copy
of `bundle.py`, which imports only jax, numpy and the tokenizer library).
"""

import datetime
import json
import os
import shutil
import uuid

from flax import traverse_util
import jax
import numpy as np
import safetensors.numpy

from bigflax import run_info
from bigflax import workdir as workdir_lib
from bigflax.infer import bundle
from bigflax.train import writers

LOADER = "load_bundle.py"
# Lowered for each (the bundle then runs on any of them); only CPU is run in the tests.
PLATFORMS = ("cpu", "cuda", "tpu")
CARD_PACKAGES = ("bigflax", "jax", "flax", "numpy")  # what the bundle runs with


def abstract(params):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), params)


def latest_eval(workdir: str) -> dict:
  """The last evaluation record in the run's metrics.jsonl ({} if there is none)."""
  if not os.path.exists(workdir_lib.metrics(workdir)):
    return {}
  evals = [r for r in writers.records(workdir) if r["split"] != "train"]
  return evals[-1] if evals else {}


def model_card(config, params, workdir: str, step: int, functions: dict) -> dict:
  evaluation = latest_eval(workdir)
  return {
    "task": config.task.name,
    "model": json.loads(config.model.to_json()),
    "parameters": int(sum(np.size(x) for x in jax.tree.leaves(params))),
    "trained_steps": step,
    "data": config.data.name,
    "tokenizer": config.tokenizer.kind,
    "metrics": {k: v for k, v in evaluation.items() if k not in ("step", "split")},
    "metrics_step": evaluation.get("step"),
    "metrics_split": evaluation.get("split"),
    "functions": {
      name: [str(a) for a in exported.in_avals] for name, exported in functions.items()
    },
    "platforms": list(next(iter(functions.values())).platforms),
    "source": os.path.abspath(workdir),
    "exported_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    "versions": run_info.versions(CARD_PACKAGES),
  }


def readme(card: dict, task: str) -> str:
  metrics = ", ".join(f"{k} {v:.4g}" for k, v in card["metrics"].items()) or "none logged"
  return (
    f"# bigflax bundle: {card['task']} model\n\n"
    f"{card['parameters']:,} parameters ({card['model'].get('name')}), trained "
    f"{card['trained_steps']} steps on {card['data']}.\n"
    f"Metrics ({card['metrics_split']}, step {card['metrics_step']}): {metrics}.\n"
    f"Exported {card['exported_at']} for {', '.join(card['platforms'])} with "
    + ", ".join(f"{k} {v}" for k, v in card["versions"].items())
    + ".\n\n"
    "Runs with jax, numpy and the tokenizer library alone:\n\n```python\n"
    "import sys; sys.path.insert(0, BUNDLE_DIR)\nimport load_bundle\n"
    f"model = load_bundle.load(BUNDLE_DIR)\n{bundle.USAGE[task]}\n```\n\n"
    "Or serve it: `python -m bigflax serve --bundle BUNDLE_DIR`.\n"
  )


def write(
  out: str, *, config, workdir: str, step: int, params, functions: dict, meta: dict, task: str
) -> dict:
  """Writes the bundle into the new directory `out`; returns its model card.

  `task` is what the bundle serves as ("lm" for a fine-tuned LM); `functions` and `meta`
  come from the task's `serving`; each function is exported with
  its example arguments. The bundle appears whole or not at all (written aside, renamed).
  """
  if os.path.exists(out) and os.listdir(out):
    raise FileExistsError(f"--out={out} exists and is not empty; choose a new directory.")
  exported = {
    name: jax.export.export(jax.jit(fn), platforms=PLATFORMS)(*args)
    for name, (fn, args) in functions.items()
  }
  staging = f"{out.rstrip('/')}.tmp-{uuid.uuid4().hex}"
  os.makedirs(os.path.join(staging, "functions"))
  for name, e in exported.items():
    with open(os.path.join(staging, "functions", f"{name}.jax"), "wb") as f:
      f.write(e.serialize())
  safetensors.numpy.save_file(
    {k: np.asarray(v) for k, v in traverse_util.flatten_dict(params, sep="/").items()},
    os.path.join(staging, "params.safetensors"),
  )
  tokenizer_dir = workdir_lib.tokenizer(workdir)
  if os.path.isdir(tokenizer_dir):
    shutil.copytree(tokenizer_dir, os.path.join(staging, "tokenizer"))
  card = model_card(config, params, workdir, step, exported)
  files = {
    "bundle.json": {"task": task, "functions": sorted(exported), "meta": meta},
    "config.json": json.loads(config.to_json()),
    "model_card.json": card,
  }
  for name, content in files.items():
    with open(os.path.join(staging, name), "w") as f:
      json.dump(content, f, indent=2)
  with open(os.path.join(staging, "README.md"), "w") as f:
    f.write(readme(card, task))
  shutil.copy(bundle.__file__, os.path.join(staging, LOADER))
  if os.path.exists(out):
    os.rmdir(out)
  os.replace(staging, out)
  return card
