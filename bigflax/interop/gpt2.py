"""Hugging Face GPT-2 (GPT2LMHeadModel) checkpoints <-> bigflax GPT parameters.

GPT-2 is bigflax's default GPT layout: learned positions, biases, pre-LN blocks, a final
LayerNorm, the output head tied to the token embedding, tanh GELU (HF's "gelu_new").
HF's projections are Conv1D modules whose weight is (in, out), bigflax's kernel layout, so
nothing is transposed; q, k and v are fused into one c_attn (d, 3d).

  import_gpt2(directory, scan_layers=False) -> (model config dict, params)
  export_gpt2(directory, config, params)    writes config.json + model.safetensors
  gpt2_config(hf_config) / gpt2_params(tensors, config) are the pure halves of the import.
"""

import dataclasses
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bigflax.interop import hf
from bigflax.models import gpt, lora

# HF GPT2Config field -> bigflax GPT field, and HF's default where config.json may omit it.
GPT2_FIELDS = {
  "vocab_size": ("vocab_size", None),
  "n_layer": ("num_layers", None),
  "n_head": ("num_heads", None),
  "n_embd": ("embed_dim", None),
  "n_positions": ("max_len", None),
  "layer_norm_epsilon": ("norm_eps", 1e-5),
  "resid_pdrop": ("dropout_rate", 0.1),  # bigflax uses it for embd_pdrop too
  "attn_pdrop": ("attention_dropout_rate", 0.1),
  "initializer_range": ("init_std", 0.02),
}
# The GPT fields that make bigflax's GPT a GPT-2.
LAYOUT = dict(position="learned", norm="layernorm", use_bias=True, tie_embeddings=True)
GPT_DEFAULTS = {
  f.name: f.default
  for f in dataclasses.fields(gpt.GPT)
  if f.default is not dataclasses.MISSING and f.name not in ("parent", "name")
}
QKV = ("query", "key", "value")
# Causal-mask buffers that older checkpoints saved; no weights.
IGNORED = re.compile(r"transformer\.h\.\d+\.attn\.(bias|masked_bias)$")


def gpt2_config(hf_config: dict) -> dict:
  """HF GPT2Config (the parsed config.json) -> bigflax GPT config fields."""
  missing = [k for k, (_, default) in GPT2_FIELDS.items() if k not in hf_config and default is None]
  if missing:
    raise ValueError(f"config.json lacks {missing}; is this a GPT-2 checkpoint?")
  unsupported = {
    "tie_word_embeddings": True,
    "scale_attn_weights": True,
    "scale_attn_by_inverse_layer_idx": False,
    "add_cross_attention": False,
  }
  for key, value in unsupported.items():
    if hf_config.get(key, value) != value:
      raise ValueError(
        f"config.json has {key}={hf_config[key]!r}; bigflax's GPT-2 needs {value!r}."
      )
  act = hf_config.get("activation_function", "gelu_new")
  if act not in hf.FROM_HF_ACTIVATION:
    raise ValueError(f"activation_function={act!r}; supported: {sorted(hf.FROM_HF_ACTIVATION)}.")
  config = {
    "name": "gpt",
    **LAYOUT,
    **{ours: hf_config.get(theirs, default) for theirs, (ours, default) in GPT2_FIELDS.items()},
  }
  config["mlp_dim"] = hf_config.get("n_inner") or 4 * config["embed_dim"]
  config["activation"] = hf.FROM_HF_ACTIVATION[act]
  return config


def import_gpt2(directory: str, scan_layers: bool = False) -> tuple[dict, dict]:
  """Reads a HF GPT-2 checkpoint directory -> (bigflax model config, params)."""
  hf_config, tensors = hf.read_checkpoint(directory)
  config = dict(gpt2_config(hf_config), scan_layers=scan_layers)
  return config, gpt2_params(tensors, config)


def gpt2_params(tensors: dict[str, np.ndarray], config: dict) -> dict:
  """HF-named tensors (GPT2LMHeadModel's or GPT2Model's) -> bigflax GPT params (float32).

  Raises one ValueError naming every missing, unexpected and mis-shaped tensor.
  """
  tensors = {_canonical(name): w for name, w in tensors.items()}
  tensors = {name: w for name, w in tensors.items() if not IGNORED.match(name)}
  head = tensors.pop("lm_head.weight", None)
  if head is not None and not np.array_equal(head, tensors.get("transformer.wte.weight")):
    raise ValueError(
      "lm_head.weight differs from transformer.wte.weight: bigflax's GPT-2 "
      "ties its output head to the token embedding."
    )
  expected = jax.eval_shape(to_hf, param_shapes(config))
  hf.check_tensors(tensors, {k: s.shape for k, s in expected.items()}, "GPT-2", config)
  params = from_hf({k: np.asarray(w, np.float32) for k, w in tensors.items()}, config)
  return hf.stack_layers(params, config["num_layers"]) if config.get("scan_layers") else params


def export_gpt2(directory: str, config, params) -> None:
  """Writes bigflax GPT params as a HF GPT2LMHeadModel checkpoint (float32
  `model.safetensors` + `config.json`); LoRA adapters are merged in first.
  `import_gpt2` of the result gives back these (merged) params."""
  config = {**GPT_DEFAULTS, **dict(config.items())}
  layout = {k: config[k] for k in LAYOUT}
  head_dim = config["head_dim"] or config["embed_dim"] // config["num_heads"]
  if (
    layout != LAYOUT
    or config["activation"] not in hf.TO_HF_ACTIVATION
    or config["num_kv_heads"] not in (None, config["num_heads"])
    or head_dim * config["num_heads"] != config["embed_dim"]
  ):
    raise ValueError(
      f"Only GPT-2's layout exports to HF GPT-2 ({LAYOUT}, activation in "
      f"{sorted(hf.TO_HF_ACTIVATION)}, no GQA, heads * head_dim = embed_dim); "
      f"this model has {layout}, activation={config['activation']!r}, "
      f"num_kv_heads={config['num_kv_heads']}, head_dim={config['head_dim']}."
    )
  params = nn.unbox(params)
  adapters = lora.from_config(config["lora"])
  if adapters is not None:
    params = lora.merge(params, adapters)
  hf_config = {theirs: config[ours] for theirs, (ours, _) in GPT2_FIELDS.items()}
  hf_config.update(
    model_type="gpt2",
    architectures=["GPT2LMHeadModel"],
    n_inner=config["mlp_dim"],
    activation_function=hf.TO_HF_ACTIVATION[config["activation"]],
    embd_pdrop=config["dropout_rate"],
    tie_word_embeddings=True,
  )
  hf.save_checkpoint(directory, hf_config, to_hf(hf.unstack_layers(params)))


def to_hf(params: dict) -> dict:
  """Unstacked bigflax GPT params -> GPT2LMHeadModel's tensors (the tied head omitted)."""
  norm = lambda p: {"weight": p["scale"], "bias": p["bias"]}
  dense = lambda p: {"weight": p["kernel"], "bias": p["bias"]}
  modules = {
    "wte": {"weight": params["token_embed"]["embedding"]},
    "wpe": {"weight": params["position_embed"]["embedding"]},
    "ln_f": norm(params["final_norm"]),
  }
  for key, layer in params.items():
    if not re.fullmatch(r"layer_\d+", key):
      continue
    a, h = layer["attention"], f"h.{key.removeprefix('layer_')}."
    embed = a["query"]["kernel"].shape[0]
    modules.update(
      {
        h + "ln_1": norm(layer["attention_norm"]),
        h + "attn.c_attn": {
          "weight": jnp.concatenate([a[n]["kernel"].reshape(embed, -1) for n in QKV], 1),
          "bias": jnp.concatenate([a[n]["bias"].reshape(-1) for n in QKV]),
        },
        h + "attn.c_proj": {
          "weight": a["out"]["kernel"].reshape(-1, embed),
          "bias": a["out"]["bias"],
        },
        h + "ln_2": norm(layer["mlp_norm"]),
        h + "mlp.c_fc": dense(layer["mlp"]["up"]),
        h + "mlp.c_proj": dense(layer["mlp"]["down"]),
      }
    )
  return {
    f"transformer.{module}.{leaf}": x
    for module, leaves in modules.items()
    for leaf, x in leaves.items()
  }


def from_hf(tensors: dict, config: dict) -> dict:
  """The inverse of `to_hf` for the GPT `config` describes (unstacked layers)."""
  t = lambda name: tensors[f"transformer.{name}"]
  norm = lambda name: {"scale": t(f"{name}.weight"), "bias": t(f"{name}.bias")}
  dense = lambda name: {"kernel": t(f"{name}.weight"), "bias": t(f"{name}.bias")}
  embed, heads = config["embed_dim"], config["num_heads"]
  params = {
    "token_embed": {"embedding": t("wte.weight")},
    "position_embed": {"embedding": t("wpe.weight")},
    "final_norm": norm("ln_f"),
  }
  for i in range(config["num_layers"]):
    h = f"h.{i}."
    kernels = np.split(t(h + "attn.c_attn.weight"), 3, axis=1)
    biases = np.split(t(h + "attn.c_attn.bias"), 3)
    attention = {
      n: {"kernel": w.reshape(embed, heads, -1), "bias": b.reshape(heads, -1)}
      for n, w, b in zip(QKV, kernels, biases)
    }
    attention["out"] = {
      "kernel": t(h + "attn.c_proj.weight").reshape(heads, -1, embed),
      "bias": t(h + "attn.c_proj.bias"),
    }
    params[f"layer_{i}"] = {
      "attention_norm": norm(h + "ln_1"),
      "attention": attention,
      "mlp_norm": norm(h + "ln_2"),
      "mlp": {"up": dense(h + "mlp.c_fc"), "down": dense(h + "mlp.c_proj")},
    }
  return params


def _canonical(name: str) -> str:
  """GPT2Model checkpoints name their tensors without the `transformer.` prefix."""
  return name if name.startswith(("transformer.", "lm_head.")) else "transformer." + name


def param_shapes(config: dict) -> dict:
  """ShapeDtypeStructs of the unstacked parameters of the GPT `config` describes."""
  fields = {k: v for k, v in config.items() if k not in ("name", "dtype", "param_dtype")}
  model = gpt.GPT(**dict(fields, scan_layers=False, lora=None))
  tokens = jnp.zeros((1, 1), jnp.int32)
  shapes = jax.eval_shape(lambda rng: model.init(rng, tokens), jax.random.key(0))
  return nn.unbox(shapes["params"])
