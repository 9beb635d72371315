"""Qwen2.5 0.5B (Qwen team, 2024): 24 layers, d=896, 14 query and 2 key/value heads,
SwiGLU width 4864, 151936 tokens, biases on query/key/value only, tied embeddings,
RMSNorm eps 1e-6, RoPE theta 1e6 -- 494,032,768 parameters, HF's Qwen2ForCausalLM count.
"""

from experiments import llama2_7b


def get_config(arg=None):
  del arg
  return llama2_7b.paper_config(
    dict(
      vocab_size=151936,
      num_layers=24,
      num_heads=14,
      num_kv_heads=2,
      embed_dim=896,
      mlp_dim=4864,
      qkv_bias=True,
      tie_embeddings=True,
      norm_eps=1e-6,
      rope_max_wavelength=1_000_000.0,
    ),
    seq_len=4096,
    global_batch_size=512,
  )
