"""Data: tokenizers, TFDS text datasets, corpora prepared into shards, step-indexed batches."""
