"""Hugging Face checkpoints <-> bigflax: hf.py (BERT and the shared helpers), gpt2.py,
llama.py (Llama, Mistral, Qwen2, Gemma)."""

import os

from bigflax.interop import gpt2, hf, llama

IMPORTERS = {
  "bert": hf.import_bert,
  "gpt2": gpt2.import_gpt2,  # by config.json's model_type
  **dict.fromkeys(llama.FAMILIES, llama.import_llama),
}


CAUSAL_LMS = ("gpt2", *llama.FAMILIES)  # model types `bigflax sample --workdir HF_DIR` decodes
# The tokenizer config of each language model's checkpoint directory: GPT-2's BPE from its
# package (checkpoints carry vocab.json/merges.txt), the others' own tokenizer.json.
TOKENIZERS = {
  "gpt2": lambda directory: {"kind": "gpt2"},
  **dict.fromkeys(llama.FAMILIES, lambda directory: {"kind": "hf_lm", "path": directory}),
}
is_checkpoint = hf.is_checkpoint


def model_type(directory: str) -> str:
  """The model_type in a HF checkpoint directory's config.json."""
  path = os.path.join(directory, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(
      f"{path} not found: a Hugging Face checkpoint directory holds "
      f"config.json and model.safetensors (or its shards)."
    )
  return hf.read_json(path).get("model_type")


def export_checkpoint(directory: str, model_config, params, dtype: str = "float32") -> None:
  """Writes a bigflax GPT as the HF checkpoint of its layout: GPT-2's (float32) or the
  Llama family's (Llama, Mistral, Qwen2, Gemma; `dtype` float32 or bfloat16)."""
  config = {**gpt2.GPT_DEFAULTS, **dict(model_config.items())}
  if {k: config[k] for k in gpt2.LAYOUT} == gpt2.LAYOUT:
    gpt2.export_gpt2(directory, model_config, params)
  else:
    llama.export_llama(directory, model_config, params, dtype)


def import_checkpoint(directory: str, scan_layers: bool = False) -> tuple[dict, dict]:
  """A HF checkpoint directory -> (bigflax model config, params), the importer chosen by
  the model_type in its config.json."""
  kind = model_type(directory)
  if kind not in IMPORTERS:
    raise ValueError(
      f"{os.path.join(directory, 'config.json')}: model_type={kind!r}; "
      f"bigflax imports {sorted(IMPORTERS)}."
    )
  return IMPORTERS[kind](directory, scan_layers=scan_layers)
