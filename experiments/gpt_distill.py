"""Knowledge distillation of the default GPT (experiments/gpt_tiny.py, 4 layers) into a
half-size student (2 layers, same width) on the same stdlib corpus and budget.

  python -m bigflax train --config experiments/gpt_tiny.py --workdir runs/gpt_tiny
  python -m bigflax train --config experiments/gpt_distill.py --workdir runs/gpt_distill
  python -m bigflax train --config experiments/gpt_distill.py:alone --workdir runs/gpt_alone

`:alone` trains the same student with the same data and steps but no teacher: the baseline
the distilled student is compared against. The teacher is any bigflax LM run with the same
tokenizer (`--config.distill.teacher=DIR`).

RESULT_PLACEHOLDER
"""

from experiments import gpt_tiny


def get_config(arg=None):
  config = gpt_tiny.get_config()
  config.model.num_layers = 2
  if arg != "alone":
    config.distill.update(teacher="runs/gpt_tiny", alpha=0.5, temperature=2.0)
  return config
