"""Llama 3 8B (Meta, 2024): 32 layers, d=4096, 32 query and 8 key/value heads (GQA),
SwiGLU width 14336, 128256 tokens, RoPE theta 500000, untied head, 8192 context --
8,030,261,248 parameters, HF's LlamaForCausalLM count. Llama 3.1 8B is the same shape with
`--config.model.rope_scaling_factor=8` (and the 131072 context it was extended to).

  python -m bigflax plan --config experiments/llama3_8b.py --topology v5p:2x2x2
"""

from experiments import llama2_7b


def get_config(arg=None):
  del arg
  return llama2_7b.paper_config(
    dict(
      vocab_size=128256,
      num_layers=32,
      num_heads=32,
      num_kv_heads=8,
      embed_dim=4096,
      mlp_dim=14336,
      rope_max_wavelength=500_000.0,
    ),
    seq_len=8192,
    global_batch_size=512,
  )
