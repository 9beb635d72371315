"""A binary classifier with a sigmoid output and cross-entropy on 2-feature data (two
Gaussian blobs at (-1.5, -1.5) and (1.5, 1.5)), through the same trainer as the
transformers. Runs in seconds:

  python -m bigflax train --config experiments/seed_classifier.py --workdir runs/classifier

The Bayes-optimal accuracy of this problem is Phi(1.5 * sqrt(2)) = 98.3 %.
"""

from bigflax import configs


def get_config(arg=None):
  del arg
  config = configs.base()
  config.task.name = "classify"
  config.model = dict(name="mlp", num_outputs=1, hidden_dims=(16,), activation="relu")
  config.tokenizer.kind = "none"
  config.data.update(name="two_blobs", num_examples=1000, global_batch_size=50, seq_len=1)
  config.optim.update(lr=0.02, warmup_steps=0, weight_decay=0.0, clip_norm=0.0, b2=0.999)
  config.train.update(
    num_steps=300, log_every=50, eval_every=100, eval_steps=20, checkpoint_every=300
  )
  return config
