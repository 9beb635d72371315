"""Weights in and out of other frameworks' formats (`hf`: Hugging Face safetensors)."""
