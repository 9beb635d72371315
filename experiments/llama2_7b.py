"""Llama 2 7B (Touvron et al., 2023): 32 layers, d=4096, 32 heads (no GQA at 7B), SwiGLU
width 11008, 32000 tokens, untied head, 4096 context -- 6,738,415,616 parameters, HF's
LlamaForCausalLM count.

  python -m bigflax plan --config experiments/llama2_7b.py --topology v5p:2x2x2 \
      --config.train.microbatches=16 --config.model.remat=full

The other Llama-family paper configs (llama3_8b, llama3_2_1b, mistral_7b, qwen2_5_0_5b,
gemma_2b) start from `paper_config` here: the layout of bigflax's GPT that makes it a
Llama (`LLAMA`) and pretraining at Llama 2's scale (AdamW b2 0.95, weight decay 0.1, 2000
warmup steps, cosine to 10 %, 4M-token batches, FSDP); each changes what its paper does.
`--config.init_from=HF_DIR --config.tokenizer.path=HF_DIR` fine-tunes a checkpoint.
"""

from bigflax import configs

# The GPT fields of Llama 2 (bigflax/models/gpt.py lists the family's other options).
LLAMA = dict(
  name="gpt",
  position="rope",
  norm="rmsnorm",
  norm_eps=1e-5,
  activation="swiglu",
  use_bias=False,
  tie_embeddings=False,
  rope_max_wavelength=10_000.0,
  dropout_rate=0.0,
  scan_layers=True,
  remat="dots_no_batch",
  dtype="bfloat16",
  attention_impl="auto",
)


def paper_config(model: dict, seq_len: int, global_batch_size: int):
  """A pretraining config for the model `LLAMA` updated by `model`."""
  config = configs.base()
  config.model = dict(LLAMA, **model, lora=configs.lora())
  config.model.max_len = model.get("max_len", seq_len)
  # The checkpoint's own tokenizer.json: --config.tokenizer.path=HF_DIR.
  config.tokenizer = dict(kind="hf_lm", path="", vocab_size=0)
  config.data.seq_len = seq_len
  config.data.global_batch_size = global_batch_size
  config.mesh.shape = dict(data=1, fsdp=-1, tensor=1)
  config.optim.lr = 3e-4
  config.optim.warmup_steps = 2000
  config.optim.b2 = 0.95
  config.optim.weight_decay = 0.1
  config.optim.no_decay = r"(bias|scale)$"
  config.train.num_steps = 500_000
  config.train.log_every = 100
  config.train.eval_every = 2000
  config.train.eval_steps = 50
  config.train.checkpoint_every = 2000
  return config


def get_config(arg=None):
  del arg
  return paper_config(
    dict(
      vocab_size=32000, num_layers=32, num_heads=32, num_kv_heads=32, embed_dim=4096, mlp_dim=11008
    ),
    seq_len=4096,
    global_batch_size=1024,
  )
