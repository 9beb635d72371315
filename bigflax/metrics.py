"""Metrics shared by training-time evaluation and the offline `eval` command.

An eval function returns *sums* over a batch (e.g. summed loss and a count); sums add up
across batches and hosts exactly, and a task's `finalize` turns the totals into metrics.
For classification the sum is a confusion matrix: every P/R/F1 follows from it, so the
metrics of a sharded, multi-batch evaluation equal those of the whole set at once.

    eval_fn:   return metrics.classification_sums(logits, batch["label"], batch["mask"])
    finalize:  return {"loss": float(t["loss"] / t["count"]),
                       **metrics.classification_metrics(t["confusion"])}
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import sacrebleu

from bigflax import losses


def accumulate(totals: dict | None, sums: dict) -> dict:
  sums = jax.device_get(sums)
  if totals is None:
    return {k: np.asarray(v, np.float64) for k, v in sums.items()}
  return {k: totals[k] + np.asarray(v, np.float64) for k, v in sums.items()}


def means(sums: dict, count: str) -> dict:
  """Every other entry of `sums` divided by `sums[count]` (the summed weights): a batch's
  means inside a train step, or an evaluation's from its float64 totals on the host. A
  count of 0 (a batch of padding alone) divides by 1: means of 0, not nan."""
  total = sums[count]
  total = total + (total == 0)  # max(total, 1) for tracers and numpy alike; counts are whole
  return {k: v / total for k, v in sums.items() if k != count}


def perplexity(mean_nll: float) -> float:
  return math.exp(min(mean_nll, 700.0))  # no overflow for a diverged run


# --- On the host: text metrics of detokenised output, by sacrebleu (never re-implemented:
# its defaults, 13a tokenisation for BLEU and chrF's n=6 characters, beta=2, are what
# published numbers mean). One reference per hypothesis.


def bleu(hypotheses: list[str], references: list[str]) -> float:
  """Corpus BLEU (0-100) of detokenised hypotheses against one reference each."""
  _check_pairs(hypotheses, references)
  return float(sacrebleu.corpus_bleu(hypotheses, [references]).score)


def chrf(hypotheses: list[str], references: list[str]) -> float:
  """Corpus chrF (0-100) of detokenised hypotheses against one reference each."""
  _check_pairs(hypotheses, references)
  return float(sacrebleu.corpus_chrf(hypotheses, [references]).score)


def _check_pairs(hypotheses, references):
  if len(hypotheses) != len(references):
    raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references.")


# --- Inside jit: sums over a (global) batch. ---


def confusion_matrix(
  labels: jax.Array, predictions: jax.Array, num_classes: int, weights: jax.Array | None = None
) -> jax.Array:
  """(num_classes, num_classes) float32 counts: rows are true classes, columns predictions.

  `weights` (bool or float, shaped like `labels`) zeroes padded examples; a label or
  prediction outside [0, num_classes) also counts nowhere (one_hot of it is all zeros).
  """
  true = jax.nn.one_hot(labels.reshape(-1), num_classes, dtype=jnp.float32)
  predicted = jax.nn.one_hot(predictions.reshape(-1), num_classes, dtype=jnp.float32)
  if weights is not None:
    true = true * weights.reshape(-1, 1).astype(jnp.float32)
  # A matmul, not a scatter-add: on the trainer's Auto-axis mesh it reduces a sharded batch
  # like any sum (an Explicit-axis mesh would need out_sharding=P()).
  # HIGHEST keeps float weights exact where TPUs would round f32 matmul inputs to bf16.
  return jnp.einsum("ni,nj->ij", true, predicted, precision=jax.lax.Precision.HIGHEST)


def classification_sums(
  logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None
) -> dict:
  """Summed loss, example count and confusion matrix (argmax predictions) of a batch."""
  if weights is None:
    weights = jnp.ones(labels.shape, jnp.float32)
  weights = weights.astype(jnp.float32)
  nll = losses.cross_entropy(logits, labels)
  return {
    "loss": (nll * weights).sum(),
    "count": weights.sum(),
    "confusion": confusion_matrix(labels, logits.argmax(-1), logits.shape[-1], weights),
  }


def class_count_sums(
  labels: jax.Array, predictions: jax.Array, num_classes: int, weights: jax.Array
) -> dict:
  """Per-class true positives, support and predicted counts: P/R/F1 over many classes (a
  vocabulary) without a num_classes^2 confusion matrix."""
  labels, predictions = labels.reshape(-1), predictions.reshape(-1)
  weights = weights.reshape(-1).astype(jnp.float32)
  count = lambda w, classes: jax.ops.segment_sum(w, classes, num_segments=num_classes)
  return {
    "true_positives": count(weights * (labels == predictions), labels),
    "support": count(weights, labels),
    "predicted": count(weights, predictions),
  }


# --- On the host: metrics from the totals (numpy). ---


def _divide(numerator, denominator):
  """numerator / denominator with 0/0 = 0, like scikit-learn's zero_division=0."""
  numerator, denominator = np.asarray(numerator, np.float64), np.asarray(denominator)
  return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator != 0)


def _f1(precision, recall):
  return _divide(2 * precision * recall, precision + recall)


def classification_metrics(confusion) -> dict[str, float]:
  """Flat {name: float} for the writers: accuracy; macro/micro/weighted and per-class P/R/F1.

  Every class of the matrix counts in the macro average, also one that is neither present
  nor predicted (as scikit-learn with `labels=range(num_classes)`).
  """
  confusion = np.asarray(confusion, np.float64)
  result = {
    "accuracy": float(_divide(np.trace(confusion), confusion.sum())),
    **averaged_metrics(np.diag(confusion), confusion.sum(1), confusion.sum(0)),
  }
  precision = _divide(np.diag(confusion), confusion.sum(axis=0))
  recall = _divide(np.diag(confusion), confusion.sum(axis=1))
  f1, support = _f1(precision, recall), confusion.sum(axis=1)
  for i in range(len(confusion)):
    result[f"precision/class_{i}"] = float(precision[i])
    result[f"recall/class_{i}"] = float(recall[i])
    result[f"f1/class_{i}"] = float(f1[i])
    result[f"support/class_{i}"] = float(support[i])
  return result


def averaged_metrics(true_positives, support, predicted, present_only: bool = False) -> dict:
  """Macro, micro and support-weighted precision/recall/F1 from per-class counts.

  `present_only`: average over the classes that occur as a label or a prediction (as
  scikit-learn's default), e.g. the tokens of a vocabulary that matter; otherwise over all.
  """
  true_positives, support, predicted = (
    np.asarray(x, np.float64) for x in (true_positives, support, predicted)
  )
  if present_only:
    present = (support > 0) | (predicted > 0)
    true_positives, support, predicted = (x[present] for x in (true_positives, support, predicted))
  precision = _divide(true_positives, predicted)
  recall = _divide(true_positives, support)
  f1 = _f1(precision, recall)
  class_weights = _divide(support, support.sum())
  # Micro P = R = F1 = accuracy when every example has exactly one label and one prediction.
  micro_precision = _divide(true_positives.sum(), predicted.sum())
  micro_recall = _divide(true_positives.sum(), support.sum())
  averages = {
    "macro": (precision.mean(), recall.mean(), f1.mean()),
    "micro": (micro_precision, micro_recall, _f1(micro_precision, micro_recall)),
    "weighted": (class_weights @ precision, class_weights @ recall, class_weights @ f1),
  }
  return {
    f"{name}/{average}": float(value)
    for average, values in averages.items()
    for name, value in zip(("precision", "recall", "f1"), values)
  }


def _class_names(confusion, class_names):
  return (
    [str(n) for n in class_names]
    if class_names is not None
    else [str(i) for i in range(len(confusion))]
  )


def _format_count(value) -> str:
  return f"{value:.0f}" if value == round(value) else f"{value:.2f}"  # fractional weights


def confusion_matrix_json(confusion, class_names=None) -> dict:
  """{"classes": [...], "matrix": rows of counts}: json.dump-able, rows are true classes."""
  confusion = np.asarray(confusion, np.float64)
  integral = np.all(confusion == np.round(confusion))
  return {
    "classes": _class_names(confusion, class_names),
    "matrix": (confusion.astype(np.int64) if integral else confusion).tolist(),
  }


def format_confusion_matrix(confusion, class_names=None) -> str:
  """A plain-text table for the terminal: rows are true classes, columns predictions."""
  confusion = np.asarray(confusion, np.float64)
  names = _class_names(confusion, class_names)
  cells = [[_format_count(v) for v in row] for row in confusion]
  corner = "true\\pred"
  label_width = max(len(s) for s in names + [corner])
  width = max(len(s) for s in names + [c for row in cells for c in row])
  rows = [[corner] + names] + [[name] + row for name, row in zip(names, cells)]
  return "\n".join(
    " ".join([row[0].rjust(label_width)] + [c.rjust(width) for c in row[1:]]) for row in rows
  )


def save_confusion_matrix_png(confusion, path: str, class_names=None):
  """Writes a heatmap of the counts to `path`: rows are true classes, columns predictions."""
  # A bare Figure renders with Agg and leaves pyplot's global state and backend alone;
  # importing here keeps matplotlib out of `import bigflax.metrics`.
  from matplotlib.figure import Figure

  confusion = np.asarray(confusion, np.float64)
  names = _class_names(confusion, class_names)
  n = len(names)
  side = min(2.5 + 0.5 * n, 20.0)
  fig = Figure(figsize=(side + 1.0, side), layout="constrained")
  ax = fig.add_subplot()
  image = ax.imshow(confusion, cmap="Blues", vmin=0)
  fig.colorbar(image, ax=ax, shrink=0.8)
  ax.set(
    xticks=range(n),
    yticks=range(n),
    xlabel="Predicted class",
    ylabel="True class",
    title="Confusion matrix",
  )
  ax.set_xticklabels(names, rotation=45, ha="right", rotation_mode="anchor")
  ax.set_yticklabels(names)
  if n <= 30:  # beyond that the digits no longer fit in the cells
    threshold = confusion.max() / 2
    for (i, j), value in np.ndenumerate(confusion):
      ax.text(
        j,
        i,
        _format_count(value),
        ha="center",
        va="center",
        fontsize=9,
        color="white" if value > threshold else "black",
      )
  fig.savefig(path, dpi=100)
