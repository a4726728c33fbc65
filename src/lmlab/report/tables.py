"""Markdown tables built from the JSON files runs wrote."""

from __future__ import annotations


def perplexity_table(finals: dict[str, dict]) -> str:
    """One row per trained model: parameters, best epoch, validation/test perplexity, wall time."""
    lines = [
        "| model | impl | parameters | without embeddings | epochs (best) | valid ppl | test ppl | train+valid time |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, f in finals.items():
        minutes = f["train_valid_seconds"] / 60
        lines.append(
            f"| {name} | {f['config']['model']['impl']} | {f['parameters']['total']:,} | "
            f"{f['parameters']['non_embedding']:,} | {f['epochs']} ({f['best_epoch']}) | {f['valid_ppl']:.2f} | "
            f"{f['test_ppl']:.2f} | {minutes:.1f} min |"
        )
    return "\n".join(lines)
