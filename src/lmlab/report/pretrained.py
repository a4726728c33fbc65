"""Report sections for the pretrained model: fine-tuning (before/after, curves, data size) and DPO.

Like the rest of the report, every number is read from a result file the study wrote (lmlab.results), and
the modes, data sizes and pair sources are those the study config lists.
"""

from __future__ import annotations

from lmlab import results
from lmlab.config import StudyConfig
from lmlab.data.documents import pubmedqa_questions
from lmlab.errors import LmlabError
from lmlab.metrics.bootstrap import bootstrap_mean_ci
from lmlab.report.plots import plot_size_curves
from lmlab.report.tables import with_ci, finetune_table, pubmedqa_table
from lmlab.results import (
    FinetuneFinal,
    ModelEvaluation,
    PreferenceMeasurement,
    StudyLayout,
    TaskEvaluation,
)
from lmlab.training import rundir

MODE_NAMES = {"full": "full", "lora": "LoRA"}
QA_PROTOCOL = "lm-evaluation-harness pubmedqa (PQA-L, official test ids)"

DPO_ROWS = (("preference accuracy (summed log-lik.)", "preference_acc", "{:.3f}"),
            ("preference accuracy (per token)", "preference_acc_normalized", "{:.3f}"),
            ("mean log-likelihood margin (nats)", "logp_margin", "{:.2f}"),
            ("implicit-reward accuracy", "reward_acc", "{:.3f}"),
            ("implicit-reward margin", "reward_margin", "{:.4f}"),
            ("KL from reference (nats/token)", "kl_from_reference", "{:.5f}"),
            ("PubMedQA accuracy", "pubmedqa_acc", "{:.3f}"))


def finetune_results(layout: StudyLayout, config: StudyConfig) -> dict:
    """The study's fine-tuning results, as its config lists them: per model its evaluations (before, each
    domain mode), its fine-tunes and its task runs; the data-size experiment; the PubMedQA rows (qa.json)."""
    f = config.finetune
    models = {}
    for model in f.models:
        evals = {"before": results.read_if_present(layout.base_evaluation(model), ModelEvaluation)}
        finals, tasks = {}, {}
        for mode in f.modes:
            evals[mode] = results.read_if_present(layout.finetune_run(model, mode) / results.AFTER, ModelEvaluation)
            finals[mode] = results.read_if_present(layout.finetune_run(model, mode) / rundir.FINAL, FinetuneFinal)
        for start in f.task.starts:
            for mode in f.task.modes:
                run_dir = layout.task_run(model, start, mode)
                finals[run_dir.name] = results.read_if_present(run_dir / rundir.FINAL, FinetuneFinal)
                tasks[run_dir.name] = results.read_if_present(run_dir / results.TASK_SCORES, TaskEvaluation)
        models[model] = {"evals": _present(evals), "finals": _present(finals), "tasks": _present(tasks)}
    sizes = {}
    for docs in f.sizes.train_docs:
        run_dir = layout.size_run(docs)
        final = results.read_if_present(run_dir / rundir.FINAL, FinetuneFinal)
        if final:
            sizes[run_dir.name] = (final, rundir.read_jsonl(run_dir / rundir.METRICS))
    qa = qa_rows({(m, k): e for m, r in models.items() for k, e in r["evals"].items()},
                 {(m, task_name(k)): t for m, r in models.items() for k, t in r["tasks"].items()})
    return {"models": {m: r for m, r in models.items() if r["evals"] or r["finals"]}, "sizes": sizes, "qa": qa,
            "start_comparisons": start_comparisons(models), "first": f.models[0]}


def start_comparisons(models: dict, resamples: int = 1000, seed: int = 0) -> list[dict]:
    """Each task fine-tune from a domain-adapted start against the same recipe from the pretrained model (the
    question of Gururangan et al., 2020), paired over the test questions both answered: the change in accuracy
    with a 95% paired bootstrap interval, and the questions only one of them got right. Needs both runs'
    per-question answers and the gold verdicts (the PubMedQA data); where either is missing, none."""
    pairs = []  # (model, run, base run, setting, its answers, the base run's answers), where both kept them
    for model, r in models.items():
        for run, task in r["tasks"].items():
            _, start, mode = run.split("-")
            base_run = f"task-base-{mode}"
            if start == "base" or base_run not in r["tasks"]:
                continue
            for setting, scores in task.pubmedqa_settings.items():
                base_answers = r["tasks"][base_run].pubmedqa_settings.get(setting, {}).get("answers")
                if scores.get("answers") and base_answers:
                    pairs.append((model, run, base_run, setting, scores["answers"], base_answers))
    if not pairs:  # nothing to pair: the PubMedQA data is not read
        return []
    try:
        gold = {q.id: q.decision for q in pubmedqa_questions()}
    except LmlabError:  # a report built where the data is not: the unpaired intervals stay
        return []
    out = []
    for model, run, base_run, setting, answers, base_answers in pairs:
        ids = sorted(set(answers) & set(base_answers) & set(gold))
        if not ids:
            continue
        change = [int(answers[i] == gold[i]) - int(base_answers[i] == gold[i]) for i in ids]
        low, high = bootstrap_mean_ci(change, resamples, seed)
        out.append({"model": model, "run": task_name(run), "against": task_name(base_run), "setting": setting,
                    "questions": len(ids), "change": sum(change) / len(ids), "change_ci95": [low, high],
                    "only_run_right": change.count(1), "only_against_right": change.count(-1)})
    return out


def write_finetune_summaries(layout: StudyLayout, r: dict) -> None:
    """``finetune/comparison.md`` (every ft-eval present, side by side) and ``finetune/qa.json`` (the PubMedQA
    rows), rebuilt with the report from the result files, so they cover every model evaluated so far."""
    evals = {(model, k): e for model, m in r["models"].items() for k, e in m["evals"].items()}
    if not evals:
        return
    several = len(r["models"]) > 1
    table = finetune_table({f"{model} {_eval_name(k)}" if several else _eval_name(k): e for (model, k), e in evals.items()})
    (layout.finetune / "comparison.md").write_text(table + "\n", encoding="utf-8")
    rundir.write_json(layout.qa, {"protocol": QA_PROTOCOL, "rows": r["qa"], "start_comparisons": r["start_comparisons"]})


def _eval_name(run: str) -> str:
    return "before" if run == "before" else f"after {MODE_NAMES.get(run, run)}"


def task_name(run: str) -> str:
    """``task-lora-full`` -> ``task from lora (full)``, the name qa.json rows use."""
    _, start, mode = run.split("-")
    return f"task from {start} ({mode})"


def _present(d: dict) -> dict:
    return {k: v for k, v in d.items() if v}


def finetune_section(layout: StudyLayout, r: dict) -> list[str]:
    if not r["models"]:
        return []
    parts = ["## Fine-tuning pretrained models on PubMed", "",
             "Token perplexities are per token of each model's own tokenizer and are not comparable across models; "
             "word perplexity and bits per byte divide the same total NLL by the whitespace words / UTF-8 bytes "
             "of the text: tokenizer-independent units, the only ones compared across models.", ""]
    if len(r["models"]) > 1:
        parts += ["### Model size and instruction tuning", "", model_comparison_table(r["models"]), ""]
    for model, m in r["models"].items():
        parts += [f"### `{model}`", ""]
        if m["finals"]:
            parts += [_finals_table(m["finals"]), ""]
        if len(m["evals"]) > 1:
            parts += ["Before and after (`lmlab ft-eval`):", "",
                      finetune_table({_eval_name(k): v for k, v in m["evals"].items()}), ""]
        for name in m["finals"]:
            curves = layout.model_dir(model) / name / rundir.CURVES
            parts += [f"![{model} {name} curves]({curves.relative_to(layout.root)})", ""]
    if r["qa"]:
        before = next(iter(next(iter(r["models"].values()))["evals"].values()), None)
        parts += ["### PubMedQA (lm-evaluation-harness protocol)", "", pubmedqa_table(r["qa"]), "",
                  "Prompt `Abstract: …\\nQuestion: …\\nAnswer:`, each verdict scored by its summed log-likelihood, on "
                  "the official test ids (questions column; 500 = all); few-shot examples come from training ids "
                  "only; task fine-tunes train on the other PQA-L questions (never a test id) and are scored zero-shot "
                  "in the format they learned. Intervals: 95% percentile bootstrap over the questions. The PubMedQA "
                  "paper's majority baseline over all 1,000 PQA-L questions is 55.2%.", ""]
        if before:
            examples = before.cloze["examples"]
            parts += [f"Fill-in-the-blank: {before.cloze['items']} held-out abstracts, "
                      f"{len(examples[0]['candidates']) if examples else 0} candidates each.", ""]
    if r["sizes"]:
        plot_size_curves(r["sizes"], layout.sizes / "sizes.png")
        parts += [f"### Effect of training-set size (`{r['first']}`, same step budget)", "",
                  "| training docs | tokens available | epochs run | valid ppl start | best valid ppl | step | general ppl start | general ppl at end |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, (f, rows) in r["sizes"].items():
            evals = [x for x in rows if x["kind"] == "eval"]
            parts.append(f"| {f.train_docs} | {f.train_tokens_available:,} | {f.epochs:.2f} | "
                         f"{f.initial_valid_ppl:.3f} | {f.best_valid_ppl:.3f} | {f.best_step} | "
                         f"{_fmt(f.initial_general_ppl)} | {_fmt(evals[-1].get('general_ppl'))} |")
        parts += ["", "![data-size curves](finetune/sizes/sizes.png)", ""]
    for model, m in r["models"].items():
        if len(m["evals"]) > 1:
            parts += [f"### Completions before and after, `{model}` (greedy, repetition penalty 1.2)", "",
                      "| prompt | " + " | ".join(m["evals"]) + " |", "|---|" + "---|" * len(m["evals"])]
            prompts = [c["prompt"] for c in m["evals"]["before"].completions]
            for i, prompt in enumerate(prompts):
                cells = [_cell(v.completions[i]["text"]) for v in m["evals"].values()]
                parts.append(f"| {_cell(prompt)} | " + " | ".join(cells) + " |")
            parts.append("")
    return parts


def _finals_table(finals: dict[str, FinetuneFinal]) -> str:
    lines = ["| run | task | trainable params | steps | tokens trained | train tokens/s | train time (s) | "
             "valid ppl start | best valid ppl | valid accuracy start → best | general ppl start | general ppl at best |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, f in finals.items():
        acc = "–" if f.best_valid_acc is None else f"{f.initial_valid_acc:.3f} → {f.best_valid_acc:.3f}"
        lines.append(f"| {name} | {f.task or 'lm'} | {f.params_trainable:,} | {f.steps} | {f.tokens_trained:,} | "
                     f"{f.train_tokens_per_s:.1f} | {f.train_seconds:.0f} | {f.initial_valid_ppl:.3f} | "
                     f"{f.best_valid_ppl:.3f} | {acc} | {_fmt(f.initial_general_ppl)} | {_fmt(f.best_general_ppl)} |")
    return "\n".join(lines)


def model_comparison_table(models: dict) -> str:
    """The pretrained models side by side before fine-tuning (and after LoRA where it ran), in units that do not
    depend on the tokenizer."""
    columns = {}
    for model, m in models.items():
        for key in ("before", "lora"):
            if key in m["evals"]:
                columns[f"{model} {'before' if key == 'before' else 'after LoRA'}"] = m["evals"][key]
    first = next(iter(columns.values()))
    rows = [("parameters", lambda e: f"{e.params / 1e6:.1f}M"),
            ("tokenizer vocabulary", lambda e: f"{e.vocab_size:,}")]
    for corpus in first.bits_per_byte:
        rows.append((f"{corpus} bits per byte", lambda e, c=corpus: f"{e.bits_per_byte[c]:.4f}"))
        rows.append((f"{corpus} word ppl", lambda e, c=corpus: f"{e.word_ppl[c]:.2f}"))
    for name in first.pubmedqa_settings or {}:
        rows.append((f"PubMedQA {name} [95% CI]",
                     lambda e, n=name: with_ci(e.pubmedqa_settings[n], "accuracy") if n in (e.pubmedqa_settings or {}) else "–"))
    rows.append(("fill-in-the-blank accuracy", lambda e: f"{e.cloze_acc:.3f}"))
    lines = ["| measure (tokenizer-independent) | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    lines += [f"| {label} | " + " | ".join(get(e) for e in columns.values()) + " |" for label, get in rows]
    return "\n".join(lines)


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
        if after.kl_on_samples:
            k = after.kl_on_samples
            parts.append(f"| KL from reference on the policy's own samples (nats/token; {k['samples']} prompts, "
                         f"{k['tokens']} tokens) | 0 | {k['exact']:.5f} (Monte-Carlo {k['mc']:.5f}) |")
        for key, c in (after.change_vs_before or {}).items():
            parts.append(f"| change in {key} (paired 95% CI) | | {c['change']:+.3f} [{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}] |")
        parts += ["",
                  f"![DPO curves, {source}]({layout.dpo_run(source).relative_to(layout.root)}/curves.png)", ""]
        if before.generations:
            parts += ["| held-out prompt (end) | before | after |", "|---|---|---|"]
            for g0, g1 in zip(before.generations, after.generations):
                parts.append(f"| {_cell(g0['prompt'][-160:])} | {_cell(g0['reply'])}{_stats(g0)} | "
                             f"{_cell(g1['reply'])}{_stats(g1)} |")
            parts.append("")
    return parts


def rl_result(layout: StudyLayout) -> tuple[TaskEvaluation, TaskEvaluation, dict] | None:
    """(before, after, run config) of the study's GRPO run, when it has finished."""
    run_dir = layout.rl_run
    before = results.read_if_present(run_dir / results.BEFORE, TaskEvaluation)
    after = results.read_if_present(run_dir / results.AFTER, TaskEvaluation)
    return (before, after, rundir.read_json(run_dir / rundir.CONFIG)) if before and after else None


def rl_section(layout: StudyLayout, run) -> list[str]:
    if not run:
        return []
    before, after, cfg = run
    b, a = (m.pubmedqa_settings["lm-eval 0-shot"] for m in (before, after))
    x = after.extra
    reward = (f"; mean reward of a batch {x['reward_first']:.2f} at the first step, {x['reward_last']:.2f} at the last"
              if x.get("reward_first") is not None else "")
    return ["## RL with a verifiable reward (GRPO)", "",
            f"Start: `{cfg['model']['name']}`; {x.get('steps')} GRPO steps on {x.get('train_prompts')} PubMedQA training "
            f"questions, {cfg['grpo']['num_generations']} completions per prompt, reward 1 for the gold verdict, KL "
            f"weight {cfg['grpo']['beta']}; {x.get('train_seconds', 0):.0f} s{reward}. Measured on the lm-eval "
            f"protocol over {a['questions']} test questions.", "",
            "| PubMedQA (lm-eval 0-shot) | before | after |", "|---|---:|---:|",
            f"| accuracy [95% CI] | {with_ci(b, 'accuracy')} | {with_ci(a, 'accuracy')} |",
            f"| macro-F1 [95% CI] | {with_ci(b, 'macro_f1')} | {with_ci(a, 'macro_f1')} |",
            f"| answers | {_counts(b['predicted'])} | {_counts(a['predicted'])} |",
            f"| majority baseline | {b['majority_baseline']:.3f} | {a['majority_baseline']:.3f} |", "",
            f"![GRPO curves]({layout.rl_run.relative_to(layout.root)}/curves.png)", ""]


def rl_lines(run) -> list[str]:
    if not run:
        return []
    b, a = (m.pubmedqa_settings["lm-eval 0-shot"] for m in run[:2])
    verdict = ("the intervals do not overlap" if not _overlap(a, b) else "the intervals overlap, so the change is not "
               "shown")
    above = ("its lower bound clears" if a["accuracy_ci95"][0] > a["majority_baseline"] else "not shown above")
    return [f"- GRPO on verdict rewards: PubMedQA accuracy {with_ci(b, 'accuracy')} → {with_ci(a, 'accuracy')} "
            f"({verdict}); after training {above} the majority baseline {a['majority_baseline']:.3f}."]


def _plain_window_lines(models: dict) -> list[str]:
    """Evaluations made before ``perplexity.start_every_window``: a model with a BOS of its own (Gemma) saw
    windows that start mid-text, which inflates its perplexities and makes training on such chunks look like a
    general gain (docs/finetune.md)."""
    plain = [f"`{model}` {_eval_name(k)}" for model, m in models.items() for k, e in m["evals"].items()
             if "start_every_window" not in e.settings.get("perplexity", {})]
    if not plain:
        return []
    return [f"- Measured with plain sliding windows (before `perplexity.start_every_window`): {', '.join(plain)}. "
            "For a model whose tokenizer adds BOS (Gemma) those windows start mid-text without it, which raised "
            "Gemma-3-270m's perplexity by 21-34% on three corpora; a fine-tune on chunks cut the same way learns "
            "that layout, so its perplexity gains, general ones above all, are partly that (docs/finetune.md)."]


def analysis_lines(r: dict, dpo_runs: dict) -> list[str]:
    lines = []
    for model, m in r["models"].items():
        ev = m["evals"]
        for mode in (k for k in ev if k != "before" and "before" in ev):
            b, a = ev["before"], ev[mode]
            forgetting = ", ".join(f"{c} {b.general_ppl[c]:.2f} → {a.general_ppl[c]:.2f} ({_pct(b.general_ppl[c], a.general_ppl[c])})"
                                   for c in b.general_ppl)
            lines.append(f"- `{model}`, {mode} fine-tuning: domain token perplexity {b.domain_ppl:.2f} → {a.domain_ppl:.2f} "
                         f"({_pct(b.domain_ppl, a.domain_ppl)}); general: {forgetting}; PubMedQA 0-shot "
                         f"{with_ci(b.pubmedqa, 'accuracy')} → {with_ci(a.pubmedqa, 'accuracy')} (answers {_answers(b)} → "
                         f"{_answers(a)}; majority baseline {b.pubmedqa['majority_baseline']:.3f}){_calibrated(b, a)}; "
                         f"fill-in-the-blank {b.cloze_acc:.3f} → {a.cloze_acc:.3f}.")
    lines += _plain_window_lines(r["models"])
    lines += _qa_lines(r["qa"], r["start_comparisons"])
    lines += _model_lines(r["models"])
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


def _qa_lines(rows: list[dict], comparisons: list[dict]) -> list[str]:
    """The best PubMedQA result, whether its interval clears the majority baseline, and what domain-adaptive
    training did to task fine-tuning (Gururangan et al., 2020's question), paired where the answers allow."""
    if not rows:
        return []
    best = max(rows, key=lambda x: x["accuracy"])
    low, high = best["accuracy_ci95"]
    majority = best["majority_baseline"]
    verdict = ("its 95% interval lies above the majority baseline" if low > majority else
               "its 95% interval includes the majority baseline, so no model is shown to beat answering "
               f"`{best['majority_class']}` to every question")
    lines = [f"- PubMedQA: the best of {len(rows)} measured settings is `{best['model']}` {best['run']}, "
             f"{best['setting']}: {best['accuracy']:.3f} [{low:.3f}, {high:.3f}] on {best['questions']} test questions "
             f"(answers {_counts(best['predicted'])}; majority baseline {majority:.3f}): {verdict}."]
    for row in rows:
        if row["run"].startswith("task from ") and not row["run"].startswith("task from base"):
            base = next((x for x in rows if x["model"] == row["model"] and x["setting"] == row["setting"]
                         and x["run"] == "task from base" + row["run"][row["run"].index(" ("):]), None)
            if base:
                diff = row["accuracy"] - base["accuracy"]
                paired = next((c for c in comparisons if (c["model"], c["run"], c["setting"]) ==
                               (row["model"], row["run"], row["setting"])), None)
                lines.append(f"- `{row['model']}`: {row['run']} vs task from base: {row['accuracy']:.3f} vs "
                             f"{base['accuracy']:.3f} ({diff:+.3f}; intervals {_ci(row)} and {_ci(base)}"
                             f"{', which overlap' if _overlap(row, base) else ''}){_paired(paired)}.")
    return lines


def _model_lines(models: dict) -> list[str]:
    """The pretrained models against each other before fine-tuning, in tokenizer-independent units."""
    base = {m: r["evals"]["before"] for m, r in models.items() if "before" in r["evals"]}
    if len(base) < 2:
        return []
    corpora = list(next(iter(base.values())).bits_per_byte)
    cells = "; ".join(f"`{m}` ({e.params / 1e6:.0f}M): " + ", ".join(f"{c} {e.bits_per_byte[c]:.3f}" for c in corpora)
                      for m, e in base.items())
    lines = [f"- Pretrained models before fine-tuning, bits per byte (lower is better) — {cells}."]
    for corpus in corpora:
        best = min(base, key=lambda m: base[m].bits_per_byte[corpus])
        worst = max(base, key=lambda m: base[m].bits_per_byte[corpus])
        lines.append(f"- On {corpus}, `{best}` predicts best: {base[best].bits_per_byte[corpus]:.3f} bits per byte "
                     f"against {base[worst].bits_per_byte[corpus]:.3f} for `{worst}` "
                     f"({base[worst].bits_per_byte[corpus] / base[best].bits_per_byte[corpus] - 1:+.1%}).")
    return lines


def _paired(c: dict | None) -> str:
    if not c:
        return ""
    low, high = c["change_ci95"]
    verdict = "contains zero: no difference shown" if low <= 0 <= high else "excludes zero"
    return (f"; paired over the {c['questions']} questions: {c['change']:+.3f} [{low:+.3f}, {high:+.3f}], which "
            f"{verdict} ({c['only_run_right']} right only from the domain start, {c['only_against_right']} only from base)")


def _ci(row: dict) -> str:
    return f"[{row['accuracy_ci95'][0]:.3f}, {row['accuracy_ci95'][1]:.3f}]"


def _overlap(a: dict, b: dict) -> bool:
    return a["accuracy_ci95"][0] <= b["accuracy_ci95"][1] and b["accuracy_ci95"][0] <= a["accuracy_ci95"][1]


def _counts(counts: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


def _answers(result) -> str:
    """The PubMedQA verdicts a model gave, e.g. "no 197, yes 3": a constant answer is a prior, not reading."""
    return _counts(result.pubmedqa["predicted"])


def _calibrated(before: ModelEvaluation, after: ModelEvaluation) -> str:
    if before.pubmedqa_calibrated_acc is None or after.pubmedqa_calibrated_acc is None:
        return ""
    return f", calibrated {before.pubmedqa_calibrated_acc:.3f} → {after.pubmedqa_calibrated_acc:.3f}"


def _stats(generation: dict) -> str:
    s = generation.get("stats")
    if not s:
        return ""
    return (f" *({s['tokens']} words, distinct-2 {s['distinct_2']:.2f}, repeated 4-grams "
            f"{s['repeated_4gram_rate']:.2f})*")


def _signed(x) -> str:
    return "–" if x is None else f"{x:+.1%}"


def _fmt(x) -> str:
    return "–" if x is None else f"{x:.3f}"


def _pct(before: float, after: float) -> str:
    return f"{after / before - 1:+.1%}"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def qa_rows(evaluations: dict[tuple[str, str], ModelEvaluation],
            tasks: dict[tuple[str, str], TaskEvaluation] | None = None) -> list[dict]:
    """qa.json's rows: one per model x run (pretrained, after a domain fine-tune, after a task fine-tune from a
    starting point) x PubMedQA setting, with the scores and their 95% intervals, the verdicts given, the majority
    baseline on the same questions and the number of questions."""
    keys = ("questions", "accuracy", "accuracy_ci95", "macro_f1", "macro_f1_ci95", "predicted", "gold",
            "majority_class", "majority_baseline", "confusion")
    rows = []
    for (model, run), e in [*evaluations.items(), *(tasks or {}).items()]:
        name = "pretrained" if run == "before" else f"domain {MODE_NAMES.get(run, run)}" if run in MODE_NAMES else run
        for setting, r in (e.pubmedqa_settings or {}).items():
            if "accuracy_ci95" not in r:  # results measured before the lm-eval protocol and its intervals
                continue
            rows.append({"model": model, "run": name, "setting": setting, "weights": e.model,
                         **{k: r[k] for k in keys if k in r}})
    return rows
