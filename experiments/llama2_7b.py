"""Llama 2 7B (Touvron et al., 2023): 32 layers, d=4096, 32 heads (no GQA at 7B), SwiGLU
width 11008, 32000 tokens, untied head, 4096 context -- 6,738,415,616 parameters, HF's
LlamaForCausalLM count.

  python -m bigflax plan --config experiments/llama2_7b.py --topology v5p:2x2x2
"""

from experiments import llama_family


def get_config(arg=None):
  del arg
  return llama_family.paper_config(dict(
      vocab_size=32000, num_layers=32, num_heads=32, num_kv_heads=32, embed_dim=4096,
      mlp_dim=11008), seq_len=4096, global_batch_size=1024)
