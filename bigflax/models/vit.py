"""Vision Transformer (ViT, Dosovitskiy et al. 2021), assembled from `layers`.

`ViT(...)(images, head="classify")`:
  images  (B, H, W, C) pixel values in [0, 255] (uint8 or float); scaled to [-1, 1] here,
          so every task and a served model feed the same raw pixels
  head    None       -> token states (B, T, embed_dim) after the final norm
          "pool"     -> pooled (B, embed_dim): the class token, or the mean of the patches
          "classify" -> (B, num_classes) float32 logits of a linear head on the pooled vector

Patches of `patch_size` pixels are flattened and projected by one dense layer (the same
kernel layout (P, P, C, D) as a strided convolution's), a learned position embedding is
added, then pre-LN blocks with a GELU MLP, a final norm and the head, which starts at zero
as in big_vision. `resize_position_embedding` adapts a checkpoint to another resolution.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bigflax.models import blocks, layers

HEADS = (None, "pool", "classify")
POOLS = ("cls", "mean")


class ViT(nn.Module):
  """(images, head) -> token states, pooled vector or class logits (module doc)."""

  num_classes: int
  num_layers: int
  num_heads: int
  embed_dim: int
  mlp_dim: int
  image_size: int = 224
  patch_size: int = 16
  num_channels: int = 3
  pool: str = "cls"  # "cls": a learned class token; "mean": average of the patch tokens
  activation: str = "gelu_exact"
  norm_eps: float = 1e-6
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  init_std: float = 0.02
  scan_layers: bool = False
  remat: str = "none"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, head: str | None = "classify") -> jax.Array:
    if head not in HEADS:
      raise ValueError(f"head={head!r}; choose one of {HEADS}.")
    if self.pool not in POOLS:
      raise ValueError(f"model.pool={self.pool!r}; choose one of {POOLS}.")
    if self.image_size % self.patch_size:
      raise ValueError(
        f"model.image_size={self.image_size} is not a multiple of "
        f"model.patch_size={self.patch_size}."
      )
    expected = (self.image_size, self.image_size, self.num_channels)
    if images.shape[1:] != expected:
      raise ValueError(
        f"images of shape {images.shape[1:]} do not match the model's "
        f"(image_size, image_size, num_channels) = {expected}."
      )

    x = images.astype(self.dtype) / 127.5 - 1.0
    x = layers.DenseGeneral(
      (self.embed_dim,),
      (None, None, None, "embed"),
      self.init_std,
      in_dims=3,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name="patch_embed",
    )(patches(x, self.patch_size))
    if self.pool == "cls":
      cls = self.param("cls_token", layers.zeros(("embed",)), (self.embed_dim,), self.param_dtype)
      x = jnp.concatenate(
        [jnp.broadcast_to(cls.astype(self.dtype), (len(x), 1, self.embed_dim)), x], axis=1
      )
    x = (
      x
      + layers.Embed(
        x.shape[1],
        self.embed_dim,
        self.init_std,
        axes=(None, "embed"),
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name="position_embed",
      )(jnp.arange(x.shape[1]))[None]
    )
    x = layers.apply_dropout(x, self.dropout_rate, self)

    x = blocks.stack(
      self.block_config(), self.num_layers, x, scan=self.scan_layers, remat=self.remat
    )
    x = layers.Norm("layernorm", self.norm_eps, self.dtype, name="final_norm")(x)
    if head is None:
      return x

    pooled = x[:, 0] if self.pool == "cls" else x.mean(axis=1)
    if head == "pool":
      return pooled
    if not self.num_classes:
      raise ValueError("head='classify' needs model.num_classes > 0.")
    return nn.Dense(
      self.num_classes,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=layers.zeros(("embed", None)),
      bias_init=layers.zeros((None,)),
      name="head",
    )(pooled).astype(jnp.float32)

  def block_config(self) -> blocks.BlockConfig:
    """The options of this model's blocks: its fields, each named."""
    return blocks.BlockConfig(
      num_heads=self.num_heads,
      mlp_dim=self.mlp_dim,
      activation=self.activation,
      norm_eps=self.norm_eps,
      dropout_rate=self.dropout_rate,
      attention_dropout_rate=self.attention_dropout_rate,
      init_std=self.init_std,
      out_init_std=self.init_std,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
    )


def patches(images: jax.Array, size: int) -> jax.Array:
  """(B, H, W, C) -> (B, H/size * W/size, size, size, C), patches in row-major order."""
  b, h, w, c = images.shape
  x = images.reshape(b, h // size, size, w // size, size, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, (h // size) * (w // size), size, size, c)


def num_patches(config) -> int:
  return (config.get("image_size", ViT.image_size) // config.get("patch_size", ViT.patch_size)) ** 2


def num_tokens(config) -> int:
  """Sequence length of the model `config`: the patches, plus the class token."""
  return num_patches(config) + (config.get("pool", ViT.pool) == "cls")


def resize_position_embedding(embedding, num_rows: int, num_extra: int) -> np.ndarray:
  """A (num_extra + n*n, D) position embedding resized to (num_rows, D).

  The first `num_extra` rows (the class token's) are kept; the square grid of the others
  is resized bilinearly (half-pixel centres, no antialiasing: torch's
  `interpolate(mode="bilinear", align_corners=False)`).
  """
  embedding = np.asarray(embedding)
  extra, grid = embedding[:num_extra], embedding[num_extra:]
  old, new = math.isqrt(len(grid)), math.isqrt(num_rows - num_extra)
  if old * old != len(grid) or new * new != num_rows - num_extra:
    raise ValueError(
      f"Cannot resize a position embedding of {len(embedding)} rows to "
      f"{num_rows}: beyond {num_extra} class row(s) both must be square grids."
    )
  grid = grid.reshape(old, old, -1)
  resized = jax.image.resize(grid, (new, new, grid.shape[-1]), "bilinear", antialias=False)
  return np.concatenate([extra, np.asarray(resized, embedding.dtype).reshape(new * new, -1)])


def adapt_to_resolution(source: dict, target: dict) -> dict:
  """`source` parameters with their position embedding resized to `target`'s grid, so a
  checkpoint trained at one resolution (or patch size) initialises a model at another.
  Unchanged if the grids match, or if only one of the two has a class token."""
  old = np.asarray(source.get("position_embed", {}).get("embedding", np.zeros((0, 0))))
  new = target["position_embed"]["embedding"]
  if old.shape == new.shape or ("cls_token" in source) != ("cls_token" in target):
    return source
  extra = int("cls_token" in target)
  embedding = resize_position_embedding(old, new.shape[0], extra)
  return {**source, "position_embed": {**source["position_embed"], "embedding": embedding}}


def flops_per_token(config, num_params: int, seq_len: int) -> float:
  """Training FLOPs per image (an image is the 'token' of classification: throughput is
  in images/s): 6 per weight for each token it processes, plus attention (PaLM app. B).

  The block weights see every token, the patch projection every patch, the head one
  vector; the class token and position embedding are additions, not matmuls.
  """
  del seq_len
  t = num_tokens(config)
  d = config.embed_dim
  patch = (
    config.get("patch_size", ViT.patch_size) ** 2 * config.get("num_channels", ViT.num_channels) + 1
  ) * d
  head = (d + 1) * config.num_classes
  lookups = t * d + d * (config.get("pool", ViT.pool) == "cls")
  blocks = num_params - patch - head - lookups
  attention = 12 * config.num_layers * d * t * t
  return 6 * (blocks * t + patch * num_patches(config) + head) + attention
