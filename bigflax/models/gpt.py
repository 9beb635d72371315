"""Decoder-only language model, assembled from `layers`: GPT-2's layout by default, and by
its options the Llama family's (experiments/llama*.py, mistral_7b.py, qwen2_5_0_5b.py,
gemma_2b.py; interop/llama.py converts their HF checkpoints):

  Llama 2/3   position="rope", norm="rmsnorm", activation="swiglu", use_bias=False,
              tie_embeddings=False, num_kv_heads < num_heads (GQA); Llama 3.1/3.2 add
              rope_scaling_factor (and the three rope_* fields after it)
  Mistral     + sliding_window
  Qwen2/2.5   + qkv_bias (biases on query, key, value only); tied in the small sizes
  Gemma       norm="rmsnorm_offset", activation="geglu", scale_embeddings, head_dim=256,
              num_kv_heads=1 (multi-query), tied
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bigflax.models import attention, blocks, layers


class GPT(nn.Module):
  """tokens (B, T) int -> logits (B, T, vocab) float32.

  `positions` (B, T) default to 0.. (or, under decode, the number of tokens cached so far);
  `mask` (B, S) is 1 at keys a query may see: S = T, or max_len (the cache slots) under
  decode. Both let a batch of left-padded prompts decode together. `segment_ids` (B, T)
  keep packed documents apart (0 is padding); their `positions` restart at each document.
  """

  vocab_size: int
  num_layers: int
  num_heads: int
  embed_dim: int
  mlp_dim: int
  max_len: int
  num_kv_heads: int | None = None
  head_dim: int | None = None  # default embed_dim // num_heads
  position: str = "learned"  # or "rope"
  rope_max_wavelength: float = 10_000.0  # HF's rope_theta
  rope_scaling_factor: float = 0.0  # > 0: Llama 3.1's frequency scaling (attention.py)
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  rope_original_max_len: int = 8192
  sliding_window: int = 0  # > 0: each token attends to this many latest tokens (Mistral)
  attention_impl: str = "xla"  # or "cudnn", "splash", "auto" (attention.choose)
  activation: str = "gelu"
  norm: str = "layernorm"
  norm_eps: float = 1e-5
  use_bias: bool = True
  qkv_bias: bool = False
  scale_embeddings: bool = False  # token embeddings times sqrt(embed_dim) (Gemma)
  tie_embeddings: bool = True
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  init_std: float = 0.02
  scan_layers: bool = False
  remat: str = "none"
  decode: bool = False  # KV-cache mode for sampling
  lora: layers.LoRA | None = None  # low-rank adapters on the blocks' projections
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(
    self,
    tokens: jax.Array,
    positions: jax.Array | None = None,
    mask: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
  ) -> jax.Array:
    if self.position not in ("learned", "rope"):
      raise ValueError(f"model.position must be 'learned' or 'rope', got {self.position!r}.")
    token_embed = layers.Embed(
      self.vocab_size,
      self.embed_dim,
      self.init_std,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name="token_embed",
    )
    x = token_embed(tokens)
    if self.scale_embeddings:
      x = x * jnp.sqrt(self.embed_dim).astype(x.dtype)
    if positions is None and not self.decode:
      positions = jnp.arange(tokens.shape[1])[None]
    if self.position == "learned":
      if positions is None:  # decoding: the position is the number of tokens cached so far
        index = self.variable("cache", "position", lambda: jnp.array(0, jnp.int32))
        positions = (index.value + jnp.arange(tokens.shape[1]))[None]
        if not self.is_initializing():
          index.value += tokens.shape[1]
      x = x + layers.Embed(
        self.max_len,
        self.embed_dim,
        self.init_std / 2,
        axes=(None, "embed"),
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name="position_embed",
      )(positions)
    x = layers.apply_dropout(x, self.dropout_rate, self)

    inputs = blocks.BlockInputs(
      mask=None if mask is None else mask.astype(bool)[:, None, None, :],
      # Under decode without explicit positions, RoPE's come from the cache index.
      positions=positions if self.position == "rope" else None,
      segment_ids=segment_ids,
    )
    x = blocks.stack(
      self.block_config(), self.num_layers, x, inputs, scan=self.scan_layers, remat=self.remat
    )
    x = layers.Norm(self.norm, self.norm_eps, self.dtype, name="final_norm")(x)

    if self.tie_embeddings:
      logits = token_embed.attend(x)
    else:
      logits = nn.Dense(
        self.vocab_size,
        use_bias=False,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        kernel_init=layers.normal(self.init_std, ("embed", "vocab")),
        name="lm_head",
      )(x)
    return layers.constrain(logits.astype(jnp.float32), ("batch", "length", "vocab"))

  def block_config(self) -> blocks.BlockConfig:
    """The options of this model's blocks: its fields, each named, and what it derives."""
    rope_scaling = None
    if self.rope_scaling_factor:
      rope_scaling = attention.RopeScaling(
        self.rope_scaling_factor,
        self.rope_low_freq_factor,
        self.rope_high_freq_factor,
        self.rope_original_max_len,
      )
    return blocks.BlockConfig(
      num_heads=self.num_heads,
      mlp_dim=self.mlp_dim,
      head_dim=self.head_dim,
      num_kv_heads=self.num_kv_heads,
      causal=True,
      activation=self.activation,
      norm=self.norm,
      norm_eps=self.norm_eps,
      use_bias=self.use_bias,
      qkv_bias=self.qkv_bias,
      use_rope=self.position == "rope",
      rope_max_wavelength=self.rope_max_wavelength,
      rope_scaling=rope_scaling,
      sliding_window=self.sliding_window,
      attention_impl=self.attention_impl,
      dropout_rate=self.dropout_rate,
      attention_dropout_rate=self.attention_dropout_rate,
      init_std=self.init_std,
      out_init_std=self.init_std / (2 * self.num_layers) ** 0.5,
      decode=self.decode,
      max_len=self.max_len,
      lora=self.lora,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
    )


def flops_per_token(config, num_params: int, seq_len: int) -> float:
  """Training FLOPs per token: 6N for the weights plus attention (PaLM appendix B).

  N excludes the position embedding (a lookup, not a matmul); the token embedding counts
  because the tied head multiplies by it.
  """
  head_dim = config.get("head_dim") or config.embed_dim // config.num_heads
  n = num_params - (config.max_len * config.embed_dim if config.position == "learned" else 0)
  keys = min(seq_len, config.get("sliding_window") or seq_len)  # keys a query meets
  return 6 * n + 12 * config.num_layers * config.num_heads * head_dim * keys
