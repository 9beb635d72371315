"""The attention implementations (model.attention_impl) mean the same thing: the Pallas
splash kernel, run in interpret mode on CPU, against the xla reference in forward and
gradient; cuDNN's only where a GPU is; and what "auto" chooses where."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigflax.models import attention, gpt
from bigflax.train import partitioning


def qkv_and_segments(heads, kv_heads, length=256, batch=2, head_dim=32):
  """Random q, k, v and segment ids of packed rows: three documents in row 0, two and a
  padded tail (segment 0) in row 1, with boundaries inside the kernel's 128-token blocks."""
  rng = np.random.default_rng(0)
  q = rng.normal(size=(batch, length, heads, head_dim)).astype(np.float32)
  k = rng.normal(size=(batch, length, kv_heads, head_dim)).astype(np.float32)
  v = rng.normal(size=(batch, length, kv_heads, head_dim)).astype(np.float32)
  ends = [(70, 200, length), (150, 230)]
  segments = np.zeros((batch, length), np.int32)
  for row, row_ends in enumerate(ends[:batch]):
    start = 0
    for segment, end in enumerate(row_ends, 1):
      segments[row, start:end] = segment
      start = end
  return (*map(jnp.asarray, (q, k, v)), jnp.asarray(segments))


def assert_same_function(q, k, v, segments, **options):
  """splash and xla agree within 1e-5 in output and in the gradient of every input."""
  cotangent = jax.random.normal(jax.random.key(1), q.shape)

  def run(implementation):
    f = functools.partial(
      attention.attend, implementation=implementation, segment_ids=segments, **options
    )
    out, vjp = jax.vjp(f, q, k, v)
    return (out, *vjp(cotangent))

  for got, want in zip(jax.jit(lambda: run("splash"))(), jax.jit(lambda: run("xla"))()):
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_splash_equals_xla_with_segments_padding_a_sliding_window_and_gqa():
  assert_same_function(*qkv_and_segments(heads=4, kv_heads=2), causal=True, sliding_window=48)


def test_splash_pads_a_length_that_is_no_multiple_of_128():
  q, k, v, segments = qkv_and_segments(heads=2, kv_heads=1, length=200, batch=1)
  assert_same_function(q, k, v, segments, causal=True)


@pytest.mark.slow
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 1)])
@pytest.mark.parametrize("causal,window", [(True, 0), (False, 0), (True, 100), (False, 100)])
def test_splash_equals_xla(heads, kv_heads, causal, window):
  assert_same_function(*qkv_and_segments(heads, kv_heads), causal=causal, sliding_window=window)


def tiny_gpt(**kw):
  return gpt.GPT(
    vocab_size=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    embed_dim=64,
    mlp_dim=128,
    max_len=128,
    position="rope",
    **kw,
  )


def test_a_gpt_with_splash_on_a_sharded_mesh_computes_the_xla_gpt():
  """Under a mesh splash runs under shard_map (each device its rows and heads): the
  logits and gradients are those of the xla model with the same parameters."""
  tokens = jax.random.randint(jax.random.key(0), (4, 128), 0, 64)
  segments = jnp.asarray(np.repeat([[1] * 50 + [2] * 60 + [0] * 18], 4, axis=0))
  xla, splash = tiny_gpt(attention_impl="xla"), tiny_gpt(attention_impl="splash")
  params = xla.init(jax.random.key(1), tokens)["params"]
  mesh = partitioning.make_mesh(dict(data=2, fsdp=2, tensor=2))
  rules = partitioning.rules_tuple([["batch", ["data", "fsdp"]], ["heads", "tensor"]])

  def loss(model, params):
    logits = model.apply({"params": params}, tokens, segment_ids=segments)
    return (jax.nn.log_softmax(logits)[..., 0] * (segments > 0)).sum(), logits

  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    grad = lambda model: jax.jit(jax.grad(functools.partial(loss, model), has_aux=True))
    (got_grads, got), (want_grads, want) = grad(splash)(params), grad(xla)(params)
    assert "shard_map" in str(jax.make_jaxpr(functools.partial(loss, splash))(params))
  np.testing.assert_allclose(got, want, atol=2e-5)
  for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(g, w, atol=2e-5, rtol=1e-5)


@pytest.mark.skipif(
  jax.default_backend() != "gpu",
  reason="cuDNN attention needs an NVIDIA GPU; this machine has none",
)
def test_cudnn_equals_xla_on_a_gpu():
  q, k, v, segments = qkv_and_segments(heads=4, kv_heads=2, head_dim=64)
  q, k, v = (x.astype(jnp.bfloat16) for x in (q, k, v))
  got, want = (
    attention.attend(
      q, k, v, implementation=impl, causal=True, segment_ids=segments, sliding_window=48
    )
    for impl in ("cudnn", "xla")
  )
  np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), atol=2e-2)


def test_auto_chooses_the_platforms_kernel_and_says_so():
  assert attention.choose("auto", "tpu", jnp.float32) == "splash"
  assert attention.choose("auto", "gpu", jnp.bfloat16) == "cudnn"
  assert attention.choose("auto", "gpu", jnp.float32) == "xla"  # cuDNN has no f32
  assert attention.choose("auto", "cpu", jnp.float32) == "xla"
  assert attention.choose("splash", "cpu", jnp.float32) == "splash"
  with pytest.raises(ValueError, match="model.attention_impl='flash'"):
    attention.choose("flash", "tpu", jnp.float32)
  q, k, v, _ = qkv_and_segments(heads=2, kv_heads=1, length=16, batch=1)
  np.testing.assert_array_equal(
    attention.attend(q, k, v, implementation="auto", causal=True),
    attention.attend(q, k, v, causal=True),
  )  # xla here


def test_kernels_without_dropout_or_dense_masks_say_so():
  q, k, v, _ = qkv_and_segments(heads=4, kv_heads=2, length=128)
  with pytest.raises(ValueError, match="attention_dropout_rate=0"):
    attention.attend(q, k, v, implementation="splash", dropout=lambda p: p)
  with pytest.raises(ValueError, match="not a dense mask"):
    attention.attend(q, k, v, implementation="splash", mask=jnp.ones((2, 1, 1, 128), bool))
