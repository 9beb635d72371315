"""ViT-B/16 (Dosovitskiy et al., 2021): 224 px, 16 px patches, 12 pre-LN layers, d=768,
12 heads, a class token and a 1000-class head — 86,567,656 parameters (timm's
vit_base_patch16_224).

Paper-scale ImageNet settings (batch 4096, AdamW lr 3e-3, weight decay 0.3, 10k warmup
steps); no ImageNet data or weights ship with bigflax: on a TPU slice point `data` at an
image-classification TFDS dataset. `--config.init_from=DIR` takes a checkpoint of another
resolution: the position embedding is resized bilinearly on load.
"""

from bigflax import configs


def get_config(arg=None):
  del arg
  config = configs.base()
  config.task.name = "classify"
  config.model = dict(
    name="vit",
    num_classes=1000,
    num_layers=12,
    num_heads=12,
    embed_dim=768,
    mlp_dim=3072,
    image_size=224,
    patch_size=16,
    num_channels=3,
    pool="cls",
    activation="gelu_exact",
    norm_eps=1e-6,
    dropout_rate=0.0,
    scan_layers=False,
    remat="none",
    dtype="float32",
  )
  config.tokenizer.kind = "none"
  config.data.update(name="imagenet2012", seq_len=1, global_batch_size=4096)
  config.optim.update(
    lr=3e-3,
    warmup_steps=10_000,
    decay="cosine",
    final_lr_fraction=0.0,
    b1=0.9,
    b2=0.999,
    weight_decay=0.3,
    clip_norm=1.0,
    no_decay=r"(bias|scale|position_embed/embedding|cls_token)$",
  )
  config.train.update(num_steps=93_000)
  return config
