"""Classification: of in-memory feature vectors (an `mlp`), of sentences by an encoder
(BERT's pooled output, `head="classify"`), or of images by a ViT (training images get
random crops and flips: `data.crop_padding`, `data.flip`). Softmax over classes, or a
single sigmoid output for a binary problem (`model.num_outputs = 1`). Metrics: loss,
accuracy, P/R/F1 and the confusion matrix, from counts summed over every example of every
host."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from bigflax import losses, metrics
from bigflax.data import augment, batches, packing, pipeline, sources
from bigflax.tasks import base, regression

# What the model reads, by the kind of data source (`data/sources.py`).
_INPUTS = {
  "features": ("features",),
  "image": ("image",),
  "labelled_text": ("tokens", "segments", "mask"),
}


def _kind(config) -> str:
  return sources.check_kind(config.data.name, *_INPUTS).kind


def make_data(config, tokenizer, split, *, process_index, process_count):
  kwargs = dict(process_index=process_index, process_count=process_count)
  kind = _kind(config)
  if kind == "image":
    padding, flip = config.data.get("crop_padding", 0), config.data.get("flip", False)
    transform = (
      functools.partial(augment.crop_and_flip, seed=config.data.seed, padding=padding, flip=flip)
      if padding or flip
      else None
    )
    return make_image_classification_batches(config.data, split, **kwargs, transform=transform)
  if kind == "labelled_text":
    return make_text_classification_batches(config.data, tokenizer, split, **kwargs)
  return regression.make_feature_batches(config.data, split, **kwargs)


def make_text_classification_batches(
  data_config, tokenizer, split: str, *, process_index: int, process_count: int
) -> batches.Batches:
  """Labelled-sentence batches of one split: tokens, mask, segments, label, weight.

  tokens are [CLS] ids [SEP] + padding for BERT tokenizers ([bos] ids [eos] for
  the others), mask is 1 at real tokens, segments are 0 (one sentence), weight
  is 1 for a real example. 'train' is shuffled and endless. Other splits are in
  file order, padded with weight-0 empty sentences to whole global batches: an
  evaluation of `steps_per_epoch` (= ceil(N / global_batch_size)) steps sees
  every example exactly once, and sums weighted by `weight` ignore the padding.

  `data_config` has name, data_dir, source_dir, seq_len, global_batch_size, seed.
  """
  sentences, labels = pipeline.load_labelled_sentences(
    data_config.name, split, data_config.data_dir, data_config.get("source_dir")
  )
  tokens, mask = packing.frame_texts(tokenizer, sentences, data_config.seq_len)
  arrays = {
    "tokens": tokens,
    "mask": mask,
    "segments": np.zeros_like(tokens),
    "label": labels,
    "weight": np.ones(len(sentences), np.float32),
  }
  blank_tokens, blank_mask = packing.frame_texts(tokenizer, [""], data_config.seq_len)
  buckets = data_config.get("length_buckets")
  trim = lambda step, batch: batches.trim_to_bucket(batch, buckets, ("tokens", "mask", "segments"))
  return batches.split_batches(
    arrays,
    data_config,
    split,
    process_index=process_index,
    process_count=process_count,
    padding={"tokens": blank_tokens[0], "mask": blank_mask[0]},
    transform=trim if buckets else None,
    lengths=mask.sum(axis=1) if buckets else None,
  )


def make_image_classification_batches(
  data_config, split: str, *, process_index: int, process_count: int, transform=None
) -> batches.Batches:
  """Labelled-image batches of one split: image (uint8), label, weight.

  'train' is shuffled, endless and passed through `transform` (augmentation); other
  splits are in file order, padded with weight-0 black images to whole global batches,
  so `steps_per_epoch` steps evaluate every example exactly once.
  """
  images, labels = pipeline.load_labelled_images(
    data_config.name, split, data_config.data_dir, data_config.get("source_dir")
  )
  arrays = {"image": images, "label": labels, "weight": np.ones(len(images), np.float32)}
  return batches.split_batches(
    arrays,
    data_config,
    split,
    process_index=process_index,
    process_count=process_count,
    padding={},
    transform=transform if split == "train" else None,
  )


def init_inputs(config):
  kind = _kind(config)
  if kind == "features":
    return (jnp.zeros((1, 2), jnp.float32),)
  if kind == "image":
    m = config.model
    return (jnp.zeros((1, m.image_size, m.image_size, m.num_channels), jnp.uint8),)
  tokens = jnp.zeros((1, config.data.seq_len), jnp.int32)
  return (tokens, tokens, tokens + 1, "classify")


def tokens_per_example(config):
  """Sentences count their tokens; a feature vector or an image counts as one."""
  return config.data.seq_len if _kind(config) == "labelled_text" else 1


def batch_spec(config):
  """Shapes of a global batch, for planning a run without its data."""
  rows = config.data.global_batch_size
  spec = lambda *shape, dtype=jnp.int32: jax.ShapeDtypeStruct((rows, *shape), dtype)
  kind = _kind(config)
  if kind in ("features", "image"):
    x = init_inputs(config)[0]
    return {kind: spec(*x.shape[1:], dtype=x.dtype), "label": spec()}
  length = config.data.seq_len
  return {
    "tokens": spec(length),
    "segments": spec(length),
    "mask": spec(length),
    "label": spec(),
    "weight": spec(dtype=jnp.float32),
  }


def _logits(model, params, batch, rngs):
  if "features" in batch:
    return model.apply({"params": params}, batch["features"], rngs=rngs)
  if "image" in batch:
    return model.apply({"params": params}, batch["image"], rngs=rngs)
  return model.apply(
    {"params": params}, batch["tokens"], batch["segments"], batch["mask"], "classify", rngs=rngs
  )


def _loss_and_predictions(logits, labels):
  if logits.shape[-1] == 1:  # sigmoid: the logit of class 1
    logit = logits[..., 0]
    return losses.sigmoid_cross_entropy(logit, labels), (logit > 0).astype(jnp.int32)
  return losses.cross_entropy(logits, labels), logits.argmax(-1)


def outputs(model, params, batch, rngs):
  """(logits, labels, weights); weight 0 marks rows that pad a split."""
  logits = _logits(model, params, batch, rngs)
  return logits, batch["label"], batch.get("weight", jnp.ones(batch["label"].shape))


def _sums(model, params, batch, rngs):
  logits, labels, weights = outputs(model, params, batch, rngs)
  nll, predictions = _loss_and_predictions(logits, labels)
  return {
    "loss": (nll * weights).sum(),
    "count": weights.sum(),
    "confusion": metrics.confusion_matrix(labels, predictions, max(logits.shape[-1], 2), weights),
  }


def loss_fn(model, params, batch, rng):
  sums = _sums(model, params, batch, {"dropout": rng})
  mean = metrics.means(
    {"loss": sums["loss"], "accuracy": jnp.trace(sums["confusion"]), "count": sums["count"]},
    "count",
  )
  return mean["loss"], mean


def eval_fn(model, params, batch):
  return _sums(model, params, batch, {})


def finalize(totals):
  return {
    "loss": float(totals["loss"] / totals["count"]),
    **metrics.classification_metrics(totals["confusion"]),
  }


def serving(config, model, params, tokenizer):
  """What an export serialises and a server runs: ({name: (fn, example args)}, meta).

  forward(params, features (b, F)), forward(params, images (b, H, W, C) uint8) or
  forward(params, tokens, segments, mask (b, seq_len)) -> logits (b, classes), with the
  batch b symbolic.
  """
  (b,) = jax.export.symbolic_shape("b")
  arrays = [
    jax.ShapeDtypeStruct((b, *x.shape[1:]), x.dtype)
    for x in init_inputs(config)
    if hasattr(x, "shape")
  ]
  names = _INPUTS[_kind(config)]
  if len(names) == 1:
    meta = {"input": names[0], "input_shape": list(arrays[0].shape[1:])}
  else:
    meta = {
      "input": "text",
      "seq_len": config.data.seq_len,
      "bos_id": tokenizer.bos_id,
      "eos_id": tokenizer.eos_id,
      "pad_id": tokenizer.pad_id,
    }
  forward = lambda params, *arrays: _logits(model, params, dict(zip(names, arrays)), {})
  num_classes = max(jax.eval_shape(forward, params, *arrays).shape[-1], 2)
  meta["labels"] = list(sources.class_names(config.data.name) or map(str, range(num_classes)))
  return {"forward": (forward, (params, *arrays))}, meta


def eval_report(config, totals, prefix) -> dict:
  """The confusion matrix: in the report, printed, and drawn in `prefix`_confusion.png."""
  names = sources.class_names(config.data.name)  # None: classes by index
  metrics.save_confusion_matrix_png(totals["confusion"], prefix + "_confusion.png", names)
  print(metrics.format_confusion_matrix(totals["confusion"], names))
  print(f"confusion matrix: {prefix}_confusion.png")
  return {"confusion_matrix": metrics.confusion_matrix_json(totals["confusion"], names)}


TASK = base.Task(
  name="classify",
  make_data=make_data,
  init_inputs=init_inputs,
  tokens_per_example=tokens_per_example,
  loss_fn=loss_fn,
  eval_fn=eval_fn,
  finalize=finalize,
  batch_spec=batch_spec,
  outputs=outputs,
  eval_report=eval_report,
  serving=serving,
  served_as="classify",
  default_metric="accuracy",
)
