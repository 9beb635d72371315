"""A small BERT pretrained with masked-language modelling on the CPython standard library's
source (bytes), through the same trainer as GPT. A couple of minutes on a 2-core CPU:

  python -m bigflax train --config experiments/bert_mlm_tiny.py --workdir runs/bert_mlm
"""

from bigflax import configs


def get_config(arg=None):
  del arg
  config = configs.base()
  config.task = dict(name="mlm", mask_rate=0.15)
  config.model = dict(
    name="bert",
    vocab_size=0,
    num_layers=4,
    num_heads=4,
    embed_dim=256,
    mlp_dim=1024,
    max_len=128,
    pre_norm=True,
    dropout_rate=0.0,
    attention_dropout_rate=0.0,
  )
  config.data.name = "stdlib_corpus"
  config.data.seq_len = 128
  config.data.global_batch_size = 32
  config.optim.update(lr=1e-3, warmup_steps=30, b2=0.98, weight_decay=0.01)
  config.train.update(
    num_steps=200, log_every=10, eval_every=100, eval_steps=10, checkpoint_every=100
  )
  return config
