"""Encoder-decoder Transformer ("Attention Is All You Need"), assembled from `layers`.

`Seq2Seq(...)(source, target_inputs, source_mask=None, logits=True)`:
  source         (B, S) int source token ids
  target_inputs  (B, T) int decoder inputs, [bos] y_1 .. y_{T-1} (teacher forcing)
  source_mask    (B, S) 1/True at real source tokens, 0 at padding; default all real
  logits         True -> (B, T, vocab) float32 logits; False -> the decoder's final states
                 (B, T, embed_dim)

`encode` and `run_decoder` are methods too (`apply(..., method="encode")`): decoding encodes
the source once, then extends the target a token at a time with `decode=True` (KV cache).

One vocabulary (`source_vocab_size=0`) shares the token embedding between the source, the
target and (`tie_embeddings`) the output layer, as the paper's 37k BPE Transformer-base.
Embeddings are multiplied by sqrt(embed_dim) (initialised with std embed_dim^-1/2), so the
tied output layer sees unit-scale logits. The decoder's self-attention is causal; padding
at the end of a target only affects padded positions, whose loss weight is 0.
"""

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bigflax.models import attention, blocks, layers

POSITIONS = ("sinusoidal", "learned")


class Seq2Seq(nn.Module):
  """(source, target_inputs, source_mask, logits) -> logits or decoder states (module doc)."""

  vocab_size: int  # the target's; also the source's when source_vocab_size is 0
  num_encoder_layers: int
  num_decoder_layers: int
  num_heads: int
  embed_dim: int
  mlp_dim: int
  max_len: int  # longest source or target; the decoder's cache length under decode
  source_vocab_size: int = 0  # > 0: a separate source vocabulary and embedding
  tie_embeddings: bool = True  # output layer = target embedding transposed
  position: str = "sinusoidal"  # or "learned"
  activation: str = "relu"
  norm_eps: float = 1e-6
  pre_norm: bool = True  # False: the paper's post-norm
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.0
  init_std: float = 0.02
  scan_layers: bool = False
  remat: str = "none"
  decode: bool = False  # KV-cache mode for the decoder's self-attention
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    if self.position not in POSITIONS:
      raise ValueError(f"model.position={self.position!r}; choose one of {POSITIONS}.")
    embed = functools.partial(
      layers.Embed,
      features=self.embed_dim,
      init_std=self.embed_dim**-0.5,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
    )
    self.token_embed = embed(self.vocab_size)
    if self.source_vocab_size:
      self.source_embed = embed(self.source_vocab_size)
    if not self.tie_embeddings:
      self.output = nn.Dense(
        self.vocab_size,
        use_bias=False,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        kernel_init=layers.normal(self.init_std, ("embed", "vocab")),
      )
    block_config = self.block_config()
    encoder_block = dataclasses.replace(block_config, decode=False)
    decoder_block = dataclasses.replace(block_config, causal=True, cross_attention=True)
    stack = functools.partial(
      Stack, position=self.position, scan_layers=self.scan_layers, remat=self.remat
    )
    self.encoder = stack(encoder_block, self.num_encoder_layers)
    self.decoder = stack(decoder_block, self.num_decoder_layers)

  def __call__(
    self,
    source: jax.Array,
    target_inputs: jax.Array,
    source_mask: jax.Array | None = None,
    logits: bool = True,
  ) -> jax.Array:
    encoded = self.encode(source, source_mask)
    return self.run_decoder(encoded, source_mask, target_inputs, logits)

  def encode(self, source: jax.Array, source_mask: jax.Array | None = None) -> jax.Array:
    """(B, S) source ids -> (B, S, embed_dim) encoder states."""
    embed = self.source_embed if self.source_vocab_size else self.token_embed
    mask = None
    if source_mask is not None:
      valid = source_mask.astype(bool)
      mask = attention.padding_mask(valid, valid)
    return self.encoder(self._scaled(embed, source), mask)

  def run_decoder(
    self,
    encoded: jax.Array,
    source_mask: jax.Array | None,
    target_inputs: jax.Array,
    logits: bool = True,
  ) -> jax.Array:
    """Decoder states or logits of `target_inputs` attending to `encoded`; under
    decode=True the inputs continue the ones already cached."""
    encoder_mask = None
    if source_mask is not None:  # (B, 1, 1, S): every query sees the real source tokens
      encoder_mask = source_mask.astype(bool)[:, None, None, :]
    states = self.decoder(self._scaled(self.token_embed, target_inputs), encoder_mask, encoded)
    if not logits:
      return states
    out = self.token_embed.attend(states) if self.tie_embeddings else self.output(states)
    return layers.constrain(out.astype(jnp.float32), ("batch", "length", "vocab"))

  def _scaled(self, embed: layers.Embed, ids: jax.Array) -> jax.Array:
    return embed(ids) * jnp.asarray(self.embed_dim**0.5, self.dtype)

  def block_config(self) -> blocks.BlockConfig:
    """The options both stacks' blocks share: the model's fields, each named. The encoder
    never decodes; the decoder adds causal self-attention and cross-attention."""
    return blocks.BlockConfig(
      num_heads=self.num_heads,
      mlp_dim=self.mlp_dim,
      activation=self.activation,
      norm_eps=self.norm_eps,
      pre_norm=self.pre_norm,
      dropout_rate=self.dropout_rate,
      attention_dropout_rate=self.attention_dropout_rate,
      init_std=self.init_std,
      out_init_std=self.init_std,
      decode=self.decode,
      max_len=self.max_len,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
    )


class Stack(nn.Module):
  """Positions, dropout, `num_layers` blocks and (pre-norm) a final norm: the encoder or,
  with `config.cross_attention`, the decoder (causal self-attention, cross-attention, KV
  cache)."""

  config: blocks.BlockConfig
  num_layers: int
  position: str
  scan_layers: bool
  remat: str

  @nn.compact
  def __call__(
    self, x: jax.Array, mask: jax.Array | None, encoded: jax.Array | None = None
  ) -> jax.Array:
    """x: embedded tokens (B, T, d); mask: the self-attention mask (encoder) or the
    cross-attention mask (decoder)."""
    c = self.config
    b, t, d = x.shape
    if c.decode:  # the position is the number of tokens cached so far
      index = self.variable("cache", "position", lambda: jnp.array(0, jnp.int32))
      positions = (index.value + jnp.arange(t))[None]
      if not self.is_initializing():
        index.value += t
    else:
      if t > c.max_len:
        raise ValueError(f"{t} tokens exceed model.max_len={c.max_len}.")
      positions = jnp.arange(t)[None]
    if self.position == "sinusoidal":
      x = x + layers.sinusoidal_positions(positions, d).astype(c.dtype)
    else:
      x = x + layers.Embed(
        c.max_len,
        d,
        c.init_std,
        axes=(None, "embed"),
        dtype=c.dtype,
        param_dtype=c.param_dtype,
        name="position_embed",
      )(positions)
    x = layers.apply_dropout(x, c.dropout_rate, self)

    if c.cross_attention:
      inputs = blocks.BlockInputs(encoded=encoded, encoder_mask=mask)
    else:
      inputs = blocks.BlockInputs(mask=mask)
    x = blocks.stack(c, self.num_layers, x, inputs, scan=self.scan_layers, remat=self.remat)
    if c.pre_norm:  # post-norm blocks end normalised already
      x = layers.Norm(c.norm, c.norm_eps, c.dtype, name="final_norm")(x)
    return x


def flops_per_token(config, num_params: int, seq_len: int) -> float:
  """Training FLOPs per token of source + target (the task's tokens_per_example is
  2 * seq_len): 6 x the matmul weights each token meets, plus attention (PaLM appendix B).

  The encoder's layers see source tokens, the decoder's and the output layer target
  tokens, so per pair of tokens the count is one encoder layer stack, one decoder stack
  and the output matrix; `num_params` is not needed.
  """
  del num_params
  d, f = config.embed_dim, config.mlp_dim
  encoder = config.num_encoder_layers * (4 * d * d + 2 * d * f)
  decoder = config.num_decoder_layers * (8 * d * d + 2 * d * f)
  output = config.vocab_size * d
  # self-attention over seq_len keys in both stacks, cross-attention in the decoder
  attention = 12 * d * seq_len * (config.num_encoder_layers + 2 * config.num_decoder_layers)
  return (6 * (encoder + decoder + output) + attention) / 2
