"""GPT-2 medium: 24 layers, d=1024, 16 heads, tied embeddings — 354,823,168 parameters.

Launchable as is on a v5e 4x4 slice (16 chips, 16 GiB HBM each): the paper's batch
(512 x 1024 tokens) runs as 4 microbatches of 128 (`bigflax plan` on v5e:4x4: 8.8 GiB
per device; in one pass the step needs ~20 GiB of temporaries per device).
"""

from experiments import gpt2_small


def get_config(arg=None):
  del arg
  config = gpt2_small.get_config("medium")
  config.train.microbatches = 4  # 512 x 1024 tokens in one pass overflow a v5e's 16 GiB
  return config
