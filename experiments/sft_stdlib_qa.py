"""Supervised fine-tuning of the default GPT (experiments/gpt_tiny.py) into a small
"what does this stdlib function do?" assistant: questions about the CPython standard
library answered by its docstrings (data/stdlib_qa.py), loss on answer tokens only.

  python -m bigflax train --config experiments/gpt_tiny.py --workdir runs/gpt_tiny
  python -m bigflax train --config experiments/sft_stdlib_qa.py --workdir runs/sft_qa
  python -m bigflax sample --workdir runs/sft_qa \\
      --prompt $'Q: What does the function json.dumps(obj) do?\\nA:' --temperature 0

`--config.init_from=DIR` starts from another pretrained run (same byte tokenizer).
`:lora` trains rank-8 adapters on every attention and MLP projection instead (the base
weights stay frozen; 147,456 adapter weights, 4.4 % of the model, need a higher learning
rate).

Measured (validation split, answer tokens, 300 steps from the 250-step gpt_tiny, ~6 min
each on 2 cores): full fine-tuning loss 2.173, perplexity 8.78, accuracy 36.4 %, macro
recall 0.117, macro F1 0.111; LoRA loss 2.338, perplexity 10.36, accuracy 32.3 %, macro
recall 0.087, macro F1 0.072.

`:feedback` continues the fine-tuned run on what users sent back to `bigflax serve
--feedback_dir runs/feedback` (approved or corrected answers), mixed half and half with
replayed stdlib questions so the old skills stay; then `bigflax promote` decides
(scripts/feedback_loop.py runs the whole loop):

  python -m bigflax train --config experiments/sft_stdlib_qa.py:feedback \
      --workdir runs/sft_qa_feedback
  python -m bigflax promote --candidate runs/sft_qa_feedback --incumbent runs/sft_qa
"""

from experiments import gpt_tiny


def get_config(arg=None):
  config = gpt_tiny.get_config()
  config.task.name = "sft"
  config.init_from = "runs/gpt_tiny"
  config.data.update(
    name="stdlib_qa", seq_len=256, global_batch_size=16, replay_name="", replay_fraction=0.0
  )
  config.optim.update(lr=5e-4, warmup_steps=20)
  config.train.update(num_steps=300, eval_every=100, eval_steps=0, checkpoint_every=100)
  config.sample.update(
    prompts=(
      "Q: What does the function json.dumps(obj) do?\nA:",
      "Q: What does the function os.path.join(a, *p) do?\nA:",
    ),
    max_new_tokens=100,
    temperature=0.0,
  )
  if arg == "lora":
    config.model.lora.update(
      rank=8, alpha=16.0, targets=r"(attention/(query|key|value|out)|mlp/(up|down))/kernel"
    )
    config.optim.update(lr=2e-3)
  if arg == "feedback":
    config.init_from = "runs/sft_qa"
    config.data.update(
      name="feedback", source_dir="runs/feedback", replay_name="stdlib_qa", replay_fraction=0.5
    )
    config.optim.update(warmup_steps=10)
    config.train.update(num_steps=60, eval_every=0, checkpoint_every=60)
  return config
