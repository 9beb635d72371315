"""Gemma 2B (Gemma team, 2024): 18 layers, d=2048, 8 query heads of dimension 256 and one
key/value head (multi-query), GeGLU (tanh GELU) width 16384, 256000 tokens, embeddings
scaled by sqrt(d) and tied to the head, RMSNorm scaled by (1 + w) -- 2,506,172,416
parameters, HF's GemmaForCausalLM count.
"""

from experiments import llama2_7b


def get_config(arg=None):
  del arg
  return llama2_7b.paper_config(
    dict(
      vocab_size=256000,
      num_layers=18,
      num_heads=8,
      num_kv_heads=1,
      head_dim=256,
      embed_dim=2048,
      mlp_dim=16384,
      norm="rmsnorm_offset",
      norm_eps=1e-6,
      activation="geglu",
      scale_embeddings=True,
      tie_embeddings=True,
    ),
    seq_len=8192,
    global_batch_size=512,
  )
