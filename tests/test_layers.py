"""Building blocks against independent numpy references and their defining properties."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigflax import models
from bigflax.models import attention, blocks, gpt, layers


def numpy_attention(q, k, v, mask):
  """Plain softmax attention, heads repeated for GQA. q (B,T,H,D), k/v (B,S,K,D)."""
  rep = q.shape[2] // k.shape[2]
  k, v = np.repeat(k, rep, axis=2), np.repeat(v, rep, axis=2)
  logits = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(q.shape[-1])
  logits = np.where(mask, logits, -1e10)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return np.einsum("bhts,bshd->bthd", p, v)


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (4, 1)])
def test_attention_matches_numpy(heads, kv_heads):
  rng = np.random.default_rng(0)
  q = rng.normal(size=(2, 5, heads, 8)).astype(np.float32)
  k = rng.normal(size=(2, 7, kv_heads, 8)).astype(np.float32)
  v = rng.normal(size=(2, 7, kv_heads, 8)).astype(np.float32)
  mask = rng.random((2, 1, 5, 7)) > 0.3
  mask[..., 0] = True
  got = attention.dot_product_attention(
    jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(mask)
  )
  np.testing.assert_allclose(got, numpy_attention(q, k, v, mask), atol=1e-5)


@pytest.mark.parametrize("length", [256, 12])
def test_causal_attention_equals_masked_attention(length):
  rng = np.random.default_rng(1)
  q = rng.normal(size=(2, length, 4, 8)).astype(np.float32)
  k = rng.normal(size=(2, length, 2, 8)).astype(np.float32)
  v = rng.normal(size=(2, length, 2, 8)).astype(np.float32)
  padding = rng.random((2, 1, 1, length)) > 0.2
  padding[..., 0] = True
  causal = np.tril(np.ones((length, length), bool))[None, None]
  got = attention.causal_attention(*map(jnp.asarray, (q, k, v)), jnp.asarray(padding))
  np.testing.assert_allclose(got, numpy_attention(q, k, v, causal & padding), atol=1e-5)


def tiny_gpt(**kw):
  args = dict(vocab_size=64, num_layers=2, num_heads=4, embed_dim=32, mlp_dim=64, max_len=32)
  args.update(kw)
  return gpt.GPT(**args)


def unlike(field: dataclasses.Field):
  """A value unlike the field's default (the configs below are built, never run)."""
  if field.default is dataclasses.MISSING:
    return 7
  if isinstance(field.default, bool):
    return not field.default
  if isinstance(field.default, (int, float)):
    return field.default + 3
  return f"not {field.default}"  # None, a dtype: any other object will do


@pytest.mark.parametrize("name", ["bert", "gpt", "seq2seq", "vit"])
def test_every_block_option_a_model_has_reaches_its_blocks(name):
  """A model field named as a BlockConfig field is that option: set unlike the block's
  default, `block_config()` passes it on."""
  block_fields = {f.name: f for f in dataclasses.fields(blocks.BlockConfig)}
  shared = models.fields(name) & set(block_fields)
  kwargs = {
    f.name: 4 for f in dataclasses.fields(models.MODELS[name]) if f.default is dataclasses.MISSING
  }  # the sizes every model needs
  kwargs.update({field: unlike(block_fields[field]) for field in shared})
  config = models.MODELS[name](**kwargs).block_config()
  assert {field: getattr(config, field) for field in shared} == {
    field: kwargs[field] for field in shared
  }


def test_gpt_derives_its_block_options():
  config = tiny_gpt(position="rope", rope_scaling_factor=8.0).block_config()
  assert config.causal and config.use_rope and config.rope_scaling.factor == 8.0
  assert config.out_init_std == pytest.approx(0.02 / 2)  # init_std / sqrt(2 * num_layers)
  assert not tiny_gpt().block_config().use_rope


def init(model, tokens):
  return nn.unbox(model.init(jax.random.key(0), tokens)["params"])


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_gpt_is_causal(position):
  model = tiny_gpt(position=position)
  tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, 64)
  params = init(model, tokens)
  changed = tokens.at[:, 7].set((tokens[:, 7] + 1) % 64)
  a, b = model.apply({"params": params}, tokens), model.apply({"params": params}, changed)
  np.testing.assert_array_equal(a[:, :7], b[:, :7])
  assert not np.allclose(a[:, 7:], b[:, 7:])


def test_padding_mask_hides_padded_keys():
  module = blocks.Attention(blocks.BlockConfig(num_heads=2, mlp_dim=0, head_dim=8))
  x = jax.random.normal(jax.random.key(0), (2, 6, 16))
  valid = jnp.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
  params = module.init(jax.random.key(1), x)
  mask = attention.padding_mask(valid, valid)
  out = module.apply(params, x, mask=mask)
  garbage = x.at[0, 4:].set(100.0)  # change only the padded positions of row 0
  out2 = module.apply(params, garbage, mask=mask)
  np.testing.assert_allclose(out[0, :4], out2[0, :4], atol=1e-6)
  np.testing.assert_array_equal(out[1], out2[1])


def test_rope_depends_only_on_relative_position():
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.normal(size=(1, 1, 1, 16)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(1, 1, 1, 16)), jnp.float32)

  def score(i, j):
    qi = attention.rope(q, jnp.array([[i]]))
    kj = attention.rope(k, jnp.array([[j]]))
    return float(jnp.sum(qi * kj))

  assert score(3, 1) == pytest.approx(score(10, 8), abs=1e-5)
  assert score(0, 0) == pytest.approx(float(jnp.sum(q * k)), abs=1e-5)
  assert score(3, 1) != pytest.approx(score(3, 2), abs=1e-3)
  # rotation preserves norms
  np.testing.assert_allclose(
    jnp.linalg.norm(attention.rope(q, jnp.array([[5]]))), jnp.linalg.norm(q), rtol=1e-6
  )


@pytest.mark.parametrize("position,scan", [("learned", False), ("rope", True)])
def test_kv_cache_decoding_equals_full_forward(position, scan):
  model = tiny_gpt(position=position, scan_layers=scan, num_kv_heads=2)
  tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, 64)
  params = init(model, tokens)
  full = model.apply({"params": params}, tokens)
  decoder = model.clone(decode=True)
  cache = jax.tree.map(jnp.zeros_like, decoder.init(jax.random.key(0), tokens[:, :1])["cache"])
  logits, variables = decoder.apply(
    {"params": params, "cache": cache}, tokens[:, :5], mutable=["cache"]
  )
  outputs = [logits]
  for t in range(5, 12):
    logits, variables = decoder.apply(
      {"params": params, "cache": variables["cache"]}, tokens[:, t : t + 1], mutable=["cache"]
    )
    outputs.append(logits)
  np.testing.assert_allclose(jnp.concatenate(outputs, axis=1), full, atol=1e-5)


def test_swiglu_mlp_matches_numpy():
  mlp = blocks.MLP(blocks.BlockConfig(num_heads=1, mlp_dim=6, activation="swiglu", use_bias=False))
  x = jax.random.normal(jax.random.key(0), (3, 4))
  p = nn.unbox(mlp.init(jax.random.key(1), x)["params"])
  silu = lambda z: z / (1 + np.exp(-z))
  xn = np.asarray(x)
  want = (silu(xn @ p["gate"]["kernel"]) * (xn @ p["up"]["kernel"])) @ p["down"]["kernel"]
  np.testing.assert_allclose(mlp.apply({"params": p}, x), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm"])
def test_norms_match_numpy(kind):
  x = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32) * 3 + 1
  norm = layers.Norm(kind, eps=1e-6)
  params = norm.init(jax.random.key(0), x)
  if kind == "layernorm":
    want = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6)
  else:
    want = x / np.sqrt((x**2).mean(-1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(norm.apply(params, x), want, rtol=1e-5, atol=1e-5)


def test_scan_and_loop_give_the_same_function():
  tokens = jax.random.randint(jax.random.key(1), (2, 8), 0, 64)
  looped, scanned = tiny_gpt(), tiny_gpt(scan_layers=True, remat="full")
  p_loop = init(looped, tokens)
  # stack the looped layers' parameters along a leading axis: the scanned layout
  layers_ = [p_loop[f"layer_{i}"] for i in range(2)]
  p_scan = {k: v for k, v in p_loop.items() if not k.startswith("layer_")}
  p_scan["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers_)
  np.testing.assert_allclose(
    looped.apply({"params": p_loop}, tokens), scanned.apply({"params": p_scan}, tokens), atol=1e-5
  )
