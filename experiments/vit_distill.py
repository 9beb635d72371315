"""Knowledge distillation of the Fashion-MNIST ViT (experiments/vit_fashion_mnist.py: 6
layers, d=64, 0.3M parameters) into a 2-layer ViT of the same width, on the same data and
augmentation.

  python -m bigflax train --config experiments/vit_fashion_mnist.py --workdir runs/vit_fm
  python -m bigflax train --config experiments/vit_distill.py --workdir runs/vit_distill
  python -m bigflax train --config experiments/vit_distill.py:alone --workdir runs/vit_alone
  python -m bigflax eval --workdir runs/vit_distill --split test

`:alone` trains the same student for the same steps without a teacher (the baseline).

RESULT_PLACEHOLDER
"""

from experiments import vit_fashion_mnist


def get_config(arg=None):
  config = vit_fashion_mnist.get_config()
  config.model.update(num_layers=2, embed_dim=64, num_heads=2, mlp_dim=256)
  config.train.update(num_steps=3000, eval_every=1000, checkpoint_every=1000)
  if arg != "alone":
    config.distill.update(teacher="runs/vit_fm", alpha=0.5, temperature=4.0)
  return config
