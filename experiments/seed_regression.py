"""Linear regression with mean squared error on 1000 x 2 random features (y = 3 x0 - 2 x1
+ 0.5 + noise), through the same trainer as the transformers. Runs in seconds:

  python -m bigflax train --config experiments/seed_regression.py --workdir runs/regression

The validation MSE approaches the noise variance, 0.01.
"""

from bigflax import configs


def get_config(arg=None):
  del arg
  config = configs.base()
  config.task.name = "regression"
  config.model = dict(name="mlp", num_outputs=1, hidden_dims=())  # a linear model
  config.tokenizer.kind = "none"
  config.data.update(name="linear_regression", num_examples=1000, global_batch_size=50, seq_len=1)
  config.optim.update(
    lr=0.05, warmup_steps=0, decay="cosine", weight_decay=0.0, clip_norm=0.0, b2=0.999
  )
  config.train.update(
    num_steps=400, log_every=50, eval_every=100, eval_steps=20, checkpoint_every=400
  )
  return config
