"""Learning rate x model width for the default GPT (experiments/gpt_tiny.py), shortened so
the 10 trials finish in about 10 minutes on a 2-core CPU:

  python -m bigflax sweep --config experiments/gpt_tiny_sweep.py --workdir runs/gpt_sweep

The table and plot (runs/gpt_sweep/results.png) show validation loss U-shaped in the learning
rate: too small a step size has not learned in 200 steps, too large a one is unstable.
"""

from bigflax import sweep
from experiments import gpt_tiny


def get_config(arg=None):
  config = gpt_tiny.get_config(arg)
  config.model.update(num_layers=2, num_heads=4, embed_dim=128, mlp_dim=512, max_len=128)
  config.data.seq_len = 128
  config.optim.warmup_steps = 20
  config.train.num_steps = 200
  config.train.eval_every = 50
  config.train.eval_steps = 10
  config.train.checkpoint_every = 200
  config.sample.max_new_tokens = 40
  return config


def get_sweep():
  width = sweep.zip_(**{"model.embed_dim": [64, 128], "model.mlp_dim": [256, 512]})
  return sweep.product(width, **{"optim.lr": [3e-4, 1e-3, 3e-3, 1e-2, 3e-2]})
