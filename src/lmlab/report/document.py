"""The study report: Markdown built only from files the study wrote, and a self-contained HTML copy.

Every number comes from a result file of the study directory, read through lmlab.results; which models,
modes and sources it covers follows the study config; the analysis sentences are generated from the numbers.
"""

from __future__ import annotations

import base64
import importlib.metadata
import platform
import re
from pathlib import Path

import markdown
import torch

from lmlab import results
from lmlab.config import StudyConfig
from lmlab.report.pretrained import (
    analysis_lines,
    dpo_results,
    dpo_section,
    finetune_results,
    finetune_section,
    rl_lines,
    rl_result,
    rl_section,
    write_finetune_summaries,
)
from lmlab.report.tables import perplexity_table, side_by_side, summary_table
from lmlab.results import StudyLayout
from lmlab.training import rundir


def build_markdown(layout: StudyLayout, config: StudyConfig, preset: str, finetunes: dict) -> str:
    study = layout.root
    finals = {m: results.read(layout.ptb_run(m) / rundir.FINAL, results.TrainFinal) for m in config.train.models
              if (layout.ptb_run(m) / rundir.FINAL).is_file()}
    parts = [f"# lmlab study report (`{preset}` preset)", "", "## Setup", "",
             f"- report built on: {platform.machine()}, {torch.get_num_threads()} torch threads, {platform.platform()}",
             *_devices(finals, layout, config),
             f"- versions (where the report was built): Python {platform.python_version()}, " + ", ".join(
                 f"{name} {_version(name)}" for name in ("torch", "transformers", "peft", "trl", "accelerate")),
             f"- presets: `{preset}` for every step (src/lmlab/configs/*/{preset}.toml); the log of every run of the "
             "study is `study.log`",
             "- data: Penn Treebank (Mikolov's split), word level, vocabulary from the training split; "
             "perplexity per word with one `<eos>` per line (see docs/metrics.md)",
             f"- command: `lmlab run --preset {preset} --out {study}`", ""]
    if finals:
        parts += ["## Penn Treebank: the from-scratch models", "", perplexity_table(finals), ""]
        for model, final in finals.items():
            rows = rundir.read_jsonl(layout.ptb_run(model) / rundir.METRICS)
            parts += [f"### {model}", "", f"Evaluation: {final.evaluation}.", "",
                      "| epoch | train ppl | valid ppl | lr | tokens/s | seconds |", "|---:|---:|---:|---:|---:|---:|"]
            parts += [f"| {r['epoch']} | {r['train_ppl']:.2f} | {r['valid_ppl']:.2f} | {r['lr']:.3g} | "
                      f"{r['tokens_per_s']:,.0f} | {r['seconds']:.0f} |" for r in rows]
            parts += ["", f"![{model} curves](ptb/{model}/curves.png)", ""]
    if (layout.scaling / "scaling.md").is_file():
        parts += ["## Scaling: which architecture and size per CPU-minute", "",
                  "Each run trains for the same wall time (budget) on this machine, its schedule planned over the "
                  "steps that fit (`train.budget_minutes`); the plot shows validation perplexity against size and "
                  "against the tokens each run could see.", "", (layout.scaling / "scaling.md").read_text(), "",
                  "![scaling](scaling/scaling.png)", ""]
    cross = layout.cross_domain / "cross_domain.md"
    if cross.is_file():
        parts += ["## Across domains", "", cross.read_text(), "", "![cross-domain chart](cross_domain/cross_domain.png)", "",
                  *_earlier_training(rundir.read_json(layout.cross_domain / "cross_domain.json"), layout)]
    samples = rundir.read_json(layout.samples) if layout.samples.is_file() else None
    if samples:
        first_prompt = samples["samples"][0]["prompt"]
        parts += ["## Samples", "", *_earlier_training(samples["samples"], layout),
                  summary_table(samples["summary"]).strip(), "",
                  side_by_side([s for s in samples["samples"] if s["prompt"] == first_prompt]).strip(), ""]
    dpo_runs = dpo_results(layout, config)
    rl_run = rl_result(layout)
    parts += finetune_section(layout, finetunes) + dpo_section(layout, dpo_runs) + rl_section(layout, rl_run)
    parts += ["## Analysis (generated from the numbers above)", "",
              *analysis(layout, finals, samples, finetunes, dpo_runs), *rl_lines(rl_run), ""]
    return "\n".join(parts)


def _earlier_training(rows: list[dict], layout: StudyLayout) -> list[str]:
    """A sentence naming the models whose rows were made from another training than the PTB run in the table
    above (``made_from``, the digest of the run's final.json, differs): a later run replaced the checkpoint, and
    these rows were not made again. Empty when every row belongs to the current runs."""
    current = {m: rundir.final_digest(layout.ptb_run(m)) for m in {r["model"] for r in rows}}
    earlier = sorted({r["model"] for r in rows
                      if current[r["model"]] and r.get("made_from") not in (None, current[r["model"]])})
    if not earlier:
        return []
    runs = {r["model"]: r["run"] for r in rows if r["model"] in earlier and r.get("run")}
    named = ", ".join(f"**{m}**" + (f" (`{runs[m]}`)" if m in runs else "") for m in earlier)
    return [f"Made with an earlier training than the PTB table above: {named}.", ""]


def _devices(finals: dict, layout: StudyLayout, config: StudyConfig) -> list[str]:
    """Where the runs themselves ran, as their result files record it (a study may run on a GPU machine and be
    reported elsewhere)."""
    devices = {f"{m} (train)": f.device for m, f in finals.items() if getattr(f, "device", None)}
    for model in config.finetune.models:
        for final in layout.model_dir(model).glob(f"*/{rundir.FINAL}"):
            devices[f"{model} {final.parent.name}"] = results.read(final, results.FinetuneFinal).device
    if not devices:
        return []
    by_device: dict[str, list[str]] = {}
    for run, device in devices.items():
        by_device.setdefault(device, []).append(run)
    return ["- runs ran on: " + "; ".join(f"`{d}`: {', '.join(sorted(r))}" for d, r in sorted(by_device.items()))]


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def analysis(layout: StudyLayout, finals: dict, samples: dict | None, finetunes: dict, dpo_runs: dict) -> list[str]:
    lines = []
    if finals:
        best = min(finals, key=lambda m: finals[m].test_ppl)
        worst = max(finals, key=lambda m: finals[m].test_ppl)
        lines.append(f"- In domain, **{best}** is best (PTB test perplexity {finals[best].test_ppl:.2f}) and "
                     f"**{worst}** worst ({finals[worst].test_ppl:.2f}).")
    if (layout.scaling / "scaling.json").is_file():
        for budget, s in rundir.read_json(layout.scaling / "scaling.json")["summary"].items():
            best = s["best"]
            lines.append(f"- At {budget} minutes per run, **{best['model']} at width {best['width']}** "
                         f"({best['parameters']:,} parameters) reaches the lowest validation perplexity, "
                         f"{best['valid_ppl']:.2f}.")
    summary_path = layout.cross_domain / "cross_domain_summary.json"
    if summary_path.is_file():
        s = rundir.read_json(summary_path)
        ratios = s["mean_in_vocab_ratio"]
        lines.append(f"- Across domains, **{s['degrades_least']}** degrades least (geometric-mean in-vocabulary "
                     f"perplexity ratio {ratios[s['degrades_least']]:.2f} against {s['in_domain']}) and "
                     f"**{s['degrades_most']}** most ({ratios[s['degrades_most']]:.2f}).")
    if samples:
        rep = max(samples["summary"], key=lambda e: e["repeated_4gram_rate"])
        lines.append(f"- The most repetitive decoding is {rep['model']} with {rep['strategy']} "
                     f"(repeated 4-gram rate {rep['repeated_4gram_rate']:.2f}).")
    lines += analysis_lines(finetunes, dpo_runs)
    return lines or ["- No results yet."]


def write_report(layout: StudyLayout, config: StudyConfig, preset: str) -> tuple[Path, Path]:
    finetunes = finetune_results(layout, config)  # read once: the report and the tables beside it
    md = build_markdown(layout, config, preset, finetunes)
    layout.report_md.write_text(md + "\n", encoding="utf-8")
    write_finetune_summaries(layout, finetunes)
    body = markdown.markdown(md, extensions=["tables", "fenced_code"])
    layout.report_html.write_text(_HTML.format(body=_embed_images(body, layout.root)), encoding="utf-8")
    return layout.report_md, layout.report_html


def _embed_images(html: str, root: Path) -> str:
    """Inline every <img src="relative.png"> as a data URI, so the HTML file stands alone."""

    def inline(match: re.Match) -> str:
        path = root / match.group(1)
        if not path.is_file():
            return match.group(0)
        data = base64.b64encode(path.read_bytes()).decode()
        return f'src="data:image/png;base64,{data}"'

    return re.sub(r'src="([^"]+\.png)"', inline, html)


_HTML = """<!doctype html>
<html><head><meta charset="utf-8"><title>lmlab study report</title>
<style>body{{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;line-height:1.45}}
table{{border-collapse:collapse;font-size:90%}}td,th{{border:1px solid #ccc;padding:2px 6px}}img{{max-width:100%}}</style>
</head><body>
{body}
</body></html>
"""
