"""Supervised fine-tuning of a language model on (prompt, answer) pairs: the LM loss on
answer tokens only (prompt tokens are context, not targets). Metrics: answer-token loss,
perplexity, accuracy and precision/recall/F1 over the vocabulary."""

from bigflax.data import pipeline
from bigflax.tasks.lm import eval_fn, finalize, init_inputs, loss_fn, outputs, tokens_per_example


def make_data(config, tokenizer, split, *, process_index, process_count):
  return pipeline.make_sft_batches(config.data, tokenizer, split,
                                   process_index=process_index, process_count=process_count)


__all__ = ["make_data", "init_inputs", "tokens_per_example", "loss_fn", "eval_fn",
           "finalize", "outputs"]
