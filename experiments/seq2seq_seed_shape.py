"""The seed's encoder-decoder shape: a 10,000-token vocabulary, 512 positions, 8 heads,
6 encoder + 6 decoder layers, hidden size 768. A forward pass of a (1, 512) source and a
(1, 512) target gives decoder states of shape (1, 512, 768) (tests/test_seq2seq.py checks
it with jax.eval_shape). Trains on Multi30k like experiments/multi30k_de_en.py.
"""

from experiments import multi30k_de_en


def get_config(arg=None):
  del arg
  config = multi30k_de_en.get_config()
  config.model.update(
    vocab_size=10_000,
    num_encoder_layers=6,
    num_decoder_layers=6,
    num_heads=8,
    embed_dim=768,
    mlp_dim=3072,
    max_len=512,
  )
  config.tokenizer.vocab_size = 10_000
  return config
