"""lmlab: train, compare, sample, fine-tune and align language models, with an honest report."""

__version__ = "0.1.0"
