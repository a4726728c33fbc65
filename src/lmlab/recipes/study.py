"""lmlab run: the study pipeline. It only calls the other recipes.

Today's steps: train the RNN, LSTM and Transformer on PTB with one preset, then print their perplexity table.
A step whose final.json exists with the same config is skipped; an interrupted one resumes from last.pt.
"""

from __future__ import annotations

from pathlib import Path

from lmlab import rundir
from lmlab.config import PRESETS, load_preset
from lmlab.errors import LmlabError
from lmlab.recipes import train
from lmlab.report.tables import perplexity_table

MODELS = ("rnn", "lstm", "transformer")


def run(preset: str, out: Path) -> dict[str, dict]:
    if preset not in PRESETS:
        raise LmlabError(f"unknown preset '{preset}': choose one of {', '.join(PRESETS)}")
    finals = {}
    for model in MODELS:
        run_dir = Path(out) / "ptb" / model
        final_path = run_dir / rundir.FINAL
        expected = dict(load_preset(model, preset), preset=preset)
        if final_path.is_file():
            final = rundir.read_json(final_path)
            if final["config"] != expected:
                raise LmlabError(f"{run_dir} holds a {model} run with another config: remove it or use another --out")
            print(f"[{model}] done already: {final_path}")
        else:
            resume = (run_dir / rundir.LAST).is_file()
            print(f"[{model}] {'resuming' if resume else 'training'} ({preset} preset) in {run_dir}", flush=True)
            final = train.run(model, preset, run_dir, resume=resume)
        finals[model] = final
    table = perplexity_table(finals)
    (Path(out) / "ptb_table.md").write_text(table + "\n", encoding="utf-8")
    print("\nPenn Treebank, word-level perplexity (10k vocabulary; <eos> counted; best-validation checkpoint)\n")
    print(table)
    return finals
