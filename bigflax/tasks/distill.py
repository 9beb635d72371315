"""Knowledge distillation (Hinton et al., 2015): a student learns from the labels and from a
frozen teacher's softened outputs,

  loss = alpha * CE(student, labels) + (1 - alpha) * T^2 * KL(teacher_T || student_T)
         [+ hidden_weight * MSE(projection(student hidden), teacher hidden)   (FitNets)]

This wraps any task whose module has `outputs(model, params, batch, rngs) -> (logits,
labels, weights)` (lm, classify), with its data, metrics and evaluation unchanged: the
student is evaluated as the task would evaluate it. The teacher runs inside the same jitted
step; its parameters arrive as the step's `frozen` input, restored and sharded by run.py.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from bigflax import losses
from bigflax.models import layers

# The learned map from the student's hidden size to the teacher's lives next to the
# student's parameters under this name (trained with them, ignored by the student model).
PROJECTION = "distill_projection"


def init_projection(rng, student_dim: int, teacher_dim: int) -> dict:
  return {
    "kernel": layers.normal(student_dim**-0.5, ("embed", None))(rng, (student_dim, teacher_dim))
  }


def _outputs_and_hidden(task, model, params, batch, rngs, hidden_module: str):
  """The task's outputs and the output of the model's submodule named `hidden_module`."""
  captured = []

  def keep(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__" and context.module.name == hidden_module:
      captured.append(out)
    return out

  with nn.intercept_methods(keep):
    result = task.outputs(model, params, batch, rngs)
  if not captured:
    raise ValueError(
      f"distill.hidden_module={hidden_module!r} is not a submodule of "
      f"{type(model).__name__}; name one (e.g. 'final_norm')."
    )
  return result, captured[-1]


def loss_fn(task, student, teacher, cfg, params, batch, rng, teacher_params):
  rngs = {"dropout": rng}
  if cfg.hidden_weight:
    (logits, labels, weights), hidden = _outputs_and_hidden(
      task, student, params, batch, rngs, cfg.hidden_module
    )
    (teacher_logits, _, _), teacher_hidden = _outputs_and_hidden(
      task, teacher, teacher_params, batch, {}, cfg.hidden_module
    )
  else:
    logits, labels, weights = task.outputs(student, params, batch, rngs)
    teacher_logits, _, _ = task.outputs(teacher, teacher_params, batch, {})
  if logits.shape != teacher_logits.shape or logits.shape[-1] < 2:
    raise ValueError(
      f"Distillation compares softmax outputs of one shape: the student "
      f"gives {logits.shape}, the teacher {teacher_logits.shape}. Use the "
      f"teacher's vocabulary / number of classes (model.vocab_size, "
      f"model.num_outputs >= 2)."
    )

  count = jnp.maximum(weights.sum(), 1.0)
  mean = lambda per_position: (per_position * weights).sum() / count
  hard = mean(losses.cross_entropy(logits, labels))
  soft = mean(losses.distillation_kl(logits, teacher_logits, cfg.temperature))
  loss = cfg.alpha * hard + (1 - cfg.alpha) * soft
  metrics = {
    "hard_loss": hard,
    "kd_loss": soft,
    "accuracy": mean(losses.correct(jax.lax.stop_gradient(logits), labels)),
  }
  if cfg.hidden_weight:
    projected = hidden.astype(jnp.float32) @ params[PROJECTION]["kernel"]
    target = jax.lax.stop_gradient(teacher_hidden).astype(jnp.float32)
    # Mean over features (and over tokens or patches when a label covers many).
    hidden_loss = mean(jnp.square(projected - target).reshape(*weights.shape, -1).mean(-1))
    loss = loss + cfg.hidden_weight * hidden_loss
    metrics["hidden_loss"] = hidden_loss
  return loss, dict(metrics, loss=loss)
