"""The default experiment's corpus and budget with the Llama layout: a small byte-level
decoder with RoPE, RMSNorm, a SwiGLU MLP, grouped-query attention (4 query heads sharing 2
key/value heads), no biases and an untied head, trained on the CPython standard library's
own source on a laptop CPU (about as long as gpt_tiny).

  python -m bigflax train --config experiments/llama_tiny.py --workdir runs/llama_tiny
  python -m bigflax sample --workdir runs/llama_tiny --prompt "def parse("

`bigflax.interop.llama.export_llama(out, config.model, params)` writes the run as a HF
LlamaForCausalLM checkpoint.
"""

from experiments import gpt_tiny, llama2_7b


def get_config(arg=None):
  del arg
  config = gpt_tiny.get_config()
  # SwiGLU's three matrices of width 704 cost what GPT's two of 1024 do.
  config.model = dict(
    llama2_7b.LLAMA,
    vocab_size=0,
    num_layers=4,
    num_heads=4,
    num_kv_heads=2,
    embed_dim=256,
    mlp_dim=704,
    max_len=256,
    scan_layers=False,
    remat="none",
    dtype="float32",
    lora=config.model.lora,
  )
  config.optim.no_decay = r"(bias|scale)$"
  config.train.num_steps = 250  # its measured run (docs/models.md); gpt_tiny now stops at 225
  return config
