"""Hugging Face checkpoints <-> bigflax parameters, through safetensors only (no pickle).

A checkpoint directory holds `config.json` and `model.safetensors`, or several shards
named by `model.safetensors.index.json`. This file has BERT and the helpers every mapping
shares (gpt2.py has GPT-2, llama.py the Llama family):
  import_bert(directory, scan_layers=False) -> (model config dict, params)
  export_bert(directory, config, params)   writes both back, HF-named
  bert_config(hf_config) / bert_params(tensors, config) are the pure halves of the import.
"""

import collections.abc
import dataclasses
import json
import os
import re

from flax import traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from bigflax.models import bert

# HF config.json field -> bigflax BERT field.
BERT_FIELDS = {
  "vocab_size": "vocab_size",
  "num_hidden_layers": "num_layers",
  "num_attention_heads": "num_heads",
  "hidden_size": "embed_dim",
  "intermediate_size": "mlp_dim",
  "max_position_embeddings": "max_len",
  "type_vocab_size": "num_segments",
  "layer_norm_eps": "norm_eps",
  "hidden_dropout_prob": "dropout_rate",
  "attention_probs_dropout_prob": "attention_dropout_rate",
  "initializer_range": "init_std",
}
BERT_DEFAULTS = {
  f.name: f.default
  for f in dataclasses.fields(bert.BERT)
  if f.default is not dataclasses.MISSING and f.name not in ("parent", "name")
}
# HF hidden_act -> layers.ACTIVATIONS, and back. HF's "gelu" is the exact (erf) one.
FROM_HF_ACTIVATION = {
  "gelu": "gelu_exact",
  "gelu_new": "gelu",
  "gelu_pytorch_tanh": "gelu",
  "relu": "relu",
  "silu": "silu",
  "swish": "silu",
}
TO_HF_ACTIVATION = {"gelu_exact": "gelu", "gelu": "gelu_new", "relu": "relu", "silu": "silu"}

# bigflax module path (a regex over the unstacked layout) -> HF module name.
BERT_MODULES = (
  (r"token_embed", r"embeddings.word_embeddings"),
  (r"position_embed", r"embeddings.position_embeddings"),
  (r"segment_embed", r"embeddings.token_type_embeddings"),
  (r"embed_norm", r"embeddings.LayerNorm"),
  (r"layer_(\d+)/attention/(query|key|value)", r"encoder.layer.\1.attention.self.\2"),
  (r"layer_(\d+)/attention/out", r"encoder.layer.\1.attention.output.dense"),
  (r"layer_(\d+)/attention_norm", r"encoder.layer.\1.attention.output.LayerNorm"),
  (r"layer_(\d+)/mlp/up", r"encoder.layer.\1.intermediate.dense"),
  (r"layer_(\d+)/mlp/down", r"encoder.layer.\1.output.dense"),
  (r"layer_(\d+)/mlp_norm", r"encoder.layer.\1.output.LayerNorm"),
  (r"pooler", r"pooler.dense"),
  (r"mlm_dense", r"cls.predictions.transform.dense"),
  (r"mlm_norm", r"cls.predictions.transform.LayerNorm"),
)
LEAF_NAMES = {"embedding": "weight", "kernel": "weight", "scale": "weight", "bias": "bias"}
MLM_BIAS = "cls.predictions.bias"
# Tensors HF checkpoints carry that are no bigflax parameter: a buffer of 0..max_len-1, and
# the next-sentence head (bigflax has no NSP task). Dropped on import.
IGNORED_PREFIXES = ("embeddings.position_ids", "cls.seq_relationship.")
# The MLM decoder: HF ties it to the word embedding and to cls.predictions.bias.
TIED = {
  "cls.predictions.decoder.weight": "embeddings.word_embeddings.weight",
  "cls.predictions.decoder.bias": MLM_BIAS,
}


def bert_config(hf_config: dict) -> dict:
  """HF BertConfig (the parsed config.json) -> bigflax model config fields."""
  # Shapes must be stated; the rest falls back to BERT's defaults, which are HF's too.
  missing = [
    k for k, ours in BERT_FIELDS.items() if k not in hf_config and ours not in BERT_DEFAULTS
  ]
  if missing:
    raise ValueError(f"config.json lacks {missing}; is this a BERT checkpoint?")
  if hf_config.get("position_embedding_type", "absolute") != "absolute":
    raise ValueError(
      f"position_embedding_type={hf_config['position_embedding_type']!r}: "
      f"bigflax's BERT has absolute (learned) positions only."
    )
  act = hf_config.get("hidden_act", "gelu")
  if act not in FROM_HF_ACTIVATION:
    raise ValueError(f"hidden_act={act!r}; supported: {sorted(FROM_HF_ACTIVATION)}.")
  config = {
    "name": "bert",
    **{
      ours: hf_config.get(theirs, BERT_DEFAULTS.get(ours)) for theirs, ours in BERT_FIELDS.items()
    },
  }
  config["activation"] = FROM_HF_ACTIVATION[act]
  return config


def import_bert(directory: str, scan_layers: bool = False) -> tuple[dict, dict]:
  """Reads a HF BERT checkpoint directory -> (bigflax model config, params).

  `config["pooler"]` says whether the checkpoint has a pooler; params hold the MLM head
  (mlm_*) when it has `cls.predictions.*` (call the model with head="mlm").
  """
  hf_config, tensors = read_checkpoint(directory)
  config = bert_config(hf_config)
  config["scan_layers"] = scan_layers
  params = bert_params(tensors, config)
  config["pooler"] = "pooler" in params
  return config, params


def bert_params(tensors: dict[str, np.ndarray], config: dict) -> dict:
  """HF-named tensors -> bigflax BERT params (float32) for the model `config` describes.

  Accepts the `bert.` prefix of the *For* checkpoints and old LayerNorm gamma/beta names.
  Raises one ValueError naming every missing, unexpected and mis-shaped tensor.
  """
  tensors = {_canonical(name): w for name, w in tensors.items()}
  tensors = {name: w for name, w in tensors.items() if not name.startswith(IGNORED_PREFIXES)}
  for name, target in TIED.items():
    if name in tensors:
      w = tensors.pop(name)
      if target not in tensors:
        tensors[target] = w
      elif not np.array_equal(w, tensors[target]):
        raise ValueError(
          f"{name} differs from {target}: bigflax ties the MLM output to "
          f"the token embedding and has one output bias."
        )

  config = dict(config, pooler=any(k.startswith("pooler.") for k in tensors))
  head = "mlm" if any(k.startswith("cls.predictions.") for k in tensors) else None
  expected = {
    _hf_name(path): (path, shape, hf_shape(path, shape))
    for path, shape in _bert_param_shapes(config, head).items()
  }
  check_tensors(
    tensors, {name: theirs for name, (_, _, theirs) in expected.items()}, "BERT", config
  )

  flat = {}
  for name, (path, shape, _) in expected.items():
    flat[path] = from_hf(path, np.asarray(tensors[name], np.float32), shape)
  params = traverse_util.unflatten_dict(flat, sep="/")
  return stack_layers(params, config["num_layers"]) if config.get("scan_layers") else params


def export_bert(directory: str, config, params) -> None:
  """Writes bigflax BERT params as HF `model.safetensors` (float32) + `config.json`.

  With the MLM head the names are BertForMaskedLM's (`bert.` prefix, `cls.predictions.*`;
  HF's BertForMaskedLM skips a pooler, BertModel reads it), else BertModel's.
  `import_bert` of the result gives back exactly these params.
  """
  config = {**BERT_DEFAULTS, **dict(config.items())}
  if config["pre_norm"]:
    raise ValueError("HF BERT is post-LN; a pre_norm=True model has no HF equivalent.")
  flat = traverse_util.flatten_dict(unstack_layers(nn.unbox(params)), sep="/")
  mlm = "mlm_bias" in flat
  tensors = {}
  for path, x in flat.items():
    name = _hf_name(path)
    if mlm and not name.startswith("cls."):
      name = "bert." + name
    tensors[name] = np.ascontiguousarray(to_hf(path, np.asarray(x, np.float32)))

  hf_config = {theirs: config[ours] for theirs, ours in BERT_FIELDS.items()}
  hf_config.update(
    model_type="bert",
    hidden_act=TO_HF_ACTIVATION[config["activation"]],
    position_embedding_type="absolute",
    architectures=["BertForMaskedLM" if mlm else "BertModel"],
  )
  save_checkpoint(directory, hf_config, tensors)


SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"  # {"weight_map": {tensor: shard file}}
DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}


# Sizes a config.json gives: each a whole number from 1 to MAX_SIZE. Anything else is a
# damaged or hostile file, refused before a model of that size is built or allocated.
SIZE_FIELDS = (
  "vocab_size", "hidden_size", "intermediate_size", "num_attention_heads",
  "num_key_value_heads", "num_hidden_layers", "head_dim", "max_position_embeddings",
  "type_vocab_size", "n_embd", "n_head", "n_layer", "n_positions", "n_inner",
)  # fmt: skip
MAX_SIZE = 2**31 - 1


def read_json(path: str) -> dict:
  """A checkpoint's JSON object (config.json, the shard index), its sizes checked; a
  ValueError naming the file and the field otherwise."""
  try:
    with open(path, encoding="utf-8") as f:
      parsed = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path} is not valid JSON ({e}); copy it again from its source.") from None
  if not isinstance(parsed, dict):
    raise ValueError(f"{path} holds a JSON {type(parsed).__name__}, not an object.")
  for key in SIZE_FIELDS:
    value = parsed.get(key)
    if value is not None and (type(value) is not int or not 0 < value <= MAX_SIZE):
      raise ValueError(f"{path}: {key}={value!r}; it must be a whole number from 1 to {MAX_SIZE}.")
  return parsed


def open_safetensors(path: str):
  """`safe_open` of `path` (its header read, nothing else), or a ValueError naming the file."""
  try:
    return safe_open(path, framework="numpy")
  except (SafetensorError, OSError) as e:
    raise ValueError(
      f"{path} is not a readable safetensors file ({e}): a truncated or damaged copy, or "
      f"another format under that name; copy it again from its source."
    ) from None


def is_checkpoint(directory: str) -> bool:
  """Whether `directory` holds HF safetensors weights (one file or an index of shards)."""
  return any(os.path.exists(os.path.join(directory, name)) for name in (SINGLE_FILE, INDEX_FILE))


class LazyTensors(collections.abc.Mapping):
  """{name: numpy tensor} of a checkpoint's safetensors files, each tensor read from
  disk when asked for, so an import holds the converted parameters, not a second copy of
  the checkpoint. One file is open (memory-mapped) at a time: its pages would otherwise
  stay in the process's memory; `by_file` orders names so that each opens once."""

  def __init__(self, files: dict[str, str]):  # tensor name -> file
    self._files = files
    self._open = (None, None)  # (path, handle)

  def by_file(self, names) -> list[str]:
    return sorted(names, key=lambda name: self._files[name])

  def __getitem__(self, name: str) -> np.ndarray:
    return self._handle(name).get_tensor(name)

  def shape(self, name: str) -> tuple:
    """The tensor's shape, from the file's header alone."""
    return tuple(self._handle(name).get_slice(name).get_shape())

  def _handle(self, name: str):
    path = self._files[name]
    if self._open[0] != path:
      self._open = (None, None)  # unmaps the previous file before mapping the next
      self._open = (path, open_safetensors(path))
    return self._open[1]

  def __iter__(self):
    return iter(self._files)

  def __len__(self) -> int:
    return len(self._files)


def open_checkpoint(directory: str) -> tuple[dict, LazyTensors]:
  """(parsed config.json, lazily read tensors) of a HF checkpoint directory."""
  index = os.path.join(directory, INDEX_FILE)
  if os.path.exists(index):
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict):
      raise ValueError(f"{index} has no weight_map object (tensor name -> shard file).")
    files = {name: os.path.join(directory, shard) for name, shard in weight_map.items()}
  elif os.path.exists(os.path.join(directory, SINGLE_FILE)):
    path = os.path.join(directory, SINGLE_FILE)
    with open_safetensors(path) as f:
      files = dict.fromkeys(f.keys(), path)
  else:
    raise FileNotFoundError(
      f"Neither {SINGLE_FILE} nor {INDEX_FILE} in {directory}; "
      f"bigflax reads safetensors only (never pickled .bin files)."
    )
  return read_json(os.path.join(directory, "config.json")), LazyTensors(files)


def read_checkpoint(directory: str) -> tuple[dict, dict]:
  """(parsed config.json, {name: numpy tensor}) of a HF checkpoint directory."""
  hf_config, tensors = open_checkpoint(directory)
  return hf_config, dict(tensors)


def check_tensors(tensors: dict, expected: dict, model: str, config: dict) -> None:
  """Raises one ValueError naming every missing, unexpected and mis-shaped tensor.

  `expected` maps HF names to HF shapes; `model` and `config` describe what was expected.
  """
  missing = sorted(set(expected) - set(tensors))
  unexpected = sorted(set(tensors) - set(expected))
  misshaped = [
    f"{name}: expected {tuple(expected[name])}, got {tuple(tensors[name].shape)}"
    for name in sorted(set(expected) & set(tensors))
    if tuple(tensors[name].shape) != tuple(expected[name])
  ]
  problems = [
    f"{label}: {', '.join(items)}"
    for label, items in (
      ("missing tensors", missing),
      ("unexpected tensors", unexpected),
      ("mis-shaped tensors (HF shape)", misshaped),
    )
    if items
  ]
  if problems:
    shape = ", ".join(f"{k}={config[k]}" for k in ("num_layers", "embed_dim", "vocab_size"))
    raise ValueError(
      f"The checkpoint's tensors do not fit {model}({shape}, ...): " + "; ".join(problems) + "."
    )


def save_checkpoint(
  directory: str, hf_config: dict, tensors: dict, dtype: str = "float32", max_shard_bytes: int = 0
) -> None:
  """Writes `config.json` and `model.safetensors` (HF's layout) into `directory`, the
  tensors in `dtype` ('float32' or 'bfloat16'); with `max_shard_bytes` > 0 as shards of
  at most that size (a bigger tensor gets one to itself) and `model.safetensors.index.json`,
  as HF's save_pretrained(max_shard_size=...) does."""
  if dtype not in DTYPES:
    raise ValueError(f"dtype={dtype!r}; choose one of {sorted(DTYPES)}.")
  os.makedirs(directory, exist_ok=True)
  tensors = {
    k: np.ascontiguousarray(np.asarray(x, np.float32).astype(DTYPES[dtype]))
    for k, x in tensors.items()
  }
  shards = [{}]
  for name, x in tensors.items():
    if (
      max_shard_bytes
      and shards[-1]
      and (sum(t.nbytes for t in shards[-1].values()) + x.nbytes > max_shard_bytes)
    ):
      shards.append({})
    shards[-1][name] = x
  names = (
    [SINGLE_FILE]
    if len(shards) == 1
    else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
  )
  for name, shard in zip(names, shards):
    save_file(shard, os.path.join(directory, name), metadata={"format": "pt"})
  if len(shards) > 1:
    index = {
      "metadata": {"total_size": sum(x.nbytes for x in tensors.values())},
      "weight_map": {t: name for name, shard in zip(names, shards) for t in shard},
    }
    with open(os.path.join(directory, INDEX_FILE), "w") as f:
      json.dump(index, f, indent=2, sort_keys=True)
  hf_config = dict(hf_config, dtype=dtype)  # HF's name for the weights' dtype
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(hf_config, f, indent=2, sort_keys=True)


def _canonical(name: str) -> str:
  name = name.removeprefix("bert.")
  return re.sub(
    r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name)
  )


def _hf_name(path: str) -> str:
  """'layer_0/attention/query/kernel' -> 'encoder.layer.0.attention.self.query.weight'."""
  if path == "mlm_bias":
    return MLM_BIAS
  return hf_name(path, BERT_MODULES, "BERT")


def hf_name(path: str, modules: tuple, model: str) -> str:
  """The HF name of the (unstacked) parameter `path` by the table `modules` of (regex
  over the module path, HF module name)."""
  module, leaf = path.rsplit("/", 1)
  for pattern, hf_module in modules:
    match = re.fullmatch(pattern, module)
    if match:
      return f"{match.expand(hf_module)}.{LEAF_NAMES[leaf]}"
  raise ValueError(f"Parameter {path} has no HF {model} name.")


def from_hf(path: str, w: np.ndarray, shape: tuple) -> np.ndarray:
  """The inverse of `to_hf`: a HF tensor in bigflax's layout `shape`."""
  return (w.T if path.endswith("kernel") else w).reshape(shape)


def to_hf(path: str, x):
  """bigflax layout -> HF's: Linear weights are (out, in), q/k/v heads flattened."""
  if path.endswith("kernel"):
    in_dims = 2 if path.endswith("attention/out/kernel") else 1  # (heads, kv, embed)
    return x.reshape(int(np.prod(x.shape[:in_dims])), -1).T
  return x.reshape(-1) if path.endswith("bias") else x


def hf_shape(path: str, shape: tuple) -> tuple:
  abstract = jax.ShapeDtypeStruct(shape, jnp.float32)
  return jax.eval_shape(lambda x: to_hf(path, x), abstract).shape


def _bert_param_shapes(config: dict, head: str | None) -> dict:
  """{path: shape} of the unstacked parameters of the BERT `config` (+ `head`)."""
  fields = {k: v for k, v in config.items() if k not in ("name", "dtype", "param_dtype")}
  model = bert.BERT(**dict(fields, scan_layers=False))  # float32: only shapes matter
  tokens = jnp.zeros((1, 1), jnp.int32)
  shapes = jax.eval_shape(lambda rng: model.init(rng, tokens, head=head), jax.random.key(0))
  flat = traverse_util.flatten_dict(nn.unbox(shapes["params"]), sep="/")
  return {path: tuple(s.shape) for path, s in flat.items()}


def stack_layers(params: dict, num_layers: int) -> dict:
  """layer_0..layer_{n-1} -> 'layers' stacked on a leading axis (scan_layers=True)."""
  params = dict(params)
  blocks = [params.pop(f"layer_{i}") for i in range(num_layers)]
  params["layers"] = jax.tree.map(lambda *xs: np.stack(xs), *blocks)
  return params


def unstack_layers(params: dict) -> dict:
  if "layers" not in params:
    return params
  params = dict(params)
  stacked = params.pop("layers")
  num_layers = jax.tree.leaves(stacked)[0].shape[0]
  for i in range(num_layers):
    params[f"layer_{i}"] = jax.tree.map(lambda x, i=i: x[i], stacked)
  return params
