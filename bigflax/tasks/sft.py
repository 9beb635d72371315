"""Supervised fine-tuning of a language model on (prompt, answer) pairs: the LM loss on
answer tokens only (prompt tokens are context, not targets). Metrics: answer-token loss,
perplexity, accuracy and precision/recall/F1 over the vocabulary."""

import dataclasses

import jax
import jax.numpy as jnp

from bigflax.data import pipeline
from bigflax.tasks import lm


def make_data(config, tokenizer, split, *, process_index, process_count):
  return pipeline.make_sft_batches(config.data, tokenizer, split,
                                   process_index=process_index, process_count=process_count)


def batch_spec(config):
  shape = (config.data.global_batch_size, config.data.seq_len)
  ints = jax.ShapeDtypeStruct(shape, jnp.int32)
  return dict(lm.batch_spec(config), weights=jax.ShapeDtypeStruct(shape, jnp.float32),
              segment_ids=ints, positions=ints)


# Everything else is the language model's: examples are framed [eos] prompt answer [eos],
# as lm's serving frames prompts, so a served answer ends at its eos.
TASK = dataclasses.replace(lm.TASK, name="sft", make_data=make_data, batch_spec=batch_spec,
                           data_summary=None)
