"""Encoder-decoder: the decoder block against PyTorch, KV-cache decoding, published shapes
and parameter counts, greedy and beam search against brute force."""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigflax import models
from bigflax.infer import beam_search, translate
from bigflax.models import blocks, seq2seq
from experiments import seq2seq_seed_shape, transformer_base

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("pre_norm", [False, True])
def test_decoder_block_matches_torch(pre_norm):
  """Causal self-attention, cross-attention to a padded memory and the ReLU MLP of a
  blocks.Block equal torch.nn.TransformerDecoderLayer's with the same weights."""
  d, heads, mlp_dim, b, t, s = 16, 4, 32, 2, 5, 7
  block = blocks.Block(
    blocks.BlockConfig(
      num_heads=heads,
      mlp_dim=mlp_dim,
      causal=True,
      cross_attention=True,
      activation="relu",
      norm_eps=1e-6,
      pre_norm=pre_norm,
    )
  )
  rng = np.random.default_rng(0)
  x = rng.normal(size=(b, t, d)).astype(np.float32)
  memory = rng.normal(size=(b, s, d)).astype(np.float32)
  memory_valid = np.arange(s)[None] < np.array([[s], [4]])
  inputs = blocks.BlockInputs(encoded=memory, encoder_mask=memory_valid[:, None, None])
  params = nn.unbox(block.init(jax.random.key(0), x, inputs)["params"])
  params = jax.tree.map(
    lambda p: p + rng.normal(size=p.shape).astype(np.float32) * 0.1, params
  )  # norms' scales and biases away from 1 and 0
  got = block.apply({"params": params}, x, inputs)

  ref = torch.nn.TransformerDecoderLayer(
    d,
    heads,
    mlp_dim,
    dropout=0.0,
    activation="relu",
    layer_norm_eps=1e-6,
    batch_first=True,
    norm_first=pre_norm,
  )
  tensor = lambda a: torch.tensor(np.asarray(a))

  def attention(module, p):
    kernels = [p[n]["kernel"].reshape(d, d).T for n in ("query", "key", "value")]
    biases = [p[n]["bias"].reshape(d) for n in ("query", "key", "value")]
    module.in_proj_weight.copy_(tensor(np.concatenate(kernels)))
    module.in_proj_bias.copy_(tensor(np.concatenate(biases)))
    module.out_proj.weight.copy_(tensor(p["out"]["kernel"].reshape(d, d).T))
    module.out_proj.bias.copy_(tensor(p["out"]["bias"]))

  def norm(module, p):
    module.weight.copy_(tensor(p["scale"]))
    module.bias.copy_(tensor(p["bias"]))

  with torch.no_grad():
    attention(ref.self_attn, params["attention"])
    attention(ref.multihead_attn, params["cross_attention"])
    for linear, name in ((ref.linear1, "up"), (ref.linear2, "down")):
      linear.weight.copy_(tensor(params["mlp"][name]["kernel"].T))
      linear.bias.copy_(tensor(params["mlp"][name]["bias"]))
    for module, name in (
      (ref.norm1, "attention_norm"),
      (ref.norm2, "cross_attention_norm"),
      (ref.norm3, "mlp_norm"),
    ):
      norm(module, params[name])
    want = ref.eval()(
      tensor(x),
      tensor(memory),
      tgt_mask=torch.nn.Transformer.generate_square_subsequent_mask(t),
      tgt_is_causal=True,
      memory_key_padding_mask=tensor(~memory_valid),
    )
  np.testing.assert_allclose(got, want.numpy(), atol=2e-5)


def tiny(**kw):
  args = dict(
    vocab_size=8,
    num_encoder_layers=2,
    num_decoder_layers=2,
    num_heads=2,
    embed_dim=16,
    mlp_dim=32,
    max_len=8,
    dropout_rate=0.0,
  )
  args.update(kw)
  return seq2seq.Seq2Seq(**args)


SOURCE = np.array([[3, 4, 5, 6, 2, 0], [5, 3, 2, 0, 0, 0]], np.int32)
SOURCE_MASK = (np.arange(6)[None] < np.array([[5], [3]])).astype(np.int32)


def init(model):
  return nn.unbox(model.init(jax.random.key(0), SOURCE, SOURCE[:, :4], SOURCE_MASK)["params"])


@pytest.mark.parametrize(
  "kw",
  [
    dict(),
    dict(position="learned", scan_layers=True),
    dict(source_vocab_size=11, tie_embeddings=False, pre_norm=False),
  ],
)
def test_cached_decoding_equals_full_forward(kw):
  model = tiny(**kw)
  params = init(model)
  target = jnp.array([[1, 3, 4, 7, 5, 6], [1, 6, 6, 3, 4, 4]])
  full = model.apply({"params": params}, SOURCE, target, SOURCE_MASK)
  encoded = model.apply({"params": params}, SOURCE, SOURCE_MASK, method="encode")
  decoder = model.clone(decode=True)
  variables = decoder.init(
    jax.random.key(0), encoded, SOURCE_MASK, target[:, :1], method="run_decoder"
  )
  cache = jax.tree.map(jnp.zeros_like, variables["cache"])
  steps = []
  for i in range(target.shape[1]):
    logits, variables = decoder.apply(
      {"params": params, "cache": cache},
      encoded,
      SOURCE_MASK,
      target[:, i : i + 1],
      method="run_decoder",
      mutable=["cache"],
    )
    cache = variables["cache"]
    steps.append(logits)
  np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, atol=1e-5)


def test_source_padding_is_ignored():
  model = tiny()
  params = init(model)
  target = jnp.array([[1, 3, 4], [1, 6, 6]])
  garbage = SOURCE.copy()
  garbage[SOURCE_MASK == 0] = 7
  a = model.apply({"params": params}, SOURCE, target, SOURCE_MASK)
  b = model.apply({"params": params}, garbage, target, SOURCE_MASK)
  np.testing.assert_allclose(a, b, atol=1e-6)


def test_vocabularies_and_tied_output():
  shared = init(tiny())
  assert set(shared) == {"token_embed", "encoder", "decoder"}
  separate = init(tiny(source_vocab_size=11, tie_embeddings=False))
  assert separate["source_embed"]["embedding"].shape == (11, 16)
  assert separate["output"]["kernel"].shape == (16, 8)


def test_seed_shape():
  config = seq2seq_seed_shape.get_config()
  model = models.build(config.model)
  tokens = jax.ShapeDtypeStruct((1, 512), jnp.int32)
  states = jax.eval_shape(
    lambda s, t: model.init_with_output(jax.random.key(0), s, t, None, False)[0], tokens, tokens
  )
  assert states.shape == (1, 512, 768)


def test_transformer_base_has_the_published_65m_parameters():
  model = models.build(transformer_base.get_config().model)
  tokens = jnp.zeros((1, 8), jnp.int32)
  shapes = jax.eval_shape(model.init, jax.random.key(0), tokens, tokens)
  count = sum(x.size for x in jax.tree.leaves(shapes["params"]))
  assert count == 63_082_496  # embeddings 18.9M + encoder 18.9M + decoder 25.2M
  assert abs(count - 65e6) / 65e6 < 0.05


# ---------------------------------------------------------------- search


def penalty(length, alpha):  # GNMT, written out again here as the reference
  return ((5 + length) / 6) ** alpha


def brute_force(log_probs_fn, vocab, eos, max_len, alpha):
  """{sequence: score} over every hypothesis: non-EOS tokens then EOS, or max_len tokens.
  `log_probs_fn(sequences)` gives their log-probabilities."""
  words = [w for w in range(vocab) if w != eos]
  seqs = [
    body + (last,)
    for n in range(1, max_len + 1)
    for body in itertools.product(words, repeat=n - 1)
    for last in (range(vocab) if n == max_len else [eos])
  ]
  log_probs = log_probs_fn(seqs)
  return {seq: float(lp) / penalty(len(seq), alpha) for seq, lp in zip(seqs, log_probs)}


def padded(seq, max_len):
  return tuple(seq) + (0,) * (max_len - len(seq))


def test_beam_search_finds_the_brute_force_top_k():
  """A history-dependent toy decoder (its cache is the running sum of tokens, so a cache
  that did not follow its beam would give wrong logits); a beam wide enough to be exact."""
  vocab, eos, max_len, alpha, batch, beam = 5, 2, 4, 0.6, 2, 64
  table = np.random.default_rng(0).normal(size=(batch, 7, vocab)).astype(np.float32) * 2

  def log_prob(b, seq):
    total, history = 0.0, 0
    for token in seq:
      logits = table[b, history % 7]
      total += logits[token] - np.log(np.exp(logits).sum())
      history += token
    return total

  def logits_fn(tokens, cache):
    history = cache["history"] + jnp.where(cache["started"], tokens, 0)
    rows = jnp.repeat(jnp.arange(batch), beam)
    logits = jnp.asarray(table)[rows, history % 7]
    return logits, {"history": history, "started": jnp.ones_like(cache["started"])}

  cache = {"history": jnp.zeros(batch * beam, jnp.int32), "started": jnp.zeros(batch * beam, bool)}
  seqs, scores = jax.jit(
    lambda c: beam_search.beam_search(
      logits_fn,
      c,
      {"history": 0, "started": 0},
      batch_size=batch,
      beam_size=beam,
      max_len=max_len,
      bos_id=1,
      eos_id=eos,
      alpha=alpha,
    )
  )(cache)
  for b in range(batch):
    want = brute_force(lambda seqs: [log_prob(b, s) for s in seqs], vocab, eos, max_len, alpha)  # noqa: B023
    top = sorted(want.items(), key=lambda kv: -kv[1])[:beam]
    np.testing.assert_allclose(scores[b], [s for _, s in top], rtol=1e-5)
    assert padded(top[0][0], max_len) == tuple(seqs[b, 0].tolist())
    for seq, score in zip(seqs[b].tolist(), scores[b].tolist()):  # each score is its own
      body = tuple(seq[: seq.index(eos) + 1]) if eos in seq else tuple(seq)
      assert want[body] == pytest.approx(score, rel=1e-5)


@pytest.mark.slow
def test_translate_matches_brute_force_on_a_tiny_model():
  """The decoder's real KV cache, laid out by scanned layers (batch on axis 1)."""
  vocab, eos, max_len, alpha = 5, 2, 4, 0.6
  model = tiny(scan_layers=True)
  params = init(model)

  def log_probs(b, seqs):  # teacher forcing through the full (uncached) forward pass
    targets = np.array([padded(seq, max_len) for seq in seqs])
    inputs = np.concatenate([np.ones((len(seqs), 1), int), targets[:, :-1]], axis=1)
    logits = model.apply(
      {"params": params},
      np.repeat(SOURCE[b : b + 1], len(seqs), 0),
      inputs,
      np.repeat(SOURCE_MASK[b : b + 1], len(seqs), 0),
    )
    token_log_probs = np.take_along_axis(
      np.asarray(jax.nn.log_softmax(logits[:, :, :vocab])), targets[:, :, None], 2
    )[..., 0]
    lengths = np.array([len(seq) for seq in seqs])
    return (token_log_probs * (np.arange(max_len) < lengths[:, None])).sum(1)

  options = dict(max_len=max_len, bos_id=1, eos_id=eos, alpha=alpha, vocab_size=vocab)
  best = translate.translate(model, params, SOURCE, SOURCE_MASK, beam_size=64, **options)
  greedy = translate.translate(model, params, SOURCE, SOURCE_MASK, beam_size=1, **options)
  narrow = translate.translate(model, params, SOURCE, SOURCE_MASK, beam_size=2, **options)
  for b in range(2):
    scores = brute_force(lambda seqs: log_probs(b, seqs), vocab, eos, max_len, alpha)  # noqa: B023
    want = max(scores, key=scores.get)
    assert tuple(best[b].tolist()) == padded(want, max_len)
    # Greedy: the argmax of each step's distribution, until EOS.
    seq = ()
    while len(seq) < max_len and eos not in seq:
      inputs = jnp.array([(1,) + seq])
      logits = model.apply({"params": params}, SOURCE[b : b + 1], inputs, SOURCE_MASK[b : b + 1])
      seq += (int(logits[0, -1, :vocab].argmax()),)
    assert tuple(greedy[b].tolist()) == padded(seq, max_len)
    # A beam keeps every hypothesis greedy would end with, so it scores at least as well.
    found = tuple(narrow[b].tolist())
    found = found[: found.index(eos) + 1] if eos in found else found
    assert scores[found] >= scores[seq] - 1e-6
