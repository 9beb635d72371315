"""BERT-base uncased (Devlin et al., 2018): 12 post-LN layers, d=768, 12 heads, 512
positions, 2 segments, 30522 WordPiece tokens, with the pooler — 109,482,240 parameters,
HF `bert-base-uncased` BertModel's count (the MLM head's transform and output bias come on
top only when a call uses head="mlm"; its output matrix is the token embedding).

Paper-scale pretraining settings (batch 256 x 512, 1M steps, lr 1e-4, linear decay).
Pretrained weights: `bigflax.interop.hf.import_bert(<HF checkpoint dir>)`.
"""

import os

from bigflax import configs
from experiments import sst2_minilm


def get_config(arg=None):
  del arg
  config = configs.base()
  config.task.name = "mlm"
  config.model = dict(
    name="bert",
    vocab_size=30522,
    num_layers=12,
    num_heads=12,
    embed_dim=768,
    mlp_dim=3072,
    max_len=512,
    num_segments=2,
    activation="gelu_exact",
    norm_eps=1e-12,
    pre_norm=False,
    pooler=True,
    dropout_rate=0.1,
    attention_dropout_rate=0.1,
    scan_layers=True,
    remat="dots_no_batch",
    dtype="bfloat16",
  )
  # BERT's uncased WordPiece vocabulary; the offline MiniLM package ships the same one.
  config.tokenizer = dict(
    kind="hf", path=os.path.join(sst2_minilm.minilm_dir(), "tokenizer.json"), vocab_size=0
  )
  config.data.seq_len = 512
  config.data.global_batch_size = 256
  config.mesh.shape = dict(data=1, fsdp=-1, tensor=1)
  config.optim.update(
    lr=1e-4,
    warmup_steps=10_000,
    decay="linear",
    final_lr_fraction=0.0,
    b1=0.9,
    b2=0.999,
    eps=1e-6,
    weight_decay=0.01,
  )
  config.train.num_steps = 1_000_000
  config.train.log_every = 100
  config.train.eval_every = 10_000
  config.train.eval_steps = 50
  config.train.checkpoint_every = 10_000
  return config
