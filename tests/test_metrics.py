"""Metrics against scikit-learn, padding masks, exactness across hosts, and the PNG writer."""

import functools
import json

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from bigflax import losses, metrics
from bigflax.train import partitioning

try:
  from sklearn import metrics as skm
except ImportError:
  skm = None
needs_sklearn = pytest.mark.skipif(
  skm is None, reason="scikit-learn is not installed (pip install scikit-learn)"
)

jit_confusion = jax.jit(metrics.confusion_matrix, static_argnums=2)


def sample(num_classes, size, seed, missing_classes):
  """Random labels and predictions; with `missing_classes`, class 0 is never a label and
  the last class is never predicted (for 2 classes: all labels 1, all predictions 0)."""
  rng = np.random.default_rng(seed)
  label_classes = np.arange(1 if missing_classes else 0, num_classes)
  predicted_classes = np.arange(num_classes - 1 if missing_classes else num_classes)
  return rng.choice(label_classes, size), rng.choice(predicted_classes, size)


@needs_sklearn
@pytest.mark.parametrize("missing_classes", [False, True])
@pytest.mark.parametrize("num_classes", [2, 3, 10])
def test_matches_sklearn(num_classes, missing_classes):
  labels, predictions = sample(num_classes, 200, num_classes, missing_classes)
  classes = list(range(num_classes))
  confusion = jit_confusion(jnp.asarray(labels), jnp.asarray(predictions), num_classes)
  np.testing.assert_array_equal(
    confusion, skm.confusion_matrix(labels, predictions, labels=classes)
  )

  got = metrics.classification_metrics(confusion)
  assert got["accuracy"] == pytest.approx(skm.accuracy_score(labels, predictions))
  prfs = functools.partial(
    skm.precision_recall_fscore_support, labels, predictions, labels=classes, zero_division=0
  )
  precision, recall, f1, support = prfs(average=None)
  for i in classes:
    assert got[f"precision/class_{i}"] == pytest.approx(precision[i])
    assert got[f"recall/class_{i}"] == pytest.approx(recall[i])
    assert got[f"f1/class_{i}"] == pytest.approx(f1[i])
    assert got[f"support/class_{i}"] == support[i]
  for average in ("macro", "micro", "weighted"):
    precision, recall, f1, _ = prfs(average=average)
    assert got[f"precision/{average}"] == pytest.approx(precision)
    assert got[f"recall/{average}"] == pytest.approx(recall)
    assert got[f"f1/{average}"] == pytest.approx(f1)


def test_empty_confusion_gives_zeros_without_warnings():
  with np.errstate(all="raise"):
    got = metrics.classification_metrics(np.zeros((3, 3)))
  assert set(got.values()) == {0.0}


@pytest.mark.parametrize("dtype", [bool, np.float32])
def test_weights_mask_padded_rows(dtype):
  labels, predictions = sample(5, 13, 0, missing_classes=False)
  padded = lambda x, fill: jnp.asarray(np.concatenate([x, np.full(3, fill)]))
  weights = padded(np.ones(13, dtype), 0).astype(dtype)
  got = jit_confusion(padded(labels, 4), padded(predictions, 1), 5, weights)
  np.testing.assert_array_equal(
    got, jit_confusion(jnp.asarray(labels), jnp.asarray(predictions), 5)
  )
  assert got.dtype == jnp.float32 and got.sum() == 13


def test_classification_sums_masks_loss_count_and_confusion():
  rng = np.random.default_rng(1)
  logits = jnp.asarray(rng.normal(size=(2, 4, 3)), jnp.float32)  # leading dims flatten
  labels = jnp.asarray(rng.integers(0, 3, size=(2, 4)))
  weights = jnp.asarray([[1, 1, 1, 0], [1, 1, 0, 0]], bool)
  sums = jax.jit(metrics.classification_sums)(logits, labels, weights)
  keep = np.asarray(weights)
  nll = losses.cross_entropy(logits, labels)
  assert float(sums["loss"]) == pytest.approx(float(nll[keep].sum()), rel=1e-6)
  assert float(sums["count"]) == 5
  np.testing.assert_array_equal(
    sums["confusion"], metrics.confusion_matrix(labels[keep], logits.argmax(-1)[keep], 3)
  )


def test_accumulate_adds_sums_across_batches():
  batches = [
    {"loss": jnp.float32(1.5), "confusion": jnp.eye(2)},
    {"loss": jnp.float32(2.0), "confusion": jnp.ones((2, 2))},
  ]
  totals = None
  for sums in batches:
    totals = metrics.accumulate(totals, sums)
  assert totals["loss"] == 3.5 and totals["confusion"].dtype == np.float64
  np.testing.assert_array_equal(totals["confusion"], [[2, 1], [1, 2]])


def test_means_divide_by_the_count_in_a_step_and_on_the_host():
  sums = {"loss": jnp.float32(7.5), "correct": jnp.float32(3.0), "count": jnp.float32(4.0)}
  step = jax.jit(functools.partial(metrics.means, count="count"))(sums)
  assert set(step) == {"loss", "correct"}
  assert step["loss"].dtype == jnp.float32 and float(step["loss"]) == 7.5 / 4
  # An evaluation's totals stay float64; a batch of padding alone gives 0, not nan.
  totals = metrics.accumulate(None, dict(sums, loss=jnp.float32(0.1)))
  assert metrics.means(totals, "count")["loss"] == np.float64(np.float32(0.1)) / 4
  assert metrics.means(totals, "count")["loss"].dtype == np.float64
  empty = jax.jit(functools.partial(metrics.means, count="count"))(
    {"loss": jnp.float32(0.0), "count": jnp.float32(0.0)}
  )
  assert float(empty["loss"]) == 0.0


def test_hosts_sum_confusions_exactly():
  """Uneven per-host shards: summed confusions give the whole set's metrics; averaging
  per-host F1 does not, which is why eval functions return sums."""
  labels, predictions = sample(4, 101, 2, missing_classes=False)
  whole = metrics.classification_metrics(metrics.confusion_matrix(labels, predictions, 4))
  totals, shard_f1 = None, []
  for part in np.split(np.arange(101), [7, 47]):  # shards of 7, 40 and 54 examples
    sums = {"confusion": jit_confusion(labels[part], predictions[part], 4)}
    totals = metrics.accumulate(totals, sums)
    shard_f1.append(metrics.classification_metrics(sums["confusion"])["f1/macro"])
  assert metrics.classification_metrics(totals["confusion"]) == pytest.approx(whole)
  assert abs(np.mean(shard_f1) - whole["f1/macro"]) > 0.01


def test_confusion_of_a_sharded_global_batch():
  """The batch sharded over the trainer's mesh, as eval sees it: the sum is still global."""
  mesh = partitioning.make_mesh({"data": 2, "fsdp": -1})
  size = 2 * jax.device_count()
  labels, predictions = sample(3, size, 3, missing_classes=False)
  weights = np.arange(size) < size - 3  # the last rows are padding
  sharded = lambda x: jax.device_put(x, NamedSharding(mesh, P(("data", "fsdp"))))
  with jax.set_mesh(mesh):
    got = jit_confusion(sharded(labels), sharded(predictions), 3, sharded(weights))
  np.testing.assert_array_equal(
    got, metrics.confusion_matrix(labels[weights], predictions[weights], 3)
  )


def test_confusion_json_and_text():
  confusion = np.array([[5.0, 1.0], [2.0, 30.0]])
  record = metrics.confusion_matrix_json(confusion, ["cat", "dog"])
  assert json.loads(json.dumps(record)) == {"classes": ["cat", "dog"], "matrix": [[5, 1], [2, 30]]}
  text = metrics.format_confusion_matrix(confusion, ["cat", "dog"])
  assert text.splitlines() == ["true\\pred cat dog", "      cat   5   1", "      dog   2  30"]


def test_confusion_png_is_a_real_image(tmp_path):
  pytest.importorskip("matplotlib", reason="matplotlib is not installed")
  path = tmp_path / "confusion.png"
  labels, predictions = sample(10, 300, 4, missing_classes=True)
  metrics.save_confusion_matrix_png(
    metrics.confusion_matrix(labels, predictions, 10),
    path,
    class_names=[f"class {i}" for i in range(10)],
  )
  data = path.read_bytes()
  assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_perplexity_is_exp_and_does_not_overflow():
  assert metrics.perplexity(np.log(7.0)) == pytest.approx(7.0)
  assert np.isfinite(metrics.perplexity(1e6))


@needs_sklearn
def test_token_metrics_from_class_counts_match_scikit_learn():
  rng = np.random.default_rng(3)
  labels = rng.integers(0, 40, size=(4, 50))
  predictions = np.where(rng.random((4, 50)) < 0.4, labels, rng.integers(0, 60, (4, 50)))
  weights = (rng.random((4, 50)) < 0.8).astype(np.float32)
  sums = metrics.class_count_sums(
    jnp.asarray(labels), jnp.asarray(predictions), 300, jnp.asarray(weights)
  )
  result = metrics.averaged_metrics(
    sums["true_positives"], sums["support"], sums["predicted"], present_only=True
  )
  keep = weights.reshape(-1) > 0
  y, p = labels.reshape(-1)[keep], predictions.reshape(-1)[keep]
  for average in ("macro", "micro", "weighted"):
    expected = skm.precision_recall_fscore_support(y, p, average=average, zero_division=0)[:3]
    got = [result[f"{name}/{average}"] for name in ("precision", "recall", "f1")]
    np.testing.assert_allclose(got, expected, rtol=1e-6, err_msg=average)
