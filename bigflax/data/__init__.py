"""Data: tokenizers, TFDS text datasets and step-indexed LM batches."""
