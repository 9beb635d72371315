"""Models, registered by name: `config.model.name` picks one, the other fields are its
constructor arguments. Code outside models/ asks these functions, never a model's name,
for what differs by model: its fields, FLOPs count and checkpoint surgery."""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from bigflax.models import attention, bert, gpt, layers, lora, mlp, seq2seq, vit

MODELS = {
  "bert": bert.BERT,
  "gpt": gpt.GPT,
  "mlp": mlp.MLPModel,
  "seq2seq": seq2seq.Seq2Seq,
  "vit": vit.ViT,
}
FLOPS_PER_TOKEN = {
  "bert": bert.flops_per_token,
  "gpt": gpt.flops_per_token,
  "mlp": mlp.flops_per_token,
  "seq2seq": seq2seq.flops_per_token,
  "vit": vit.flops_per_token,
}
# What parameters saved for another shape of the model need before they fit; by default
# nothing.
ADAPT_CHECKPOINT = {"vit": vit.adapt_to_resolution}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def fields(name: str) -> set:
  return {f.name for f in dataclasses.fields(MODELS[name])} - {"parent", "name"}


def lora_config(model) -> layers.LoRA | None:
  """The low-rank adapters `model` was built with: its `lora` field, None for a model
  built without adapters or of a kind that offers none."""
  offers_lora = any(f.name == "lora" for f in dataclasses.fields(model))
  return model.lora if offers_lora else None


def _check_name(name: str) -> None:
  if name not in MODELS:
    raise ValueError(f"model.name={name!r} is not a model; choose one of {sorted(MODELS)}.")


def flops_per_token(config: ml_collections.ConfigDict, num_params: int, seq_len: int) -> float:
  """Training FLOPs per token of the model `config` (each model counts its own)."""
  _check_name(config.name)
  return FLOPS_PER_TOKEN[config.name](config, num_params, seq_len)


def adapt_checkpoint(config: ml_collections.ConfigDict, source: dict, target: dict) -> dict:
  """`source` parameters made to fit the model `config`, whose fresh parameters are
  `target`: a ViT's position embedding resized to its grid; other models' unchanged."""
  _check_name(config.name)
  adapt = ADAPT_CHECKPOINT.get(config.name)
  return source if adapt is None else adapt(source, target)


def build(config: ml_collections.ConfigDict, platform: str | None = None, **overrides):
  """Builds the model `config.name` from the remaining fields (plus `overrides`) for
  `platform` (default: JAX's backend), which decides what attention_impl='auto' means."""
  _check_name(config.name)
  cls = MODELS[config.name]
  kwargs = {k: v for k, v in config.items() if k != "name"}
  kwargs.update(overrides)
  valid = fields(config.name)
  unknown = sorted(set(kwargs) - valid)
  if unknown:
    raise ValueError(
      f"model.{unknown[0]} is not a field of model '{config.name}'; valid fields: {sorted(valid)}."
    )
  if "lora" in kwargs:
    kwargs["lora"] = lora.from_config(kwargs["lora"])
  for key in ("dtype", "param_dtype"):
    if isinstance(kwargs.get(key), str):
      if kwargs[key] not in DTYPES:
        raise ValueError(f"model.{key}={kwargs[key]!r}; choose one of {sorted(DTYPES)}.")
      kwargs[key] = DTYPES[kwargs[key]]
  if "attention_impl" in kwargs:
    kwargs["attention_impl"] = attention.choose(
      kwargs["attention_impl"], platform or jax.default_backend(), kwargs.get("dtype", jnp.float32)
    )
  return cls(**kwargs)
