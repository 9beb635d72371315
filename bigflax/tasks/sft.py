"""Supervised fine-tuning of a language model on (prompt, answer) pairs: the LM loss on
answer tokens only (prompt tokens are context, not targets). Metrics: answer-token loss,
perplexity, accuracy and precision/recall/F1 over the vocabulary."""

from collections.abc import Sequence
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from bigflax.data import batches, packing, pipeline
from bigflax.tasks import lm


def make_data(config, tokenizer, split, *, process_index, process_count):
  return make_sft_batches(
    config.data, tokenizer, split, process_index=process_index, process_count=process_count
  )


def frame_prompt_answers(
  pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
  seq_len: int,
  *,
  eos_id: int,
  pad_id: int,
) -> tuple[np.ndarray, np.ndarray]:
  """[eos] prompt answer [eos] + padding as int32 windows [N, seq_len + 1], and float32
  weights [N, seq_len] that are 1 where the target (window[1:]) is an answer token or the
  closing eos: the loss of supervised fine-tuning. Cut at seq_len + 1 tokens."""
  windows = np.full((len(pairs), seq_len + 1), pad_id, np.int32)
  weights = np.zeros((len(pairs), seq_len), np.float32)
  for i, (prompt, answer) in enumerate(pairs):
    ids = ([eos_id] + list(prompt) + list(answer) + [eos_id])[: seq_len + 1]
    windows[i, : len(ids)] = ids
    weights[i, len(prompt) : len(ids) - 1] = 1.0
  return windows, weights


def make_sft_batches(
  data_config, tokenizer, split: str, *, process_index: int, process_count: int
) -> batches.Batches:
  """Prompt/answer batches: inputs, targets and weights (1 on answer tokens).

  On 'train', `data_config.replay_name` (a second prompt/answer dataset, e.g. the one the
  model was fine-tuned on before) is mixed in to make up `replay_fraction` of the
  examples, drawn with a fixed seed: continued training on new data that keeps the old
  skills. Other splits are in id order, padded with weight-0 rows to whole batches.
  Examples are packed several to a row (`packing.pack_examples`), kept apart by
  segment_ids and positions.
  """
  load = lambda name, split: pipeline.load_prompt_answers(
    name,
    split,
    data_config.data_dir,
    data_config.get("source_dir") if name == data_config.name else None,
  )
  pairs = load(data_config.name, split)
  replay_name, fraction = data_config.get("replay_name"), data_config.get("replay_fraction", 0)
  if split == "train" and replay_name and fraction:
    replay = load(replay_name, "train")
    count = round(len(pairs) * fraction / (1 - fraction))
    rng = np.random.default_rng(data_config.seed)
    pairs += [replay[i] for i in rng.choice(len(replay), count, replace=count > len(replay))]
  if not pairs:
    raise ValueError(f"data.name={data_config.name!r} has no {split} examples.")
  encoded = [(tokenizer.encode(p), tokenizer.encode(a)) for p, a in pairs]
  windows, weights = frame_prompt_answers(
    encoded, data_config.seq_len, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id
  )
  arrays = packing.pack_examples(windows, weights, tokenizer.pad_id)
  return batches.split_batches(
    arrays,
    data_config,
    split,
    process_index=process_index,
    process_count=process_count,
    padding={"inputs": tokenizer.pad_id, "targets": tokenizer.pad_id},
  )


def batch_spec(config):
  shape = (config.data.global_batch_size, config.data.seq_len)
  ints = jax.ShapeDtypeStruct(shape, jnp.int32)
  return dict(
    lm.batch_spec(config),
    weights=jax.ShapeDtypeStruct(shape, jnp.float32),
    segment_ids=ints,
    positions=ints,
  )


# Everything else is the language model's: examples are framed [eos] prompt answer [eos],
# as lm's serving frames prompts, so a served answer ends at its eos.
TASK = dataclasses.replace(
  lm.TASK, name="sft", make_data=make_data, batch_spec=batch_spec, data_summary=None
)
