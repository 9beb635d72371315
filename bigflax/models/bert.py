"""Bidirectional encoder (BERT layout by default), assembled from `layers`.

`BERT(...)(tokens, segments=None, mask=None, head=None)`:
  tokens   (B, T) int token ids
  segments (B, T) int token types (sentence A/B); default all 0
  mask     (B, T) 1/True at real tokens, 0 at padding; default all real
  head     None   -> hidden states (B, T, embed_dim), the encoder's last layer
           "pool" -> pooled (B, embed_dim): tanh(dense(hidden[:, 0])), for classifiers
           "classify" -> (B, num_classes) float32 logits of a linear head on the pooler
           "mlm"  -> masked-LM logits (B, T, vocab) float32; output tied to the token embedding

Parameters exist for what a call uses: the pooler whenever `pooler=True` (as in HF's
BertModel), the MLM head's transform and output bias only under head="mlm". So
`init(..., head=None)` counts exactly the published BertModel parameters. `head` is
positional too, so `model.init(rng, *inputs)` can create the MLM head.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bigflax.models import attention, blocks, layers

HEADS = (None, "pool", "classify", "mlm")


class BERT(nn.Module):
  """(tokens, segments, mask, head) -> hidden states, pooled or MLM logits (module doc)."""

  vocab_size: int
  num_layers: int
  num_heads: int
  embed_dim: int
  mlp_dim: int
  max_len: int = 512
  num_segments: int = 2
  activation: str = "gelu_exact"
  norm_eps: float = 1e-12
  pre_norm: bool = False  # BERT is post-LN; True gives the pre-LN (Megatron-BERT) layout
  pooler: bool = True
  num_classes: int = 0  # > 0: head="classify" puts a fresh linear classifier on the pooler
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  init_std: float = 0.02
  scan_layers: bool = False
  remat: str = "none"
  lora: layers.LoRA | None = None  # low-rank adapters on the blocks' projections
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(
    self,
    tokens: jax.Array,
    segments: jax.Array | None = None,
    mask: jax.Array | None = None,
    head: str | None = None,
  ) -> jax.Array:
    if head not in HEADS:
      raise ValueError(f"head={head!r}; choose one of {HEADS}.")
    if head in ("pool", "classify") and not self.pooler:
      raise ValueError(f"head={head!r} needs a model built with pooler=True.")
    if head == "classify" and not self.num_classes:
      raise ValueError("head='classify' needs model.num_classes > 0.")
    if tokens.shape[1] > self.max_len:  # a position lookup past the table would not fail
      raise ValueError(f"{tokens.shape[1]} tokens exceed max_len={self.max_len}.")
    embed = functools.partial(
      layers.Embed,
      features=self.embed_dim,
      init_std=self.init_std,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
    )
    norm = functools.partial(layers.Norm, "layernorm", self.norm_eps, self.dtype)
    dense = functools.partial(
      nn.Dense,
      self.embed_dim,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      # a logical name occurs once per array: the input side is unnamed
      kernel_init=layers.normal(self.init_std, (None, "embed")),
      bias_init=layers.zeros(("embed",)),
    )

    token_embed = embed(self.vocab_size, name="token_embed")
    segments = jnp.zeros_like(tokens) if segments is None else segments
    positions = jnp.arange(tokens.shape[1])[None]
    x = (
      token_embed(tokens)
      + embed(self.max_len, axes=(None, "embed"), name="position_embed")(positions)
      + embed(self.num_segments, axes=(None, "embed"), name="segment_embed")(segments)
    )
    # Post-LN normalizes the embeddings before the first block, pre-LN the output of the
    # last: each layout has exactly one norm outside the blocks.
    if not self.pre_norm:
      x = norm(name="embed_norm")(x)
    x = layers.apply_dropout(x, self.dropout_rate, self)

    valid = None if mask is None else mask.astype(bool)
    inputs = blocks.BlockInputs(mask=None if mask is None else attention.padding_mask(valid, valid))
    x = blocks.stack(
      self.block_config(), self.num_layers, x, inputs, scan=self.scan_layers, remat=self.remat
    )
    if self.pre_norm:
      x = norm(name="final_norm")(x)

    if self.pooler:  # always built, so the parameters match BertModel's whatever the head
      pooled = jnp.tanh(dense(name="pooler")(x[:, 0]))
    if head == "pool":
      return pooled
    if head == "classify":  # as HF's BertForSequenceClassification: dropout, then linear
      pooled = layers.apply_dropout(pooled, self.dropout_rate, self)
      return nn.Dense(
        self.num_classes,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        kernel_init=layers.normal(self.init_std, ("embed", None)),
        name="classifier",
      )(pooled).astype(jnp.float32)
    if head == "mlm":
      h = layers.ACTIVATIONS[self.activation](dense(name="mlm_dense")(x))
      h = norm(name="mlm_norm")(h)
      bias = self.param("mlm_bias", layers.zeros(("vocab",)), (self.vocab_size,), self.param_dtype)
      logits = token_embed.attend(h) + bias.astype(self.dtype)
      return layers.constrain(logits.astype(jnp.float32), ("batch", "length", "vocab"))
    return x

  def block_config(self) -> blocks.BlockConfig:
    """The options of this model's blocks: its fields, each named."""
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
      max_len=self.max_len,
      lora=self.lora,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
    )


def flops_per_token(config, num_params: int, seq_len: int) -> float:
  """Training FLOPs per token: 6N for the weights plus attention (PaLM appendix B).

  N excludes the position and segment embeddings (lookups, not matmuls). The token
  embedding counts, as it is the MLM head's tied output matmul; under a pooled
  classification head that overstates by 6 * vocab * embed_dim per token.
  """
  lookups = (
    config.get("max_len", BERT.max_len) + config.get("num_segments", BERT.num_segments)
  ) * config.embed_dim
  attention = 12 * config.num_layers * config.embed_dim * seq_len
  return 6 * (num_params - lookups) + attention
