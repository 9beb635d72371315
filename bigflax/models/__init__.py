"""Models, registered by name: `config.model.name` picks one, the other fields are its
constructor arguments."""

import dataclasses

import jax.numpy as jnp
import ml_collections

from bigflax.models import bert, gpt, lora, mlp, seq2seq, vit

MODELS = {"bert": bert.BERT, "gpt": gpt.GPT, "mlp": mlp.MLPModel, "seq2seq": seq2seq.Seq2Seq,
          "vit": vit.ViT}
FLOPS_PER_TOKEN = {"bert": bert.flops_per_token, "gpt": gpt.flops_per_token,
                   "mlp": mlp.flops_per_token, "seq2seq": seq2seq.flops_per_token,
                   "vit": vit.flops_per_token}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def fields(name: str) -> set:
  return {f.name for f in dataclasses.fields(MODELS[name])} - {"parent", "name"}


def build(config: ml_collections.ConfigDict, **overrides):
  """Builds the model `config.name` from the remaining fields (plus `overrides`)."""
  if config.name not in MODELS:
    raise ValueError(f"model.name={config.name!r} is not a model; choose one of "
                     f"{sorted(MODELS)}.")
  cls = MODELS[config.name]
  kwargs = {k: v for k, v in config.items() if k != "name"}
  kwargs.update(overrides)
  valid = fields(config.name)
  unknown = sorted(set(kwargs) - valid)
  if unknown:
    raise ValueError(f"model.{unknown[0]} is not a field of model '{config.name}'; valid "
                     f"fields: {sorted(valid)}.")
  if "lora" in kwargs:
    kwargs["lora"] = lora.from_config(kwargs["lora"])
  for key in ("dtype", "param_dtype"):
    if isinstance(kwargs.get(key), str):
      if kwargs[key] not in DTYPES:
        raise ValueError(f"model.{key}={kwargs[key]!r}; choose one of {sorted(DTYPES)}.")
      kwargs[key] = DTYPES[kwargs[key]]
  return cls(**kwargs)
