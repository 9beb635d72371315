"""The Llama family (Llama with Llama 3.1's RoPE scaling, Mistral's sliding window, Qwen2's
q/k/v biases, Gemma's offset norm and GeGLU) against HF transformers: each built there with
random weights from a tiny config (no pretrained weights exist offline), saved as
safetensors, imported, and compared -- logits on left-padded batches, greedy KV-cache
continuations token for token, the export loaded back into transformers."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from bigflax import configs, interop, models, run
from bigflax.infer import decode
from bigflax.interop import hf, llama
from bigflax.models import lora
from helpers import LLAMA_SHAPE, LLAMA_VOCAB, write_llama_tokenizer

torch = pytest.importorskip("torch", reason="HF parity needs torch")
transformers = pytest.importorskip("transformers", reason="HF parity needs transformers")

# Each family with what sets it apart switched on, at sizes where it shows: the RoPE
# scaling's three frequency regions occur at head_dim 8, the window (4) is shorter than
# the sequences, Gemma's head_dim (16) differs from hidden / heads and it has one KV head.
FAMILIES = {
  "llama": (
    transformers.LlamaConfig,
    dict(
      rope_parameters=dict(
        rope_type="llama3",
        rope_theta=500_000.0,
        factor=8.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=256,
      ),
      max_position_embeddings=1024,
    ),
  ),
  "mistral": (transformers.MistralConfig, dict(sliding_window=4)),
  "qwen2": (transformers.Qwen2Config, dict(tie_word_embeddings=True, rms_norm_eps=1e-6)),
  "gemma": (transformers.GemmaConfig, dict(num_key_value_heads=1, head_dim=16)),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  """{family: (directory, torch model)}: random weights with nonzero biases and norms (a
  mapping that drops or swaps them shows), llama saved in 3 shards and mistral sharded in
  bfloat16 (its reference is the float32 model loaded back from those shards)."""
  out = {}
  for i, (family, (config_class, extra)) in enumerate(FAMILIES.items()):
    torch.manual_seed(i)
    model = transformers.AutoModelForCausalLM.from_config(
      config_class(**dict(LLAMA_SHAPE, **extra)), dtype=torch.float32
    ).eval()
    with torch.no_grad():
      for p in model.parameters():
        p.add_(0.2 * torch.randn_like(p))
    directory = str(tmp_path_factory.mktemp(family))
    if family == "mistral":
      model.to(torch.bfloat16).save_pretrained(directory, max_shard_size="40KB")
      model = transformers.AutoModelForCausalLM.from_pretrained(
        directory, dtype=torch.float32
      ).eval()
    elif family == "llama":
      model.save_pretrained(directory, max_shard_size="30KB")
      write_llama_tokenizer(directory)
    else:
      model.save_pretrained(directory)
    out[family] = (directory, model)
  return out


def hf_logits(model, tokens, mask, positions):
  with torch.no_grad():
    return model(
      torch.tensor(np.asarray(tokens)),
      attention_mask=torch.tensor(mask),
      position_ids=torch.tensor(positions),
    ).logits.numpy()


def build(config, **overrides):
  return models.build(ml_collections.ConfigDict(dict(config, **overrides)))


def left_padded(rng, lengths, total):
  """Tokens (B, total) with row i's lengths[i] tokens at the end, its mask and positions."""
  tokens = np.asarray(
    jax.random.randint(jax.random.key(rng), (len(lengths), total), 3, LLAMA_VOCAB)
  )
  mask = (np.arange(total)[None] >= total - np.asarray(lengths)[:, None]).astype(np.int64)
  positions = np.maximum(np.cumsum(mask, 1) - 1, 0)
  return np.where(mask, tokens, 0), mask, positions


def test_checkpoints_are_what_the_tests_claim(checkpoints):
  llama_dir, mistral_dir = checkpoints["llama"][0], checkpoints["mistral"][0]
  with open(f"{llama_dir}/{hf.INDEX_FILE}") as f:
    assert len(set(json.load(f)["weight_map"].values())) >= 3
  _, tensors = hf.open_checkpoint(mistral_dir)
  assert {tensors[name].dtype.name for name in tensors} == {"bfloat16"}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("scan", [False, True])
def test_logits_match_hf_on_padded_batches(checkpoints, family, scan):
  directory, reference = checkpoints[family]
  config, params = interop.import_checkpoint(directory, scan_layers=scan)
  tokens, mask, positions = left_padded(0, [12, 7, 3], 12)
  ours = jax.jit(build(config).apply)({"params": params}, tokens, positions, mask)
  theirs = hf_logits(reference, tokens, mask, positions)
  valid = mask.astype(bool)
  np.testing.assert_allclose(np.asarray(ours)[valid], theirs[valid], atol=1e-4, rtol=0)


@pytest.mark.slow  # compiles a KV-cache decoder per family
@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_kv_cache_continuations_match_hf(checkpoints, family):
  """Left-padded prompts through prefill and decode_step (what the server runs) give
  transformers' greedy tokens; 14 tokens pass Mistral's window of 4 several times."""
  directory, reference = checkpoints[family]
  config, params = llama.import_llama(directory)
  model = build(config, decode=True, max_len=24)
  tokens, mask, _ = left_padded(1, [6, 4], 6)
  logits, state = decode.prefill(model, params, jnp.asarray(tokens), jnp.asarray(mask.sum(1)))
  step = jax.jit(lambda state, token: decode.decode_step(model, params, state, token))
  ours = [logits.argmax(-1)]
  for _ in range(13):
    logits, state = step(state, ours[-1])
    ours.append(logits.argmax(-1))
  with torch.no_grad():
    theirs = reference.generate(
      torch.tensor(tokens),
      attention_mask=torch.tensor(mask),
      do_sample=False,
      max_new_tokens=14,
      pad_token_id=0,
      eos_token_id=LLAMA_VOCAB + 1,
    )  # never sampled: no early stop
  ours = np.stack(ours, 1)
  assert len(np.unique(ours)) > 4  # not one repeated token
  np.testing.assert_array_equal(ours, theirs[:, 6:].numpy())


@pytest.mark.parametrize("family", FAMILIES)
def test_export_loads_in_transformers(checkpoints, family, tmp_path):
  """A scanned import exports per layer; transformers loads it to the same logits, and
  it imports back to the same parameters (bfloat16 and sharded for one family)."""
  directory, reference = checkpoints[family]
  config, params = llama.import_llama(directory, scan_layers=True)
  bf16 = family == "mistral"  # its weights are bfloat16 values: exact in bfloat16
  if bf16:
    llama.export_llama(str(tmp_path), config, params, dtype="bfloat16", max_shard_bytes=50_000)
  else:  # what `bigflax export --format hf` calls
    interop.export_checkpoint(str(tmp_path), config, params)
  assert hf.is_checkpoint(str(tmp_path))
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(
    str(tmp_path), dtype=torch.float32
  ).eval()
  assert type(reloaded) is type(reference)
  tokens, mask, positions = left_padded(2, [9, 5], 9)
  np.testing.assert_allclose(
    hf_logits(reloaded, tokens, mask, positions),
    hf_logits(reference, tokens, mask, positions),
    atol=1e-5,
  )
  config2, params2 = llama.import_llama(str(tmp_path), scan_layers=True)
  assert config2 == config
  jax.tree.map(np.testing.assert_array_equal, params2, params)


def test_init_from_restores_every_parameter_and_lora_starts_fresh(checkpoints, capsys):
  """--config.init_from=HF_DIR with LoRA on a scanned model: every base parameter comes
  from the checkpoint, the adapters (which it lacks) start fresh, so the merged model is
  the checkpoint's."""
  directory, _ = checkpoints["qwen2"]
  model_config, imported = llama.import_llama(directory, scan_layers=True)
  config = configs.base()
  config.model = dict(model_config, lora=configs.lora(rank=2))
  config.init_from = directory
  model = models.build(config.model)
  fresh = nn.unbox(jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
  params = run.init_params(config, fresh)
  jax.tree.map(np.testing.assert_array_equal, lora.merge(params, model.lora), imported)
  jax.tree.map(np.testing.assert_array_equal, lora.adapters(params), lora.adapters(fresh))
  assert "restored 14 parameters" in capsys.readouterr().out


def test_import_and_export_name_what_does_not_fit(checkpoints, tmp_path):
  directory, _ = checkpoints["llama"]
  hf_config, tensors = hf.open_checkpoint(directory)
  config = llama.llama_config(hf_config)
  bad = dict(tensors)
  del bad["model.layers.1.mlp.up_proj.weight"]
  bad["model.layers.0.self_attn.q_proj.bias"] = np.zeros(32, np.float32)
  bad["model.norm.weight"] = np.zeros(31, np.float32)
  with pytest.raises(ValueError) as error:
    llama.llama_params(bad, config)
  for part in (
    "missing tensors: model.layers.1.mlp.up_proj.weight",
    "unexpected tensors: model.layers.0.self_attn.q_proj.bias",
    "model.norm.weight: expected (32,), got (31,)",
  ):
    assert part in str(error.value)
  for key, value, field in (
    ("rope_parameters", {"rope_type": "yarn", "factor": 4.0}, "rope_type='yarn'"),
    ("attention_bias", True, "attention_bias"),
    ("hidden_act", "relu", "hidden_act='relu'"),
  ):
    with pytest.raises(ValueError, match=field):
      llama.llama_config(dict(hf_config, **{key: value}))
  with pytest.raises(ValueError, match="no HF"):
    llama.export_llama(str(tmp_path), dict(config, position="learned"), {})


@pytest.mark.slow  # the whole sample command
def test_sample_decodes_a_hf_directory_with_its_tokenizer(checkpoints, capsys, tmp_path):
  """`bigflax sample --workdir HF_DIR`: the checkpoint's own tokenizer.json frames the
  prompt (eos, then Llama's <s>) and the greedy tokens are transformers' own."""
  from bigflax import trained as trained_lib  # pylint: disable=import-outside-toplevel
  from bigflax.data import tokenizers  # pylint: disable=import-outside-toplevel

  directory, reference = checkpoints["llama"]
  tokenizer = tokenizers.build(
    ml_collections.ConfigDict(dict(kind="hf_lm", path=directory)), None, tmp_path
  )
  assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) == (1, 2, 2)
  ids = tokenizer.encode("def parse")
  assert ids[0] == 1 and tokenizer.decode(ids) == "def parse"
  assert tokenizers.load(tmp_path).encode("class Parser") == tokenizer.encode("class Parser")

  trained_lib.sample(directory, ["def parse"], {"max_new_tokens": 6, "temperature": 0.0})
  printed = capsys.readouterr().out
  tokens, theirs = [2] + ids, []  # greedy over the tokenizer's ids, as sample draws
  for _ in range(6):
    with torch.no_grad():
      logits = reference(torch.tensor([tokens])).logits[0, -1, : tokenizer.vocab_size]
    theirs.append(int(logits.argmax()))
    tokens.append(theirs[-1])
  assert printed.endswith(
    "--- sample ('def parse') ---\ndef parse" + tokenizer.decode(theirs) + "\n"
  )


@pytest.mark.slow  # trains a few steps, then exports
def test_fine_tune_a_hf_directory_and_export_it_back(checkpoints, tfds_dir, tmp_path):
  """train --config.init_from=HF_DIR --config.tokenizer.path=HF_DIR (scanned layers),
  then export --format hf: transformers loads the run to the run's own logits."""
  from bigflax import trained as trained_lib  # pylint: disable=import-outside-toplevel

  directory, _ = checkpoints["llama"]
  model_config, _ = llama.import_llama(directory)
  config = configs.base()
  config.model = dict(model_config, scan_layers=True, max_len=64, lora=configs.lora())
  config.tokenizer = dict(kind="hf_lm", path=directory, vocab_size=0)
  config.init_from = directory
  config.data.data_dir = tfds_dir
  config.data.seq_len, config.data.global_batch_size = 32, 8
  config.optim.warmup_steps = 1
  config.train.update(num_steps=3, eval_every=0, checkpoint_every=3)
  config.sample.max_new_tokens = 4
  workdir = str(tmp_path / "run")
  run.train(config, workdir)
  trained_lib.export_hf(workdir, str(tmp_path / "hf"))
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(
    str(tmp_path / "hf"), dtype=torch.float32
  ).eval()
  trained = trained_lib.restore(workdir)
  tokens, mask, positions = left_padded(3, [8, 5], 8)
  ours = jax.jit(trained.model.apply)({"params": trained.params}, tokens, positions, mask)
  valid = mask.astype(bool)
  np.testing.assert_allclose(
    hf_logits(reloaded, tokens, mask, positions)[valid], np.asarray(ours)[valid], atol=1e-4
  )
