"""Report sections for the pretrained model: fine-tuning (before/after, curves, data size) and DPO.

Like the rest of the report, every number is read from a result file the study wrote (lmlab.results), and
the modes, data sizes and pair sources are those the study config lists.
"""

from __future__ import annotations

from lmlab import results
from lmlab.config import StudyConfig
from lmlab.report.plots import plot_size_curves
from lmlab.report.tables import finetune_table, pubmedqa_table
from lmlab.results import (
    FinetuneFinal,
    ModelEvaluation,
    PreferenceMeasurement,
    StudyLayout,
)
from lmlab.training import rundir

MODE_NAMES = {"full": "full", "lora": "LoRA"}

DPO_ROWS = (("preference accuracy (summed log-lik.)", "preference_acc", "{:.3f}"),
            ("preference accuracy (per token)", "preference_acc_normalized", "{:.3f}"),
            ("mean log-likelihood margin (nats)", "logp_margin", "{:.2f}"),
            ("implicit-reward accuracy", "reward_acc", "{:.3f}"),
            ("implicit-reward margin", "reward_margin", "{:.4f}"),
            ("KL from reference (nats/token)", "kl_from_reference", "{:.5f}"),
            ("PubMedQA accuracy", "pubmedqa_acc", "{:.3f}"))


def finetune_results(layout: StudyLayout, config: StudyConfig) -> dict:
    """The study's fine-tuning results, as its config lists them (modes, data sizes)."""
    evals = {"before": results.read_if_present(layout.base_evaluation, ModelEvaluation)}
    finals, sizes = {}, {}
    for mode in config.finetune.modes:
        evals[mode] = results.read_if_present(layout.finetune_run(mode) / results.AFTER, ModelEvaluation)
        finals[mode] = results.read_if_present(layout.finetune_run(mode) / rundir.FINAL, FinetuneFinal)
    for docs in config.finetune.sizes.train_docs:
        run_dir = layout.size_run(docs)
        final = results.read_if_present(run_dir / rundir.FINAL, FinetuneFinal)
        if final:
            sizes[run_dir.name] = (final, rundir.read_jsonl(run_dir / rundir.METRICS))
    return {"evals": {k: v for k, v in evals.items() if v}, "finals": {k: v for k, v in finals.items() if v},
            "sizes": sizes}


def finetune_section(layout: StudyLayout, r: dict) -> list[str]:
    if not r["finals"] and not r["evals"]:
        return []
    parts = ["## Fine-tuning a pretrained model on PubMed", ""]
    first = next(iter(r["finals"].values()), None)
    if first:
        parts += [f"Model `{first.model}` ({first.params_total / 1e6:.1f}M parameters), domain corpus "
                  f"`{first.config['data']['dataset']}` (document-level splits; PubMedQA test ids never trained on). "
                  "Token perplexities are per BPE token of the model's tokenizer; word and byte perplexities divide "
                  "the same total NLL by the whitespace words / UTF-8 bytes of the text (comparable across tokenizers).", "",
                  "| run | trainable params | steps | tokens trained | train tokens/s | train time (s) | valid ppl start | best valid ppl | general ppl start | general ppl at best |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for mode, f in r["finals"].items():
            parts.append(f"| {mode} | {f.params_trainable:,} | {f.steps} | {f.tokens_trained:,} | "
                         f"{f.train_tokens_per_s:.1f} | {f.train_seconds:.0f} | {f.initial_valid_ppl:.3f} | "
                         f"{f.best_valid_ppl:.3f} | {_fmt(f.initial_general_ppl)} | {_fmt(f.best_general_ppl)} |")
        parts.append("")
    if len(r["evals"]) > 1:
        names = {k: "before" if k == "before" else f"after {MODE_NAMES.get(k, k)}" for k in r["evals"]}
        parts += ["### Before and after (`lmlab ft-eval`)", "",
                  finetune_table({names[k]: v for k, v in r["evals"].items()}), ""]
        before = r["evals"]["before"]
        examples = before.cloze["examples"]
        if before.pubmedqa_settings:
            parts += ["#### PubMedQA (lm-evaluation-harness protocol)", "",
                      pubmedqa_table({names[k]: v for k, v in r["evals"].items()}), "",
                      f"Prompt `Abstract: …\\nQuestion: …\\nAnswer:`, each verdict scored by its summed log-likelihood, "
                      f"on the first {before.pubmedqa['questions']} official test ids (500 = all); few-shot examples "
                      "come from training ids only. Intervals: 95% percentile bootstrap over the questions. The "
                      "PubMedQA paper's majority baseline over all 1,000 PQA-L questions is 55.2%.", ""]
        else:
            parts += [f"PubMedQA: zero-shot on the first {before.pubmedqa['questions']} official test questions "
                      f"(majority class `{before.pubmedqa['majority_class']}`).", ""]
        parts += [f"Fill-in-the-blank: {before.cloze['items']} held-out abstracts, "
                  f"{len(examples[0]['candidates']) if examples else 0} candidates each.", ""]
    for mode in r["finals"]:
        parts += [f"![{mode} fine-tune curves](finetune/{mode}/curves.png)", ""]
    if r["sizes"]:
        plot_size_curves(r["sizes"], layout.sizes / "sizes.png")
        parts += ["### Effect of training-set size (same step budget)", "",
                  "| training docs | tokens available | epochs run | valid ppl start | best valid ppl | step | general ppl start | general ppl at end |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, (f, rows) in r["sizes"].items():
            evals = [x for x in rows if x["kind"] == "eval"]
            parts.append(f"| {f.train_docs} | {f.train_tokens_available:,} | {f.epochs:.2f} | "
                         f"{f.initial_valid_ppl:.3f} | {f.best_valid_ppl:.3f} | {f.best_step} | "
                         f"{_fmt(f.initial_general_ppl)} | {_fmt(evals[-1].get('general_ppl'))} |")
        parts += ["", "![data-size curves](finetune/sizes/sizes.png)", ""]
    if len(r["evals"]) > 1:
        parts += ["### Completions before and after (greedy, repetition penalty 1.2)", "",
                  "| prompt | " + " | ".join(r["evals"]) + " |", "|---|" + "---|" * len(r["evals"])]
        prompts = [c["prompt"] for c in r["evals"]["before"].completions]
        for i, prompt in enumerate(prompts):
            cells = [_cell(v.completions[i]["text"]) for v in r["evals"].values()]
            parts.append(f"| {_cell(prompt)} | " + " | ".join(cells) + " |")
        parts.append("")
    return parts


def dpo_results(layout: StudyLayout, config: StudyConfig) -> dict:
    """(before, after, run config) per pair source of the study config that has finished."""
    out = {}
    for source in config.dpo.sources:
        run_dir = layout.dpo_run(source)
        before = results.read_if_present(run_dir / results.BEFORE, PreferenceMeasurement)
        after = results.read_if_present(run_dir / results.AFTER, PreferenceMeasurement)
        if before and after:
            out[run_dir.name] = (before, after, rundir.read_json(run_dir / rundir.CONFIG))
    return out


def dpo_section(layout: StudyLayout, runs: dict) -> list[str]:
    if not runs:
        return []
    parts = ["## Preference alignment (DPO)", ""]
    for source, (before, after, cfg) in runs.items():
        general = next(iter(before.general_ppl))
        parts += [f"### `{source}` pairs", "",
                  f"Start: `{cfg['model']['name']}`; beta {cfg['dpo']['beta']}, {after.steps} steps on "
                  f"{after.train_pairs} training pairs, {after.train_seconds:.0f} s; measured on "
                  f"{before.pairs} held-out pairs.", "",
                  "| metric | before | after |", "|---|---:|---:|"]
        parts += [f"| {label} | {fmt.format(getattr(before, key))} | {fmt.format(getattr(after, key))} |"
                  for label, key, fmt in DPO_ROWS]
        parts += [f"| {general} token ppl | {before.general_ppl[general]:.3f} | {after.general_ppl[general]:.3f} |"]
        for key, c in (after.change_vs_before or {}).items():
            parts.append(f"| change in {key} (paired 95% CI) | | {c['change']:+.3f} [{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}] |")
        parts += ["",
                  f"![DPO curves, {source}]({layout.dpo_run(source).relative_to(layout.root)}/curves.png)", ""]
        if before.generations:
            g0, g1 = before.generations[0], after.generations[0]
            parts += ["| held-out prompt (end) | before | after |", "|---|---|---|",
                      f"| {_cell(g0['prompt'][-160:])} | {_cell(g0['reply'])} | {_cell(g1['reply'])} |", ""]
    return parts


def analysis_lines(r: dict, dpo_runs: dict) -> list[str]:
    lines = []
    ev = r["evals"]
    for mode in (k for k in ev if k != "before"):
        if "before" in ev:
            b, a = ev["before"], ev[mode]
            forgetting = ", ".join(f"{c} {b.general_ppl[c]:.2f} → {a.general_ppl[c]:.2f} ({_pct(b.general_ppl[c], a.general_ppl[c])})"
                                   for c in b.general_ppl)
            lines.append(f"- {mode} fine-tuning: domain token perplexity {b.domain_ppl:.2f} → {a.domain_ppl:.2f} "
                         f"({_pct(b.domain_ppl, a.domain_ppl)}); general: {forgetting}; PubMedQA "
                         f"{b.pubmedqa_acc:.3f} → {a.pubmedqa_acc:.3f} (answers {_answers(b)} → {_answers(a)}; "
                         f"majority baseline {b.pubmedqa['majority_baseline']:.3f}){_calibrated(b, a)}; fill-in-the-blank "
                         f"{b.cloze_acc:.3f} → {a.cloze_acc:.3f}.")
    if r["sizes"]:
        changes = []
        for f, rows in r["sizes"].values():
            last = [x for x in rows if x["kind"] == "eval"][-1]
            general = last.get("general_ppl")
            changes.append((f.train_docs, f.epochs, f.best_valid_ppl / f.initial_valid_ppl - 1,
                            general / f.initial_general_ppl - 1 if general and f.initial_general_ppl else None))
        listed = "; ".join(f"{docs} docs ({epochs:.2f} epochs): domain {gain:+.1%}, general {_signed(general)}"
                           for docs, epochs, gain, general in changes)
        best = min(changes, key=lambda c: c[2])
        lines.append(f"- Data size, same step budget — {listed}. The largest domain gain came from {best[0]} documents.")
        moved = [c for c in changes if c[3] is not None]
        if moved and all(c[3] < 0 for c in moved):
            lines.append("- Against the start, no forgetting: the general text's perplexity ended lower for every size.")
        elif moved:
            worst = max(moved, key=lambda c: c[3])
            lines.append(f"- Most forgetting: {worst[0]} documents ({worst[1]:.2f} epochs), general perplexity "
                         f"{worst[3]:+.1%}.")
        for f, rows in r["sizes"].values():  # a rise from the best point: the onset of overfitting/forgetting
            evals = [x for x in rows if x["kind"] == "eval" and "general_ppl" in x]
            if evals:
                low, last = min(evals, key=lambda x: x["general_ppl"]), evals[-1]
                if last["general_ppl"] > 1.01 * low["general_ppl"]:
                    lines.append(f"- {f.train_docs} documents: general perplexity rose from its lowest "
                                 f"{low['general_ppl']:.2f} (step {low['step']}) to {last['general_ppl']:.2f} "
                                 f"(step {last['step']}, {f.epochs:.2f} epochs) while domain validation "
                                 f"perplexity rose from its best {f.best_valid_ppl:.2f} (step {f.best_step}) "
                                 f"to {last['valid_ppl']:.2f}: both turn at once, the onset of overfitting.")
    for source, (b, a, _) in dpo_runs.items():
        general = next(iter(b.general_ppl))
        lines.append(f"- DPO on `{source}` pairs: held-out preference accuracy {b.preference_acc:.3f} → "
                     f"{a.preference_acc:.3f}, log-likelihood margin {b.logp_margin:.2f} → {a.logp_margin:.2f}, "
                     f"implicit-reward accuracy {a.reward_acc:.3f}, KL from the reference {a.kl_from_reference:.4f} "
                     f"nats/token; PubMedQA {b.pubmedqa_acc:.3f} → {a.pubmedqa_acc:.3f} (answers {_answers(b)} → "
                     f"{_answers(a)}); {general} perplexity "
                     f"{b.general_ppl[general]:.2f} → {a.general_ppl[general]:.2f} ({_pct(b.general_ppl[general], a.general_ppl[general])}).")
    return lines


def _answers(result) -> str:
    """The PubMedQA verdicts a model gave, e.g. "no 197, yes 3": a constant answer is a prior, not reading."""
    counts = result.pubmedqa["predicted"]
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


def _calibrated(before: ModelEvaluation, after: ModelEvaluation) -> str:
    if before.pubmedqa_calibrated_acc is None or after.pubmedqa_calibrated_acc is None:
        return ""
    return f", calibrated {before.pubmedqa_calibrated_acc:.3f} → {after.pubmedqa_calibrated_acc:.3f}"


def _signed(x) -> str:
    return "–" if x is None else f"{x:+.1%}"


def _fmt(x) -> str:
    return "–" if x is None else f"{x:.3f}"


def _pct(before: float, after: float) -> str:
    return f"{after / before - 1:+.1%}"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def qa_summary(evaluations: dict[str, ModelEvaluation]) -> dict:
    """qa.json: per evaluated model (and starting point) and PubMedQA setting, the scores with their 95% intervals,
    the verdicts given, the majority baseline on the same questions and the number of questions."""
    keys = ("questions", "accuracy", "accuracy_ci95", "macro_f1", "macro_f1_ci95", "predicted", "gold",
            "majority_class", "majority_baseline", "confusion")
    return {name: {"model": e.model, "settings": {s: {k: r[k] for k in keys if k in r}
                                                  for s, r in (e.pubmedqa_settings or {}).items()}}
            for name, e in evaluations.items()}
