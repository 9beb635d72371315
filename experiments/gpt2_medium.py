"""GPT-2 medium: 24 layers, d=1024, 16 heads, tied embeddings — 354,823,168 parameters."""

from experiments import gpt2_small


def get_config(arg=None):
  del arg
  return gpt2_small.get_config("medium")
