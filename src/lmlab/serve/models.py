"""The models a page serves, loaded once: PTB runs and pretrained models side by side.

``ModelSet`` answers the page's two questions with lmlab's own functions: sampling (``lmlab sample``'s code, so
the same settings and seed give the same text) and surprisal (:func:`lmlab.surprisal.score`). One lock: torch
work from two requests at once would only fight over the CPU's threads.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from lmlab.data.eval_texts import load_eval_text
from lmlab.errors import LmlabError
from lmlab.generation import SamplingSettings
from lmlab.recipes import sample
from lmlab.surprisal import MAX_WORDS, Pretrained, score
from lmlab.trained import TrainedModel, is_run, load_trained

log = logging.getLogger("lmlab")
CORPORA = ("ptb:test", "wikitext2:test", "wikitext2-raw", "shakespeare", "pubmed:20", "pubmedqa")


class ModelSet:
    def __init__(self, specs: list[str]):
        if not specs:
            raise LmlabError("no models to serve: give PTB run directories or pretrained model names")
        self.models: dict[str, TrainedModel | Pretrained] = {}
        for spec in specs:
            if sample.is_pretrained(spec):
                name, model, tokenizer = sample.load_pretrained(spec)
                entry = Pretrained(name, model, tokenizer)
            else:
                entry = load_trained(Path(spec), impl="scratch")  # generation needs the scratch model's cache
            if entry.name in self.models:
                entry.name = f"{entry.name} ({spec})"
            self.models[entry.name] = entry
            log.info("serving %s", entry.name)
        words = [m for m in self.models.values() if not isinstance(m, Pretrained)]
        self.judges = sample.fluency_judges(words)  # as lmlab sample: the best other word-level model
        self.lock = threading.Lock()

    def describe(self) -> list[dict]:
        return [{"name": name, "kind": "pretrained" if isinstance(m, Pretrained) else "word-level",
                 "vocab": len(m.tokenizer if isinstance(m, Pretrained) else m.vocab),
                 "params": sum(p.numel() for p in m.model.parameters())} for name, m in self.models.items()]

    def get(self, name: str):
        if name not in self.models:
            raise LmlabError(f"unknown model '{name}': choose one of {', '.join(self.models)}")
        return self.models[name]

    def sample(self, names: list[str], prompt: str, settings: SamplingSettings, seed: int,
               ban_unk: bool = False) -> list[dict]:
        """One sample per model, each with lmlab sample's text statistics."""
        rows = []
        with self.lock:
            for name in names:
                m = self.get(name)
                if isinstance(m, Pretrained):
                    rows += sample.pretrained_rows(name, m.model, m.tokenizer, prompt, [settings], seed, 1)
                else:
                    rows += sample.word_rows(m, prompt, [settings], seed, 1, ban_unk, self.judges.get(name))
        return rows

    def score(self, name: str, text: str | None = None, corpus: str | None = None,
              max_words: int = MAX_WORDS) -> dict:
        """Surprisal of a pasted text (raw) or of the start of a known corpus."""
        kind = "raw"
        if corpus:
            loaded = load_eval_text(corpus)
            text, kind = loaded.text, loaded.kind
        with self.lock:
            return score(self.get(name), text or "", kind, max_words)


def study_models(study: Path) -> list[str]:
    """The PTB runs and fine-tuned models a study directory holds."""
    runs = sorted(str(d) for d in (study / "ptb").glob("*") if is_run(d))
    tuned = sorted(str(d.parent / "model") for d in (study / "finetune").glob("*/*/final.json")
                   if (d.parent / "model" / "config.json").is_file())
    return runs + tuned


def last_study(root: Path = Path(".")) -> Path | None:
    """The most recently written study directory (it holds study.log) under ``root`` or ``root/runs``."""
    found = [p.parent for base in (root, root / "runs") if base.is_dir() for p in base.glob("*/study.log")]
    return max(found, key=lambda p: (p / "study.log").stat().st_mtime) if found else None
