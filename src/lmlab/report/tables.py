"""Markdown tables built from result files (lmlab.results) and recipe results."""

from __future__ import annotations

from collections import defaultdict

from lmlab.results import ModelEvaluation, TrainFinal


def perplexity_table(finals: dict[str, TrainFinal]) -> str:
    """One row per trained model: parameters, best epoch, validation/test perplexity, wall time."""
    lines = [
        "| model | impl | parameters | without embeddings | epochs (best) | valid ppl | test ppl | train+valid time |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, f in finals.items():
        lines.append(
            f"| {name} | {f.config['model']['impl']} | {f.parameters['total']:,} | "
            f"{f.parameters['non_embedding']:,} | {f.epochs} ({f.best_epoch}) | {f.valid_ppl:.2f} | "
            f"{f.test_ppl:.2f} | {f.train_valid_seconds / 60:.1f} min |"
        )
    return "\n".join(lines)


def side_by_side(rows: list[dict]) -> str:
    lines = []
    for (prompt, strategy), group in _grouped(rows, ("prompt", "strategy")):
        lines.append(f"\n### «{prompt}» — {strategy}")
        for r in group:
            lines.append(f"- **{r['model']}** (seed {r['seed']}): {r['text']}")
    return "\n".join(lines)


def summary_table(summary: list[dict]) -> str:
    lines = ["", "| model | strategy | n | distinct-1 | distinct-2 | distinct-3 | rep. 4-gram | longest rep. | <unk> rate | "
             "sent. length | fluency ppl [95% CI] |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for e in summary:
        fluency = f"{e['fluency_ppl']:.1f}" if e["fluency_ppl"] is not None else "–"
        if e.get("fluency_ppl_ci95"):
            fluency += " [{:.1f}, {:.1f}]".format(*e["fluency_ppl_ci95"])
        lines.append(f"| {e['model']} | {e['strategy']} | {e['samples']} | {e['distinct_1']:.2f} | {e['distinct_2']:.2f} | "
                     f"{e['distinct_3']:.2f} | {e['repeated_4gram_rate']:.2f} | {e['longest_repeated_span']:.1f} | "
                     f"{e['unk_rate']:.1%} | {e['mean_sentence_length']:.1f} | {fluency} |")
    return "\n".join(lines)


def _grouped(rows, keys):
    groups = defaultdict(list)
    for r in rows:
        groups[tuple(r[k] for k in keys)].append(r)
    return groups.items()


def finetune_table(results: dict[str, ModelEvaluation]) -> str:
    """One column per model (e.g. before / after): every ft-eval number side by side."""
    names = list(results)
    first = results[names[0]]
    rows = [("domain token ppl", lambda r: r.domain_ppl, "{:.3f}")]
    for corpus in first.general_ppl:
        rows.append((f"{corpus} token ppl", lambda r, c=corpus: r.general_ppl[c], "{:.3f}"))
    for corpus in first.word_ppl:
        rows.append((f"{corpus} word ppl", lambda r, c=corpus: r.word_ppl[c], "{:.2f}"))
    for corpus in first.byte_ppl:
        rows.append((f"{corpus} byte ppl", lambda r, c=corpus: r.byte_ppl[c], "{:.4f}"))
    nan = float("nan")
    if first.pubmedqa_settings:  # lm-eval protocol: every setting with its 95% interval
        for name in first.pubmedqa_settings:
            rows.append((f"PubMedQA accuracy, {name} [95% CI]",
                         lambda r, n=name: with_ci(r.pubmedqa_settings[n], "accuracy"), "{}"))
        rows.append(("PubMedQA majority baseline (same questions)", lambda r: r.pubmedqa["majority_baseline"], "{:.3f}"))
    else:  # results written before the lm-eval protocol
        rows += [("PubMedQA accuracy", lambda r: r.pubmedqa_acc, "{:.3f}"),
                 ("PubMedQA accuracy, calibrated", lambda r: nan if r.pubmedqa_calibrated_acc is None
                  else r.pubmedqa_calibrated_acc, "{:.3f}"),
                 ("PubMedQA majority baseline", lambda r: r.pubmedqa["majority_baseline"], "{:.3f}")]
    rows += [("fill-in-the-blank accuracy", lambda r: r.cloze_acc, "{:.3f}")]
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for label, get, fmt in rows:
        lines.append(f"| {label} | " + " | ".join(fmt.format(get(results[n])) for n in names) + " |")
    return "\n".join(lines)


def eval_table(results: list[dict]) -> str:
    """Models x corpora: perplexity, in-vocabulary perplexity and OOV rate."""
    lines = ["| model | corpus | tokens | OOV rate | ppl | ppl (in-vocab) | KL(new‖train) |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['model']} | {r['corpus']} | {r['tokens']:,} | {r['oov_rate']:.1%} | {r['ppl']:.1f} | "
                     f"{r['ppl_in_vocab']:.1f} | {r['shift']['kl_new_to_train']:.3f} |")
    return "\n".join(lines)


def with_ci(result: dict, key: str) -> str:
    if f"{key}_ci95" not in result:  # results measured before lmlab reported intervals
        return f"{result[key]:.3f}"
    low, high = result[f"{key}_ci95"]
    return f"{result[key]:.3f} [{low:.3f}, {high:.3f}]"


def pubmedqa_table(rows: list[dict]) -> str:
    """PubMedQA per model, run and setting (qa.json's rows): accuracy and macro-F1 with 95% bootstrap
    intervals, the verdicts given, and the majority baseline on the same questions."""
    lines = ["| model | run | setting | questions | accuracy [95% CI] | macro-F1 [95% CI] | verdicts (yes/no/maybe) | "
             "majority baseline |", "|---|---|---|---:|---:|---:|---|---:|"]
    for s in rows:
        verdicts = "/".join(str(s["predicted"].get(a, 0)) for a in ("yes", "no", "maybe"))
        lines.append(f"| {s['model']} | {s['run']} | {s['setting']} | {s['questions']} | {with_ci(s, 'accuracy')} | "
                     f"{with_ci(s, 'macro_f1')} | {verdicts} | {s['majority_baseline']:.3f} ({s['majority_class']}) |")
    return "\n".join(lines)
