"""A small GPT on Tiny Shakespeare (Karpathy's char-rnn corpus) read from a local copy of
input.txt, with a sentencepiece BPE vocabulary trained on the training split.

  python -m bigflax train --config experiments/gpt_shakespeare.py --workdir runs/shakespeare \\
      --config.data.source_dir=../shared/data/tiny_shakespeare

`--config experiments/gpt_shakespeare.py:char` uses bytes instead (nanoGPT's char model).
"""

from bigflax import configs


def get_config(arg=None):
  config = configs.base()
  config.model = dict(
    name="gpt",
    vocab_size=0,
    num_layers=4,
    num_heads=4,
    embed_dim=256,
    mlp_dim=1024,
    max_len=256,
    position="rope",
    dropout_rate=0.1,
    dtype="float32",
    attention_impl="auto",
  )
  if arg == "char":
    config.tokenizer.kind = "byte"
  else:
    config.tokenizer.kind = "sentencepiece"
    config.tokenizer.vocab_size = 2048
  config.data.name = "tiny_shakespeare"
  config.data.source_dir = "../shared/data/tiny_shakespeare"
  config.data.seq_len = 256
  config.data.global_batch_size = 16
  config.optim.lr = 1e-3
  config.optim.warmup_steps = 50
  config.train.num_steps = 1000
  config.train.eval_every = 250
  config.train.checkpoint_every = 250
  config.sample.prompts = ("ROMEO:\n",)
  return config
