"""Hugging Face Llama-family checkpoints <-> bigflax GPT parameters: LlamaForCausalLM
(Llama 2, 3, 3.1, 3.2), MistralForCausalLM, Qwen2ForCausalLM (Qwen2, Qwen2.5) and
GemmaForCausalLM (Gemma 1), one mapping: the four differ in config fields, not in tensor
names. Single-file or sharded safetensors, float32 or bfloat16; tensors are read one at a
time into the converted parameters (no second copy of the checkpoint in memory).

  import_llama(directory, scan_layers=False) -> (model config dict, params)
  export_llama(directory, config, params, dtype="float32", max_shard_bytes=0)
  llama_config(hf_config) / llama_params(tensors, config) are the pure halves of the import.

Not covered (refused with an error naming the field): rope types other than the default
and Llama 3.1's "llama3" (linear, dynamic, yarn, longrope); Llama's attention_bias /
mlp_bias; Qwen2's use_sliding_window; Gemma 2/3 (their own model types: logit
soft-capping, alternating local/global layers, extra norms).
"""

import dataclasses

from flax import traverse_util
import flax.linen as nn
import numpy as np

from bigflax.interop import gpt2, hf
from bigflax.models import gpt, lora

# HF config field -> bigflax GPT field, and the default where config.json may omit it.
FIELDS = {
  "vocab_size": ("vocab_size", None),
  "num_hidden_layers": ("num_layers", None),
  "num_attention_heads": ("num_heads", None),
  "hidden_size": ("embed_dim", None),
  "intermediate_size": ("mlp_dim", None),
  "max_position_embeddings": ("max_len", None),
  "rms_norm_eps": ("norm_eps", 1e-6),
  "initializer_range": ("init_std", 0.02),
  "attention_dropout": ("attention_dropout_rate", 0.0),
}
# What every family shares: bigflax's GPT made a Llama.
LAYOUT = dict(
  name="gpt", position="rope", norm="rmsnorm", activation="swiglu", use_bias=False, dropout_rate=0.0
)
# model_type -> (the GPT fields that differ from LAYOUT, HF's tie_word_embeddings default).
FAMILIES = {
  "llama": ({}, False),
  "mistral": ({}, False),  # + sliding_window from config.json
  "qwen2": (dict(qkv_bias=True), False),
  "gemma": (dict(norm="rmsnorm_offset", activation="geglu", scale_embeddings=True), True),
}
# The HF activations each family's gated MLP may name (Gemma's legacy "gelu" means tanh).
ACTIVATIONS = {"swiglu": ("silu", "swish"), "geglu": ("gelu_pytorch_tanh", "gelu", "gelu_new")}
ARCHITECTURES = {
  "llama": "LlamaForCausalLM",
  "mistral": "MistralForCausalLM",
  "qwen2": "Qwen2ForCausalLM",
  "gemma": "GemmaForCausalLM",
}
GPT_DEFAULTS = {
  f.name: f.default
  for f in dataclasses.fields(gpt.GPT)
  if f.default is not dataclasses.MISSING and f.name not in ("parent", "name")
}

# bigflax module path (a regex over the unstacked layout) -> HF module name.
MODULES = (
  (r"token_embed", r"model.embed_tokens"),
  (r"final_norm", r"model.norm"),
  (r"lm_head", r"lm_head"),
  (r"layer_(\d+)/attention_norm", r"model.layers.\1.input_layernorm"),
  (r"layer_(\d+)/mlp_norm", r"model.layers.\1.post_attention_layernorm"),
  (r"layer_(\d+)/attention/query", r"model.layers.\1.self_attn.q_proj"),
  (r"layer_(\d+)/attention/key", r"model.layers.\1.self_attn.k_proj"),
  (r"layer_(\d+)/attention/value", r"model.layers.\1.self_attn.v_proj"),
  (r"layer_(\d+)/attention/out", r"model.layers.\1.self_attn.o_proj"),
  (r"layer_(\d+)/mlp/(gate|up|down)", r"model.layers.\1.mlp.\2_proj"),
)
TIED_HEAD = "lm_head.weight"
# Options only one family has.
ONE_FAMILY = {"qkv_bias": "qwen2", "scale_embeddings": "gemma", "sliding_window": "mistral"}


def llama_config(hf_config: dict) -> dict:
  """A HF Llama/Mistral/Qwen2/Gemma config (the parsed config.json) -> bigflax GPT fields."""
  kind = hf_config.get("model_type")
  if kind not in FAMILIES:
    raise ValueError(f"model_type={kind!r}; the Llama family is {sorted(FAMILIES)}.")
  missing = [k for k, (_, default) in FIELDS.items() if k not in hf_config and default is None]
  if missing:
    raise ValueError(f"config.json lacks {missing}; is this a {kind} checkpoint?")
  layout, tied = FAMILIES[kind]
  config = {
    **LAYOUT,
    **layout,
    **{ours: hf_config.get(theirs, default) for theirs, (ours, default) in FIELDS.items()},
  }
  config["num_kv_heads"] = hf_config.get("num_key_value_heads") or config["num_heads"]
  config["head_dim"] = hf_config.get("head_dim") or config["embed_dim"] // config["num_heads"]
  config["tie_embeddings"] = hf_config.get("tie_word_embeddings", tied)
  config.update(_rope_fields(hf_config))
  act = hf_config.get("hidden_act") or hf_config.get("hidden_activation")
  if act not in ACTIVATIONS[config["activation"]]:
    raise ValueError(
      f"config.json has hidden_act={act!r}; bigflax's {kind} takes "
      f"{ACTIVATIONS[config['activation']]}."
    )
  unsupported = {"attention_bias": False, "mlp_bias": False, "use_sliding_window": False}
  for key, value in unsupported.items():
    if hf_config.get(key, value) != value:
      raise ValueError(
        f"config.json has {key}={hf_config[key]!r}; bigflax's {kind} import needs {value!r}."
      )
  if kind == "mistral":
    config["sliding_window"] = hf_config.get("sliding_window") or 0
  return config


def _rope_fields(hf_config: dict) -> dict:
  """RoPE theta and Llama 3.1's scaling, from transformers 5's `rope_parameters` or the
  older top-level `rope_theta` + `rope_scaling` that hub checkpoints carry."""
  rope = dict(hf_config.get("rope_scaling") or {}, **(hf_config.get("rope_parameters") or {}))
  theta = rope.get("rope_theta", hf_config.get("rope_theta", 10_000.0))
  kind = rope.get("rope_type", rope.get("type", "default"))
  fields = {"rope_max_wavelength": float(theta)}
  if kind == "llama3":
    fields.update(
      rope_scaling_factor=float(rope["factor"]),
      rope_low_freq_factor=float(rope["low_freq_factor"]),
      rope_high_freq_factor=float(rope["high_freq_factor"]),
      rope_original_max_len=int(rope["original_max_position_embeddings"]),
    )
  elif kind != "default":
    raise ValueError(
      f"config.json has rope_type={kind!r}; bigflax imports 'default' and "
      f"'llama3' (Llama 3.1's frequency scaling)."
    )
  return fields


def import_llama(directory: str, scan_layers: bool = False) -> tuple[dict, dict]:
  """Reads a HF Llama-family checkpoint directory -> (bigflax model config, params)."""
  hf_config, tensors = hf.open_checkpoint(directory)
  config = dict(llama_config(hf_config), scan_layers=scan_layers)
  return config, llama_params(tensors, config)


def llama_params(tensors, config: dict) -> dict:
  """HF-named tensors (a dict or `hf.LazyTensors`) -> bigflax GPT params (float32), each
  tensor converted as it is read; stacked on a leading axis under `scan_layers`.

  Raises one ValueError naming every missing, unexpected and mis-shaped tensor.
  """
  shapes = param_shapes(config)
  expected = {hf.hf_name(path, MODULES, "Llama"): (path, shape) for path, shape in shapes.items()}
  names = set(tensors)
  if config["tie_embeddings"]:
    names.discard(TIED_HEAD)  # some exports write the tied head out; it is the embedding
  hf.check_tensors(
    {name: _Shape(tensors, name) for name in names},
    {name: hf.hf_shape(path, shape) for name, (path, shape) in expected.items()},
    "the Llama family's GPT",
    config,
  )
  flat = {}
  order = tensors.by_file(expected) if isinstance(tensors, hf.LazyTensors) else expected
  for name in order:
    path, shape = expected[name]
    flat[path] = hf.from_hf(path, np.asarray(tensors[name], np.float32), shape)
  params = traverse_util.unflatten_dict(flat, sep="/")
  return _stack(params, config["num_layers"]) if config.get("scan_layers") else params


class _Shape:
  """A tensor's shape without reading it (check_tensors only looks at `.shape`)."""

  def __init__(self, tensors, name):
    self._tensors, self._name = tensors, name

  @property
  def shape(self):
    if isinstance(self._tensors, hf.LazyTensors):
      return self._tensors.shape(self._name)
    return np.shape(self._tensors[self._name])


def _stack(params: dict, num_layers: int) -> dict:
  """layer_0.. -> 'layers' (scan_layers=True), one stacked leaf at a time, each layer's
  copy dropped as it is stacked."""
  params = dict(params)
  flat = [traverse_util.flatten_dict(params.pop(f"layer_{i}"), sep="/") for i in range(num_layers)]
  stacked = {}
  for path in list(flat[0]):
    stacked[path] = np.stack([f.pop(path) for f in flat])
  params["layers"] = traverse_util.unflatten_dict(stacked, sep="/")
  return params


def export_llama(
  directory: str, config, params, dtype: str = "float32", max_shard_bytes: int = 0
) -> None:
  """Writes a bigflax GPT of the Llama family as a HF checkpoint that transformers loads
  (`config.json`, safetensors in `dtype`, sharded beyond `max_shard_bytes` if > 0); LoRA
  adapters are merged in first, scanned layers written per layer. `import_llama` of the
  result gives back these (merged) params."""
  config = {**GPT_DEFAULTS, **dict(config.items())}
  params = nn.unbox(params)
  adapters = lora.from_config(config["lora"])
  if adapters is not None:
    params = lora.merge(params, adapters)
  params = hf.unstack_layers(params)
  kind = model_type(config)
  vocab_size, embed_dim = params["token_embed"]["embedding"].shape  # 0 in a run's config
  hf_config = {theirs: config[ours] for theirs, (ours, _) in FIELDS.items()}
  hf_config.update(
    model_type=kind,
    architectures=[ARCHITECTURES[kind]],
    vocab_size=int(vocab_size),
    num_key_value_heads=config["num_kv_heads"] or config["num_heads"],
    head_dim=config["head_dim"] or embed_dim // config["num_heads"],
    hidden_act="gelu_pytorch_tanh" if config["activation"] == "geglu" else "silu",
    tie_word_embeddings=config["tie_embeddings"],
    rope_parameters=_hf_rope(config),
    rope_theta=config["rope_max_wavelength"],
  )
  if kind == "mistral":
    hf_config["sliding_window"] = config["sliding_window"]
  flat = traverse_util.flatten_dict(params, sep="/")
  tensors = {
    hf.hf_name(path, MODULES, "Llama"): hf.to_hf(path, np.asarray(x)) for path, x in flat.items()
  }
  hf.save_checkpoint(directory, hf_config, tensors, dtype, max_shard_bytes)


def model_type(config: dict) -> str:
  """The HF model_type of a bigflax GPT config of the Llama family; an error naming what
  has no HF equivalent otherwise."""
  c = {**GPT_DEFAULTS, **config}
  kind = (
    "gemma"
    if c["norm"] == "rmsnorm_offset"
    else "qwen2"
    if c["qkv_bias"]
    else "mistral"
    if c["sliding_window"]
    else "llama"
  )
  layout = dict(LAYOUT, **FAMILIES[kind][0])
  layout.pop("name")
  layout.pop("dropout_rate")  # training-only
  differs = {k: c[k] for k, v in layout.items() if c[k] != v}
  differs.update({k: c[k] for k, family in ONE_FAMILY.items() if c[k] and family != kind})
  if differs:
    raise ValueError(
      f"This GPT ({differs}) is no HF {kind}: the Llama family exports with {layout}."
    )
  return kind


def _hf_rope(config: dict) -> dict:
  rope = {"rope_type": "default", "rope_theta": config["rope_max_wavelength"]}
  if config["rope_scaling_factor"]:
    rope.update(
      rope_type="llama3",
      factor=config["rope_scaling_factor"],
      low_freq_factor=config["rope_low_freq_factor"],
      high_freq_factor=config["rope_high_freq_factor"],
      original_max_position_embeddings=config["rope_original_max_len"],
    )
  return rope


def param_shapes(config: dict) -> dict:
  """{path: shape} of the unstacked parameters of the GPT `config` describes."""
  flat = traverse_util.flatten_dict(gpt2.param_shapes(config), sep="/")
  return {path: tuple(s.shape) for path, s in flat.items()}
