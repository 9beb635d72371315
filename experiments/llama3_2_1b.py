"""Llama 3.2 1B (Meta, 2024): 16 layers, d=2048, 32 query and 8 key/value heads, SwiGLU
width 8192, 128256 tokens, tied embeddings, RoPE theta 500000 with Llama 3.1's frequency
scaling (factor 32, low/high frequency factors 1 and 4, original context 8192) --
1,235,814,400 parameters, HF's LlamaForCausalLM count.
"""

from experiments import llama2_7b


def get_config(arg=None):
  del arg
  return llama2_7b.paper_config(
    dict(
      vocab_size=128256,
      num_layers=16,
      num_heads=32,
      num_kv_heads=8,
      embed_dim=2048,
      mlp_dim=8192,
      tie_embeddings=True,
      rope_max_wavelength=500_000.0,
      rope_scaling_factor=32.0,
      rope_low_freq_factor=1.0,
      rope_high_freq_factor=4.0,
      rope_original_max_len=8192,
    ),
    seq_len=8192,
    global_batch_size=512,
  )
