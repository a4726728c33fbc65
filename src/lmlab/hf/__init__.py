"""Pretrained Hugging Face models: where they come from (hub, directory, GGUF, packaged), domain data
tokenised and packed for them, and the before/after evaluation harness."""
