"""Figures for run directories (matplotlib, headless)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_curves(rows: list[dict], path: Path, title: str) -> None:
    """Train and validation perplexity per epoch (log scale), with the learning rate on a second axis."""
    epochs = [r["epoch"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    ax.plot(epochs, [r["train_ppl"] for r in rows], "o-", label="train")
    ax.plot(epochs, [r["valid_ppl"] for r in rows], "s-", label="validation")
    averaged = [r for r in rows if "valid_ppl_raw" in r]
    if averaged:  # weight averaging: the validation line is the better of the two; show the raw weights too
        ax.plot([r["epoch"] for r in averaged], [r["valid_ppl_raw"] for r in averaged], "x--",
                label="validation, raw weights")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("perplexity (per word, log scale)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if all("lr" in r for r in rows):
        lr_ax = ax.twinx()
        lr_ax.plot(epochs, [r["lr"] for r in rows], ":", color="grey", label="learning rate")
        lr_ax.set_ylabel("learning rate (end of epoch)", color="grey")
        lr_ax.set_yscale("log" if all(r["lr"] > 0 for r in rows) else "linear")
    best = min(rows, key=lambda r: r["valid_ppl"])
    if math.isfinite(best["valid_ppl"]):
        ax.annotate(f"best {best['valid_ppl']:.1f}", (best["epoch"], best["valid_ppl"]),
                    textcoords="offset points", xytext=(0, -14), ha="center", fontsize=8)
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_cross_domain(rows: list[dict], path: Path) -> None:
    """Grouped bars: in-vocabulary perplexity per corpus (groups) and model (bars), with OOV rates as labels."""
    corpora = list(dict.fromkeys(r["corpus"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(7.2, 4.0), dpi=120)
    for k, model in enumerate(models):
        values = {r["corpus"]: r["ppl_in_vocab"] for r in rows if r["model"] == model}
        xs = [i + (k - (len(models) - 1) / 2) * width for i in range(len(corpora))]
        ax.bar(xs, [values.get(c, float("nan")) for c in corpora], width, label=model)
    oov = {r["corpus"]: r["oov_rate"] for r in rows}
    ax.set_xticks(range(len(corpora)), [f"{c}\nOOV {oov[c]:.1%}" for c in corpora], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("perplexity over in-vocabulary targets (log)")
    ax.set_title("Models trained on PTB, evaluated across domains")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_finetune_curves(rows: list[dict], path: Path, title: str) -> None:
    """Training loss per step, and domain-validation / general loss at each evaluation (step 0 = before)."""
    train = [r for r in rows if r["kind"] == "train"]
    evals = [r for r in rows if r["kind"] == "eval"]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    if train:
        ax.plot([r["step"] for r in train], [r["train_loss"] for r in train], "-", alpha=0.5, label="train (domain)")
    ax.plot([r["step"] for r in evals], [r["valid_loss"] for r in evals], "s-", label="validation (domain)")
    if evals and "general_loss" in evals[0]:
        ax.plot([r["step"] for r in evals], [r["general_loss"] for r in evals], "o-", label="general text")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats per token)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_dpo_curves(rows: list[dict], path: Path, title: str) -> None:
    """DPO loss, implicit-reward accuracy and reward margin per step (TRL's training log)."""
    steps = [r["step"] for r in rows]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9.0, 3.6), dpi=120)
    ax.plot(steps, [r["loss"] for r in rows], "-", label="DPO loss")
    ax.axhline(math.log(2), color="grey", ls=":", label="log 2 (start)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(True, alpha=0.3)
    ax2.plot(steps, [r.get("rewards/accuracies", float("nan")) for r in rows], "-", label="reward accuracy")
    ax2.set_ylabel("implicit-reward accuracy (batch)")
    ax2.set_xlabel("optimizer step")
    margin_ax = ax2.twinx()
    margin_ax.plot(steps, [r.get("rewards/margins", float("nan")) for r in rows], "-", color="C1", label="reward margin")
    margin_ax.set_ylabel("reward margin (beta x log-ratio)", color="C1")
    ax2.grid(True, alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_rl_curves(rows: list[dict], path: Path, title: str) -> None:
    """GRPO's mean reward and KL from the reference per step (TRL's training log)."""
    steps = [r.get("step", i + 1) for i, r in enumerate(rows)]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9.0, 3.6), dpi=120)
    ax.plot(steps, [r["reward"] for r in rows], "-", label="mean reward (verdict correct)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("reward")
    ax.set_ylim(-0.02, 1.02)
    ax.legend()
    ax.grid(True, alpha=0.3)
    ax2.plot(steps, [r.get("kl", float("nan")) for r in rows], "-", color="C1")
    ax2.set_xlabel("optimizer step")
    ax2.set_ylabel("KL from the reference (per token)")
    ax2.grid(True, alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_size_curves(sizes: dict[str, tuple], path: Path) -> None:
    """Domain-validation and general perplexity against steps, one line per training-set size (``sizes``: name ->
    (FinetuneFinal, metrics rows))."""
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9.0, 3.6), dpi=120)
    for name, (final, rows) in sizes.items():
        evals = [r for r in rows if r["kind"] == "eval"]
        label = f"{final.train_docs} docs ({final.epochs:.2f} epochs)"
        ax.plot([r["step"] for r in evals], [r["valid_ppl"] for r in evals], "o-", label=label)
        if evals and "general_ppl" in evals[0]:
            ax2.plot([r["step"] for r in evals], [r["general_ppl"] for r in evals], "o-", label=label)
    ax.set_title("domain (PubMed validation)", fontsize=9)
    ax2.set_title("general text (forgetting)", fontsize=9)
    for a in (ax, ax2):
        a.set_xlabel("optimizer step")
        a.set_ylabel("perplexity (per token)")
        a.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
