"""Sequence to sequence (translation): teacher forcing with label smoothing. Evaluation
gives the target tokens' loss, accuracy and perplexity (without smoothing) and, from
translations decoded by beam search, sacrebleu's BLEU and chrF against the raw references.

Task options (`config.task`): label_smoothing, beam_size (1 = greedy), length_penalty
(GNMT alpha), max_decode_len (0 = data.seq_len).
"""

from collections.abc import Sequence
import functools

import jax
import jax.numpy as jnp
import numpy as np

from bigflax import losses, metrics
from bigflax.data import batches, packing, pipeline
from bigflax.infer import translate
from bigflax.tasks import base


def make_data(config, tokenizer, split, *, process_index, process_count):
  return make_translation_batches(
    config.data, tokenizer, split, process_index=process_index, process_count=process_count
  )


def make_translation_batches(
  data_config, tokenizer, split: str, *, process_index: int, process_count: int
) -> batches.Batches:
  """Sentence-pair batches of one split, padded (or cut) to data.seq_len tokens:
  source ([bos] x [eos]) and source_mask; target_inputs ([bos] y), targets (y [eos]) and
  target_weights (1 at real target tokens: the teacher-forcing loss counts those).

  'train' is shuffled and endless; other splits are in file order, padded with
  weight-0 empty pairs to whole global batches, so `steps_per_epoch` (ceil(N / B)) steps
  see every pair once. `data_config` has name, data_dir, source_dir, source_lang,
  target_lang, seq_len, global_batch_size, seed.
  """
  pairs = pipeline.load_translation_pairs(
    data_config.name,
    split,
    data_config.source_lang,
    data_config.target_lang,
    data_config.data_dir,
    data_config.get("source_dir"),
  )
  arrays = _sentence_pairs(tokenizer, *pairs, data_config.seq_len)
  empty = _sentence_pairs(tokenizer, [""], [""], data_config.seq_len)
  blank = {k: v[0] for k, v in empty.items() if k != "target_weights"}  # weight 0
  # Training batches drop the columns that are padding in every row: a random batch of
  # Multi30k needs ~32 of 48 tokens. Other splits keep one shape (one decoder compile).
  return batches.split_batches(
    arrays,
    data_config,
    split,
    process_index=process_index,
    process_count=process_count,
    padding=blank,
    transform=trim_pair_padding if split == "train" else None,
  )


def _sentence_pairs(
  tokenizer, sources: Sequence[str], targets: Sequence[str], seq_len: int
) -> dict:
  source, source_mask = packing.frame_texts(tokenizer, sources, seq_len)
  target, target_mask = packing.frame_texts(tokenizer, targets, seq_len + 1)
  return {
    "source": source,
    "source_mask": source_mask,
    "target_inputs": target[:, :-1],
    "targets": target[:, 1:],
    "target_weights": target_mask[:, 1:].astype(np.float32),
  }


def trim_pair_padding(step: int, batch: dict, multiple: int = 8) -> dict:
  """A sentence-pair batch cut to its longest source and target, rounded up to a multiple
  of `multiple` (so a run compiles only a few shapes)."""
  del step

  def length(valid):
    return batches.bucket_width(valid, range(multiple, valid.shape[1] + 1, multiple))

  source, target = length(batch["source_mask"]), length(batch["target_weights"])
  return {k: v[:, :source] if k.startswith("source") else v[:, :target] for k, v in batch.items()}


def init_inputs(config):
  tokens = jnp.zeros((1, config.data.seq_len), jnp.int32)
  return (tokens, tokens, tokens + 1)


def tokens_per_example(config):
  return 2 * config.data.seq_len  # source and target


def _sums(model, params, batch, rngs, label_smoothing=0.0):
  logits = model.apply(
    {"params": params}, batch["source"], batch["target_inputs"], batch["source_mask"], rngs=rngs
  )
  weights = batch["target_weights"]
  nll = losses.cross_entropy(logits, batch["targets"])
  sums = {
    "nll": (nll * weights).sum(),
    "correct": (losses.correct(logits, batch["targets"]) * weights).sum(),
    "tokens": weights.sum(),
  }
  if label_smoothing:
    smoothed = losses.cross_entropy(logits, batch["targets"], label_smoothing)
    sums["smoothed"] = (smoothed * weights).sum()
  return sums


def loss_fn(model, params, batch, rng, label_smoothing=0.0):
  mean = metrics.means(_sums(model, params, batch, {"dropout": rng}, label_smoothing), "tokens")
  loss = mean.get("smoothed", mean["nll"])
  return loss, {
    "loss": loss,
    "nll": mean["nll"],
    "perplexity": jnp.exp(mean["nll"]),
    "accuracy": mean["correct"],
  }


def eval_fn(model, params, batch):
  return _sums(model, params, batch, {})


def finalize(totals):
  mean = metrics.means(totals, "tokens")
  nll = float(mean["nll"])
  return {"loss": nll, "perplexity": metrics.perplexity(nll), "accuracy": float(mean["correct"])}


def predict_fn(model, config, tokenizer, params, batch):
  """Translations of the batch's sources: (B, max_decode_len) token ids."""
  return translate.translate(
    model,
    params,
    batch["source"],
    batch["source_mask"],
    beam_size=config.task.beam_size,
    alpha=config.task.length_penalty,
    max_len=config.task.max_decode_len or config.data.seq_len,
    bos_id=tokenizer.bos_id,
    eos_id=tokenizer.eos_id,
    pad_id=tokenizer.pad_id,
    vocab_size=tokenizer.vocab_size,
  )


def prediction_metrics(config, model, tokenizer, split):
  """Beam-searched translations of the eval batches, scored by BLEU and chrF."""
  return (
    functools.partial(predict_fn, model, config, tokenizer),
    functools.partial(finalize_predictions, config, tokenizer, split),
  )


def sample(config, model, tokenizer, params, sentences, options):
  """Prints each sentence translated by the run's decoder (config.task.beam_size beams)."""
  del options  # beam search is deterministic: no sampling options
  frame = dict(bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
  source, source_mask = packing.frame_sentences(
    tokenizer.encode_batch(sentences), config.data.seq_len, **frame
  )
  batch = {"source": jnp.asarray(source), "source_mask": jnp.asarray(source_mask)}
  predictions = predict_fn(model, config, tokenizer, params, batch)
  for sentence, row in zip(sentences, jax.device_get(predictions)):
    if jax.process_index() == 0:
      print(f"--- translation ({sentence!r}) ---\n{detokenize(tokenizer, row.tolist())}")


def after_training(config, model, tokenizer, params):
  sample(config, model, tokenizer, params, config.sample.prompts, {})


def serving(config, model, params, tokenizer):
  """What an export serialises and a server runs: ({name: (fn, example args)}, meta).

  translate(params, source, source_mask (b, seq_len)) -> target ids (b, max_decode_len):
  the encoder, then the run's beam search over the decoder's KV cache, as one program (no
  host round trip per decoded token). The batch b is symbolic.
  """
  (b,) = jax.export.symbolic_shape("b")
  sources = jax.ShapeDtypeStruct((b, config.data.seq_len), jnp.int32)
  translate_fn = lambda params, source, source_mask: predict_fn(
    model, config, tokenizer, params, {"source": source, "source_mask": source_mask}
  )
  meta = {
    "seq_len": config.data.seq_len,
    "bos_id": tokenizer.bos_id,
    "eos_id": tokenizer.eos_id,
    "pad_id": tokenizer.pad_id,
    "beam_size": config.task.beam_size,
  }
  return {"translate": (translate_fn, (params, sources, sources))}, meta


@functools.lru_cache(maxsize=4)
def references(name, split, source_lang, target_lang, data_dir, source_dir):
  return pipeline.load_translation_pairs(
    name, split, source_lang, target_lang, data_dir, source_dir
  )


def finalize_predictions(config, tokenizer, split, predictions: np.ndarray) -> dict:
  """BLEU and chrF of the decoded predictions (rows in split order; padding rows past
  the split's end are dropped) against the split's raw target sentences."""
  d = config.data
  _, targets = references(
    d.name, split, d.source_lang, d.target_lang, d.data_dir, d.get("source_dir")
  )
  hypotheses = [detokenize(tokenizer, row) for row in predictions[: len(targets)]]
  targets = targets[: len(hypotheses)]  # an evaluation limited by train.eval_steps
  return {"bleu": metrics.bleu(hypotheses, targets), "chrf": metrics.chrf(hypotheses, targets)}


def detokenize(tokenizer, ids) -> str:
  """Text of the ids up to the first EOS."""
  ids = list(ids)
  if tokenizer.eos_id in ids:
    ids = ids[: ids.index(tokenizer.eos_id)]
  return tokenizer.decode(ids)


TASK = base.Task(
  name="seq2seq",
  make_data=make_data,
  init_inputs=init_inputs,
  tokens_per_example=tokens_per_example,
  loss_fn=loss_fn,
  eval_fn=eval_fn,
  finalize=finalize,
  loss_options=lambda config: {"label_smoothing": config.task.label_smoothing},
  prediction_metrics=prediction_metrics,
  sample=sample,
  after_training=after_training,
  serving=serving,
  served_as="seq2seq",
)
