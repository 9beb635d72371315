"""Causal language modelling: predict token t+1 from tokens <= t.

A batch may carry `weights` (1 where a target counts): supervised fine-tuning (tasks/sft.py)
trains on answer tokens only with this very loss. Evaluation reports loss, perplexity,
accuracy and precision/recall/F1 over the vocabulary (tokens seen or predicted)."""

import functools

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

from bigflax import configs, losses, metrics
from bigflax.data import batches, mixture, packing, pipeline, shards, tokenizers
from bigflax.infer import decode
from bigflax.tasks import base


def make_data(config, tokenizer, split, *, process_index, process_count):
  """Documents tokenized and packed into windows; the batch of step s is fixed by s."""
  return make_lm_batches(
    config.data, tokenizer, split, process_index=process_index, process_count=process_count
  )


def make_lm_batches(
  data_config, tokenizer, split: str, *, process_index: int, process_count: int
) -> batches.Batches:
  """LM batches of one split; 'train' is shuffled, other splits are not.

  `data_config` has name, data_dir, source_dir, seq_len, global_batch_size, seed; or,
  for corpora tokenized by `bigflax prepare`, corpora, mixture and prepared_dir. With
  `document_mask` the batches also carry segment_ids and positions (`document_fields`).
  """
  fields = document_fields(data_config, tokenizer.eos_id)
  if data_config.get("corpora"):
    return prepared_lm_batches(
      data_config,
      tokenizer,
      split,
      process_index=process_index,
      process_count=process_count,
      transform=fields,
    )
  windows = pipeline.packed_windows(data_config, tokenizer, split, data_config.seq_len + 1)
  return lm_batches(
    windows,
    data_config.global_batch_size,
    seed=data_config.seed,
    shuffle=split == "train",
    process_index=process_index,
    process_count=process_count,
    transform=fields,
  )


def document_fields(data_config, eos_id: int):
  """None (GPT-2's windows, which attend across documents), or under data.document_mask
  a batch transform adding segment_ids and positions, so that attention stays within each
  document; data.skip_document_start also zeroes the weight of each document's first
  target (predicted from the eos alone)."""
  if not data_config.get("document_mask"):
    if data_config.get("skip_document_start"):
      raise ValueError("data.skip_document_start needs data.document_mask=True.")
    return None

  def add_fields(step, batch):
    del step
    batch = dict(batch, **packing.document_segments(batch["inputs"], eos_id))
    if data_config.get("skip_document_start"):
      batch["weights"] = (batch["inputs"] != eos_id).astype(np.float32)
    return batch

  return add_fields


def prepared_lm_batches(
  data_config, tokenizer, split: str, *, process_index: int, process_count: int, transform=None
) -> mixture.MixtureBatches:
  """LM batches of a mixture of prepared corpora, windows read from disk by index."""
  shards.check_config(data_config)
  made_with = {"tokenizer": tokenizers.fingerprint(tokenizer), "window": data_config.seq_len + 1}
  weights = shards.mixture_weights(data_config)
  windows = {
    name: shards.Windows(data_config.prepared_dir, name, split, made_with)
    for name, weight in weights.items()
    if weight > 0
  }
  return mixture.MixtureBatches(
    windows,
    weights,
    data_config.global_batch_size,
    seed=data_config.seed,
    shuffle=split == "train",
    process_index=process_index,
    process_count=process_count,
    transform=transform,
  )


def lm_batches(windows: np.ndarray, global_batch_size: int, **kwargs) -> batches.Batches:
  """{'inputs': w[:-1], 'targets': w[1:]} batches of packed windows (views, no copy);
  `kwargs` are Batches'."""
  return batches.Batches(
    {"inputs": windows[:, :-1], "targets": windows[:, 1:]}, global_batch_size, **kwargs
  )


def unigram_entropy(windows: np.ndarray, vocab_size: int) -> float:
  """Nats/token of the tokens' unigram distribution: the loss to beat."""
  p = np.bincount(windows.ravel(), minlength=vocab_size) / windows.size
  return float(-np.sum(p[p > 0] * np.log(p[p > 0])))


def init_inputs(config):
  return (jnp.zeros((1, config.data.seq_len), jnp.int32),)


def tokens_per_example(config):
  return config.data.seq_len


def batch_spec(config):
  """Shapes of a global batch, for planning a run without its data."""
  shape = (config.data.global_batch_size, config.data.seq_len)
  ints = jax.ShapeDtypeStruct(shape, jnp.int32)
  spec = {"inputs": ints, "targets": ints}
  if config.data.get("document_mask"):
    spec.update(segment_ids=ints, positions=ints)
  if config.data.get("skip_document_start"):
    spec["weights"] = jax.ShapeDtypeStruct(shape, jnp.float32)
  return spec


def outputs(model, params, batch, rngs):
  """(logits, labels, weights) of every position: what a distillation compares. Packed
  batches' segment_ids and positions keep documents apart."""
  logits = model.apply(
    {"params": params},
    batch["inputs"],
    positions=batch.get("positions"),
    segment_ids=batch.get("segment_ids"),
    rngs=rngs,
  )
  weights = batch.get("weights", jnp.ones(batch["targets"].shape, jnp.float32))
  return logits, batch["targets"], weights


def loss_fn(model, params, batch, rng):
  logits, targets, weights = outputs(model, params, batch, {"dropout": rng})
  count = jnp.maximum(weights.sum(), 1.0)
  loss = (losses.cross_entropy(logits, targets) * weights).sum() / count
  correct = losses.correct(jax.lax.stop_gradient(logits), targets)
  return loss, {
    "loss": loss,
    "perplexity": jnp.exp(loss),
    "accuracy": (correct * weights).sum() / count,
  }


def eval_fn(model, params, batch):
  logits, targets, weights = outputs(model, params, batch, {})
  return {
    "loss": (losses.cross_entropy(logits, targets) * weights).sum(),
    "correct": (losses.correct(logits, targets) * weights).sum(),
    "tokens": weights.sum(),
    **metrics.class_count_sums(targets, logits.argmax(-1), logits.shape[-1], weights),
  }


def finalize(totals: dict) -> dict:
  loss = float(totals["loss"] / totals["tokens"])
  return {
    "loss": loss,
    "perplexity": metrics.perplexity(loss),
    "accuracy": float(totals["correct"] / totals["tokens"]),
    **metrics.averaged_metrics(
      totals["true_positives"], totals["support"], totals["predicted"], present_only=True
    ),
  }


def data_summary(config, tokenizer, train_data) -> str:
  del config
  if not hasattr(train_data, "arrays"):  # prepared corpora: too large to count at start
    return train_data.summary
  baseline = unigram_entropy(train_data.arrays["targets"], tokenizer.vocab_size)
  return f"unigram baseline loss {baseline:.3f} nats/token"


def sample(config, model, tokenizer, params, prompts, options):
  """Prints `options['num_samples']` continuations of each prompt, decoded with a KV
  cache; every process decodes, process 0 prints."""
  s = dict(config.sample, **{k: v for k, v in options.items() if v is not None})
  decode_model = model.clone(decode=True)
  for i, prompt in enumerate(prompts):
    ids = [tokenizer.eos_id] + tokenizer.encode(prompt)  # eos marks a document start
    if len(ids) + s["max_new_tokens"] > model.max_len:
      raise configs.UsageError(
        f"The prompt ({len(ids)} tokens) plus --max_new_tokens={s['max_new_tokens']} "
        f"exceeds the model's context (model.max_len={model.max_len}); shorten one."
      )
    tokens = decode.generate(
      decode_model,
      params,
      jnp.asarray([ids] * s["num_samples"]),
      jax.random.key(s["seed"] + i),
      max_new_tokens=s["max_new_tokens"],
      temperature=s["temperature"],
      top_k=s["top_k"],
      top_p=s["top_p"],
      vocab_size=tokenizer.vocab_size,
    )
    tokens = multihost_utils.process_allgather(tokens, tiled=True)
    for row in tokens if jax.process_index() == 0 else []:
      print(f"--- sample ({prompt!r}) ---\n{prompt}{tokenizer.decode(row.tolist())}")


def after_training(config, model, tokenizer, params):
  """A finished run ends with samples of config.sample.prompts (answers after SFT), as
  long as fits the context whatever config.sample asks."""
  longest = max(len(tokenizer.encode(p)) for p in config.sample.prompts) + 1
  sample(
    config,
    model,
    tokenizer,
    params,
    config.sample.prompts,
    {
      "num_samples": 1,
      "max_new_tokens": min(config.sample.max_new_tokens, model.max_len - longest),
    },
  )


def serving(config, model, params, tokenizer):
  """What an export serialises and a server runs: ({name: (fn, example args)}, meta).

  prefill(params, tokens (b, t), lengths (b,)) -> (logits (b, V), state) for left-padded
  prompts, decode_step(params, state, tokens (b,)) -> (logits, state) with the KV cache in
  `state`, and sample(logits, seeds, step, temperature, top_k, top_p) -> tokens (b,). The
  batch b and the prompt length t are symbolic.
  """
  del config
  decoder = model.clone(decode=True)
  prefill = functools.partial(decode.prefill, decoder)
  ints = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32)
  floats = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
  b, t = jax.export.symbolic_shape("b, t", constraints=(f"t <= {model.max_len}",))
  prefill_args = (params, ints(b, t), ints(b))
  _, state = jax.eval_shape(prefill, *prefill_args)
  (b,) = jax.export.symbolic_shape("b")  # a decode step has no prompt length
  state = jax.tree.map(
    lambda s: jax.ShapeDtypeStruct(tuple(d if isinstance(d, int) else b for d in s.shape), s.dtype),
    state,
  )
  functions = {
    "prefill": (prefill, prefill_args),
    "decode_step": (functools.partial(decode.decode_step, decoder), (params, state, ints(b))),
    "sample": (
      functools.partial(decode.sample_rows, vocab_size=tokenizer.vocab_size),
      (floats(b, model.vocab_size), ints(b), ints(), floats(b), ints(b), floats(b)),
    ),
  }
  # A prompt starts after an eos, as documents do in training.
  meta = {
    "max_len": model.max_len,
    "vocab_size": tokenizer.vocab_size,
    "eos_id": tokenizer.eos_id,
    "pad_id": tokenizer.pad_id,
    "prompt_prefix": [tokenizer.eos_id],
  }
  return functions, meta


TASK = base.Task(
  name="lm",
  make_data=make_data,
  init_inputs=init_inputs,
  tokens_per_example=tokens_per_example,
  loss_fn=loss_fn,
  eval_fn=eval_fn,
  finalize=finalize,
  batch_spec=batch_spec,
  outputs=outputs,
  data_summary=data_summary,
  sample=sample,
  after_training=after_training,
  serving=serving,
  served_as="lm",
)
