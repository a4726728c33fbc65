"""What ``lmlab dpo`` and ``lmlab rl`` do around a TRL trainer: train, keep its per-step log in lmlab's metrics
files, merge LoRA adapters and save a plain ``from_pretrained`` directory."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from lmlab import results
from lmlab.pretrained import registry
from lmlab.training.logger import MetricsLogger


def train_and_save(trainer, tokenizer, out: Path, lora: bool, tensorboard: bool, logged_key: str):
    """(the trained model in eval mode, TRL's per-step rows that hold ``logged_key``, training seconds)."""
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    history = [dict(row, kind="train") for row in trainer.state.log_history if logged_key in row]
    metrics = MetricsLogger(out, tensorboard)
    for row in history:
        metrics.log(row, row.get("step", 0), prefix="train/")
    metrics.close()
    trained = trainer.model.merge_and_unload() if lora else trainer.model
    trained.eval()
    registry.save(trained, tokenizer, out / results.MODEL_DIR)
    shutil.rmtree(out / "trainer", ignore_errors=True)  # TRL's output_dir: nothing is saved there (save_strategy="no")
    return trained, history, seconds
