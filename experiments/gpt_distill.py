"""Knowledge distillation of the default GPT (experiments/gpt_tiny.py, 4 layers, trained
2x longer than the default) into a half-size student (2 layers, same width) trained for
the default budget on the same stdlib corpus.

  python -m bigflax train --config experiments/gpt_tiny.py --workdir runs/gpt_teacher \
      --config.train.num_steps=500
  python -m bigflax train --config experiments/gpt_distill.py --workdir runs/gpt_distill
  python -m bigflax train --config experiments/gpt_distill.py:alone --workdir runs/gpt_alone

`:alone` trains the same student with the same data and steps but no teacher: the baseline
the distilled student is compared against. The teacher is any bigflax LM run with the same
tokenizer (`--config.distill.teacher=DIR`).

Measured (2-core CPU shared with other jobs; validation = the same 10 batches of held-out
stdlib files, nats/byte):
  teacher, 4 layers, 500 steps                      loss 1.893, accuracy 49.4 %
  student alone, 2 layers, 250 steps                loss 2.185, accuracy 41.9 %
  student distilled (alpha 0.5, T 2), 250 steps     loss 2.125, accuracy 43.2 %
Distillation closes about a fifth of the student-teacher gap at the same student budget
(8 min wall for the distilled run under load, the teacher's forward pass included).
"""

from experiments import gpt_tiny


def get_config(arg=None):
  config = gpt_tiny.get_config()
  config.model.num_layers = 2
  if arg != "alone":
    config.distill.update(teacher="runs/gpt_teacher", alpha=0.5, temperature=2.0)
  return config
