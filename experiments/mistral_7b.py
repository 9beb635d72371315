"""Mistral 7B v0.1 (Jiang et al., 2023): Llama's layout with 32 layers, d=4096, 32 query
and 8 key/value heads, SwiGLU width 14336, 32000 tokens, and sliding-window attention over
the latest 4096 tokens -- 7,241,732,096 parameters, HF's MistralForCausalLM count.
"""

from experiments import llama2_7b


def get_config(arg=None):
  del arg
  return llama2_7b.paper_config(
    dict(
      vocab_size=32000,
      num_layers=32,
      num_heads=32,
      num_kv_heads=8,
      embed_dim=4096,
      mlp_dim=14336,
      sliding_window=4096,
    ),
    seq_len=8192,
    global_batch_size=512,
  )
