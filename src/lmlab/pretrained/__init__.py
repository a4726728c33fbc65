"""Pretrained Hugging Face models: where they come from (hub, directory, GGUF, packaged), domain data tokenised
and packed for them, LoRA, preference pairs, and one module per evaluation task of the before/after harness
(perplexity, pubmedqa, cloze, completion)."""
