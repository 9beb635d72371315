"""LoRA as parameters: `model.lora` -> `layers.LoRA`, folding adapters into the base
weights, and saving or loading the adapters alone (safetensors). The adapted layer itself
is `layers.DenseGeneral`."""

import dataclasses
import re

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file, save_file

from bigflax.models import layers

ADAPTERS = r"/lora_[ab]$"  # the adapters' parameter paths
FIELDS = tuple(f.name for f in dataclasses.fields(layers.LoRA))


def from_config(config) -> layers.LoRA | None:
  """`model.lora` (rank, alpha, dropout, targets) -> layers.LoRA; rank 0 means no LoRA."""
  if config is None or isinstance(config, layers.LoRA):
    return config
  config = dict(config)
  if set(config) != set(FIELDS):
    raise ValueError(
      f"model.lora needs exactly the fields {list(FIELDS)} (configs.lora() "
      f"gives them); got {sorted(config)}."
    )
  rank = config["rank"]
  if not isinstance(rank, int) or rank < 0:
    raise ValueError(f"model.lora.rank={rank!r} must be an integer >= 0 (0 = no LoRA).")
  if rank == 0:
    return None
  try:
    re.compile(config["targets"])
  except re.error as e:
    raise ValueError(f"model.lora.targets={config['targets']!r} is not a regex: {e}.") from e
  return layers.LoRA(**config)


def adapters(params) -> dict:
  """{parameter path: array} of the adapter parameters alone."""
  flat = traverse_util.flatten_dict(params, sep="/")
  return {path: x for path, x in flat.items() if re.search(ADAPTERS, path)}


def merge(params, lora: layers.LoRA) -> dict:
  """Folds every adapter into its kernel (W + alpha/rank A B) and drops the adapters: the
  result is what the same model without `lora` applies to the same outputs."""
  if not isinstance(params, dict):
    return params
  merged = {k: merge(v, lora) for k, v in params.items() if k not in ("lora_a", "lora_b")}
  if "lora_a" in params:
    kernel = params["kernel"]
    merged["kernel"] = (
      kernel + _product(params["lora_a"], params["lora_b"], kernel.ndim) * lora.scale
    ).astype(kernel.dtype)
  return merged


def _product(a, b, kernel_ndim: int):
  """A (*in, r) B (r, *out) -> (*in, *out); leading axes both share (scanned layers) are
  batch axes."""
  product = lambda a, b: jnp.tensordot(a.astype(jnp.float32), b.astype(jnp.float32), 1)
  for _ in range(a.ndim + b.ndim - 2 - kernel_ndim):
    product = jax.vmap(product)
  return product(a, b)


def save(path: str, params) -> None:
  """Writes the adapters of `params` (host arrays) alone to a safetensors file."""
  save_file(
    {k: np.ascontiguousarray(np.asarray(x, np.float32)) for k, x in adapters(params).items()}, path
  )


def load(path: str, params) -> dict:
  """`params` with its adapters replaced by those saved in `path` (same paths and shapes;
  anything else is an error naming the tensors)."""
  saved = load_file(path)
  own = adapters(params)
  missing, unexpected = sorted(set(own) - set(saved)), sorted(set(saved) - set(own))
  misshaped = [
    f"{k}: file {saved[k].shape} != model {tuple(own[k].shape)}"
    for k in sorted(set(own) & set(saved))
    if saved[k].shape != own[k].shape
  ]
  problems = [
    f"{label}: {', '.join(items)}"
    for label, items in (
      ("missing", missing),
      ("unexpected", unexpected),
      ("mis-shaped", misshaped),
    )
    if items
  ]
  if problems:
    raise ValueError(
      f"{path} does not hold this model's adapters (is model.lora the "
      f"same?): " + "; ".join(problems) + "."
    )
  flat = traverse_util.flatten_dict(params, sep="/")
  flat.update({k: jnp.asarray(saved[k], own[k].dtype) for k in own})
  return traverse_util.unflatten_dict(flat, sep="/")
