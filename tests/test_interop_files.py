"""Hugging Face checkpoint directories from elsewhere, damaged: each gives one error naming
the file and the field, before any model is built (issue 26, item 2)."""

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from bigflax import interop
from helpers import run

CONFIG = dict(
  model_type="llama", vocab_size=64, hidden_size=16, intermediate_size=32,
  num_attention_heads=2, num_key_value_heads=2, num_hidden_layers=1,
  max_position_embeddings=32, hidden_act="silu", rms_norm_eps=1e-6,
)  # fmt: skip


def checkpoint(directory, config=CONFIG, weights=None):
  directory.mkdir(exist_ok=True)
  (directory / "config.json").write_text(json.dumps(config) if isinstance(config, dict) else config)
  path = directory / "model.safetensors"
  save_file({"model.embed_tokens.weight": np.zeros((64, 16), np.float32)}, str(path))
  if weights is not None:
    path.write_bytes(weights(path.read_bytes()))
  return directory


@pytest.mark.parametrize(
  "config,expected",
  [
    ('{"model_type": "llama", ', "config.json is not valid JSON"),
    ("[1, 2]", "config.json holds a JSON list, not an object"),
    (dict(CONFIG, num_attention_heads=0), "num_attention_heads=0; it must be a whole number"),
    (dict(CONFIG, vocab_size=10**12), "vocab_size=1000000000000; it must be a whole number"),
    (dict(CONFIG, hidden_size="16"), "hidden_size='16'; it must be a whole number"),
  ],
)
def test_a_bad_config_json_is_named_with_its_field(tmp_path, config, expected):
  directory = checkpoint(tmp_path / "hf", config)
  with pytest.raises(ValueError, match="config.json") as raised:
    interop.import_checkpoint(str(directory))
  assert expected in str(raised.value)


@pytest.mark.parametrize(
  "damage",
  [
    lambda data: data[: len(data) // 2],  # truncated
    lambda data: b"\xff" * 8 + data[8:],  # the header's length flipped
    lambda data: b"not a safetensors file\n",  # another format under the name
  ],
)
def test_a_damaged_safetensors_file_is_named(tmp_path, damage):
  directory = checkpoint(tmp_path / "hf", weights=damage)
  with pytest.raises(ValueError, match="model.safetensors is not a readable safetensors file"):
    interop.import_checkpoint(str(directory))


def test_the_command_line_names_the_damaged_file(tmp_path):
  directory = checkpoint(tmp_path / "hf", weights=lambda data: data[: len(data) // 2])
  result = run("sample", directory, "--prompt", "x", timeout=120)
  assert result.returncode == 2, result.stderr
  assert f"{directory}/model.safetensors is not a readable safetensors file" in result.stderr
  assert "Traceback" not in result.stderr
