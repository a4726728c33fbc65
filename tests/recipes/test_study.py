from __future__ import annotations

import json

import pytest

from lmlab.cli import main
from lmlab.errors import LmlabError
from lmlab.generation import SamplingSettings
from lmlab.results import StudyLayout
from lmlab.training import rundir


def test_run_smoke_runs_every_step_then_skips_finished_ones(ptb_available, domain_data, tiny_llama, tmp_path, capsys):
    """The whole smoke study; the pretrained model is a tiny random Llama here (the preset's SmolLM2 in real runs)."""
    out = tmp_path / "study"
    study = ["run", "--preset", "smoke", "--out", str(out), "--threads", "1", "--set", f"finetune.models=['{tiny_llama}']"]
    model_dir = StudyLayout(out).model_dir(str(tiny_llama))
    assert main(study) == 0
    first = capsys.readouterr().err  # the study logs on stderr (and to study.log)
    table = (out / "ptb_table.md").read_text()
    for model in ("rnn", "gru", "lstm", "transformer"):
        assert f"| {model} |" in table and (out / "ptb" / model / "final.json").is_file()
    assert table in first
    cross = json.loads((out / "cross_domain" / "cross_domain.json").read_text())
    assert {(r["model"], r["corpus"]) for r in cross} == {(m, c) for m in ("rnn", "gru", "lstm", "transformer")
                                                          for c in ("ptb:test", "shakespeare", "pubmed:50")}
    ptb = {r["model"]: r for r in cross if r["corpus"] == "ptb:test"}
    final = json.loads((out / "ptb" / "lstm" / "final.json").read_text())
    assert ptb["lstm"]["tokens"] == 82_430 and final["tokens"]["test"] == 4000  # smoke tests on a prefix only
    assert (out / "cross_domain" / "cross_domain.png").is_file()
    assert json.loads((out / "samples.json").read_text())["summary"]
    report = (out / "report.md").read_text()
    for section in ("## Setup", "## Penn Treebank", "## Scaling", "## Across domains", "## Samples", "## Fine-tuning",
                    "Before and after (`lmlab ft-eval`)", "### PubMedQA", "### Effect of training-set size", "## Preference alignment (DPO)",
                    "### `general` pairs", "### `pubmedqa` pairs", "## RL with a verifiable reward (GRPO)", "## Analysis"):
        assert section in report
    for model in ("rnn", "gru", "lstm", "transformer"):  # every epoch's numbers, as the run wrote them
        for row in (out / "ptb" / model / "metrics.jsonl").read_text().splitlines():
            assert f"| {json.loads(row)['valid_ppl']:.2f} |" in report
    best = min(("rnn", "gru", "lstm", "transformer"),
               key=lambda m: json.loads((out / "ptb" / m / "final.json").read_text())["test_ppl"])
    assert f"**{best}** is best" in report
    assert "plain sliding windows" not in report  # evaluations made now carry perplexity.start_every_window
    # fine-tuning and DPO numbers, as their JSON files hold them
    before, after = (json.loads((model_dir / "full" / f).read_text()) for f in ("before.json", "after.json"))
    assert f"| domain token ppl | {before['domain_ppl']:.3f} | {after['domain_ppl']:.3f} |" in report
    assert f"{before['pubmedqa_acc']:.3f} [" in report and f"→ {after['pubmedqa_acc']:.3f} [" in report
    # task fine-tunes from the pretrained model and from the domain LoRA, scored on PubMedQA alone
    qa = json.loads((out / "finetune" / "qa.json").read_text())["rows"]
    runs = {r["run"] for r in qa}
    assert {"pretrained", "domain full", "domain LoRA", "task from base (lora)", "task from lora (lora)"} <= runs
    for start in ("base", "lora"):
        task = json.loads((model_dir / f"task-{start}-lora" / "pubmedqa.json").read_text())
        scores = task["pubmedqa_settings"]["lm-eval 0-shot"]
        assert f"| task from {start} (lora) | lm-eval 0-shot | {scores['questions']} | {scores['accuracy']:.3f} [" in report
    config = json.loads((model_dir / "task-lora-lora" / "config.json").read_text())
    assert config["model"]["name"] == str(model_dir / "lora" / "model") and config["data"]["task"] == "pubmedqa"
    for size in (10, 40):
        final = json.loads((out / "finetune" / "sizes" / f"docs{size}" / "final.json").read_text())
        assert f"| {size} | {final['train_tokens_available']:,} | {final['epochs']:.2f} |" in report
    for source in ("general", "pubmedqa"):
        b, a = (json.loads((out / "dpo" / source / f).read_text()) for f in ("before.json", "after.json"))
        assert f"| preference accuracy (summed log-lik.) | {b['preference_acc']:.3f} | {a['preference_acc']:.3f} |" in report
        assert b["reward_margin"] == 0.0 and (out / "dpo" / source / "model" / "config.json").is_file()
    rl_before, rl_after = (json.loads((out / "rl" / f).read_text())["pubmedqa_settings"]["lm-eval 0-shot"]
                           for f in ("before.json", "after.json"))
    assert f"| accuracy [95% CI] | {rl_before['accuracy']:.3f} [" in report and f"| {rl_after['accuracy']:.3f} [" in report
    scaling = json.loads((out / "scaling" / "scaling.json").read_text())
    assert len(scaling["runs"]) == 4 and f"{scaling['runs'][0]['valid_ppl']:.2f}" in report
    html = (out / "report.html").read_text()
    # 4 PTB curves + scaling + cross-domain chart + full/LoRA/2 task curves + data-size chart + 2 DPO curves + the
    # GRPO curves, all inlined
    assert html.count("data:image/png;base64,") == 14 and 'src="ptb/' not in html and 'src="dpo/' not in html
    assert main(study) == 0
    # 4 trainings, 4 scaling runs, eval, sample, 6 fine-tunes (full, LoRA, 2 sizes, 2 task), 3 ft-evals, 2 task
    # scores, 2 DPO, 1 RL
    assert capsys.readouterr().err.count("done already") == 24
    log = (out / "study.log").read_text()
    assert log.count("[study]") == 2 and "[report]" in log  # the whole run is logged, run after run


def test_only_and_skip_select_steps(tmp_path, capsys):
    assert main(["run", "--preset", "smoke", "--out", str(tmp_path), "--only", "plot"]) == 2
    assert "unknown step 'plot'" in capsys.readouterr().err


def test_unknown_preset_is_a_clear_error(tmp_path, capsys):
    assert main(["run", "--preset", "huge", "--out", str(tmp_path)]) == 2
    assert "unknown preset 'huge'" in capsys.readouterr().err


def test_ctrl_c_mid_step_then_rerun_continues_where_it_stopped(domain_data, tiny_llama, tmp_path, capsys, monkeypatch):
    from lmlab.recipes import finetune

    study = ["run", "--preset", "smoke", "--out", str(tmp_path), "--only", "finetune",
             "--set", f"finetune.models=['{tiny_llama}']", "--set", "finetune.sizes.train_docs=[]",
             "--set", "finetune.task.starts=[]"]
    run_dir = StudyLayout(tmp_path).finetune_run(str(tiny_llama), "full")
    real = finetune._checkpoint

    def interrupted(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(finetune, "_checkpoint", interrupted)
    assert main(study) == 130
    assert "interrupted; finished steps and the last checkpoint are kept" in capsys.readouterr().err
    monkeypatch.setattr(finetune, "_checkpoint", real)
    assert main(study) == 0
    out = capsys.readouterr().err
    assert f"[finetune {tiny_llama} full] resuming in {run_dir}" in out
    steps = [json.loads(r)["step"] for r in (run_dir / "metrics.jsonl").read_text().splitlines()
             if json.loads(r)["kind"] == "train"]
    assert steps == [1, 2, 3, 4]  # no step lost or repeated
    assert "[study]" in (tmp_path / "study.log").read_text()


def test_a_full_disk_is_a_clear_message(tmp_path, capsys, monkeypatch):
    import errno

    from lmlab.recipes import study

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "report.md"))

    monkeypatch.setattr(study, "write_report", full)
    assert main(["run", "--preset", "smoke", "--out", str(tmp_path), "--only", "report"]) == 28
    err = capsys.readouterr().err
    assert "lmlab: error: the disk is full" in err and "Traceback" not in err


def test_a_retrained_model_alone_is_evaluated_and_sampled_again(ptb_available, tiny_runs, tmp_path, monkeypatch):
    """eval and sample keep every result made from a model's current training (the digest of its final.json):
    after one model is trained again, only it is scored and sampled, the samples it judges are judged again, and
    a model whose results are kept is never loaded, so its checkpoint and vocabulary need not be there."""
    import shutil

    from lmlab.recipes import study
    from lmlab.trained import load_trained

    layout = StudyLayout(tmp_path / "study")
    for arch in ("rnn", "lstm", "transformer"):
        shutil.copytree(tiny_runs[arch], layout.ptb_run(arch))
    text = tmp_path / "text.txt"
    text.write_text("the cat sees the ball .\na dog likes seeds .\n")
    config = study.load_study("smoke", ["train.models=['rnn','lstm','transformer']", f"eval.corpora=['ptb:test','file:{text}']",
                                        "sample.prompts=['the cat']", "sample.samples=1", "sample.max_tokens=8"])
    runner = study.Steps(layout)
    loads = []

    def counted(run_dir, *args, **kwargs):
        loads.append(run_dir.name)
        return load_trained(run_dir, *args, **kwargs)

    monkeypatch.setattr(study.evaluate, "load_trained", counted)
    monkeypatch.setattr(study.sample, "load_trained", counted)
    study.eval_step(runner, config, "smoke")
    study.sample_step(runner, config, "smoke")
    assert sorted(loads) == ["lstm", "lstm", "rnn", "rnn", "transformer", "transformer"]
    first_rows = json.loads((layout.cross_domain / "cross_domain.json").read_text())
    first_samples = json.loads(layout.samples.read_text())["samples"]
    judge_of = {r["model"]: r["judge"] for r in first_samples}
    assert len(set(judge_of.values())) == 2 and all(judge != model for model, judge in judge_of.items())

    loads.clear()
    skipped = []
    monkeypatch.setattr(runner, "skip", lambda name, where: skipped.append(name))
    study.eval_step(runner, config, "smoke")
    study.sample_step(runner, config, "smoke")
    assert loads == [] and skipped == ["eval", "sample"]  # nothing changed: both steps skip

    older = json.loads(layout.samples.read_text())  # as written before the summary had a statistic it has now
    for entry in older["summary"]:
        del entry["fluency_ppl_ci95"]
    layout.samples.write_text(json.dumps(older))
    study.sample_step(runner, config, "smoke")
    assert loads == [] and skipped == ["eval", "sample"]  # the summary is made again, without loading a model
    assert json.loads(layout.samples.read_text())["samples"] == first_samples
    assert all("fluency_ppl_ci95" in e for e in json.loads(layout.samples.read_text())["summary"])

    final = layout.ptb_run("transformer") / "final.json"  # trained again: same numbers, another final.json
    final.write_text(json.dumps(json.loads(final.read_text()), indent=1))
    untouched = ({"rnn", "lstm"} - {judge_of["transformer"]}).pop()  # neither retrained nor the transformer's judge
    for name in ("best.pt", "vocab.txt"):  # as in a results checkout: only final.json and the logs
        (layout.ptb_run(untouched) / name).unlink()
    study.eval_step(runner, config, "smoke")
    assert loads == ["transformer"]
    rows = json.loads((layout.cross_domain / "cross_domain.json").read_text())
    new_digest = rundir.final_digest(layout.ptb_run("transformer"))
    assert [r["made_from"] for r in rows if r["model"] == "transformer"] == [new_digest] * 2
    assert [r for r in rows if r["model"] != "transformer"] == [r for r in first_rows if r["model"] != "transformer"]
    assert [r["ppl"] for r in rows] == pytest.approx([r["ppl"] for r in first_rows], rel=1e-12)

    loads.clear()
    study.sample_step(runner, config, "smoke")
    assert sorted(loads) == sorted(["transformer", judge_of["transformer"]])
    samples = json.loads(layout.samples.read_text())["samples"]
    assert [(r["model"], r["text"]) for r in samples] == [(r["model"], r["text"]) for r in first_samples]
    for before, after in zip(first_samples, samples):
        assert after["made_from"] == rundir.final_digest(layout.ptb_run(after["model"]))
        assert after["judge_made_from"] == rundir.final_digest(layout.ptb_run(after["judge"]))
        assert after["stats"]["fluency_ppl"] == pytest.approx(before["stats"]["fluency_ppl"], rel=1e-9)
    with pytest.raises(LmlabError, match="share a directory name"):
        study.sample.run([layout.ptb_run("lstm"), tiny_runs["lstm"]], ["the"], [SamplingSettings()])


def test_a_task_fine_tune_from_a_retrained_domain_fine_tune_is_trained_again(tmp_path, monkeypatch):
    """A task fine-tune's config names its start (a domain fine-tune) by path only; the run records which training
    of it it was made from, so retraining the start retrains the task run instead of reporting the stale one."""
    from lmlab.recipes import study

    trained = []

    def fake_run(cfg, run_dir, resume=False):
        trained.append(run_dir.name)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(study.to_dict(cfg)))
        (run_dir / "final.json").write_text(json.dumps({"run": len(trained)}))

    monkeypatch.setattr(study.finetune, "run", fake_run)
    config = study.load_study("smoke", ["finetune.models=['tiny']", "finetune.modes=['lora']", "finetune.sizes.train_docs=[]",
                                        "finetune.task.starts=['lora']", "finetune.task.modes=['lora']"])
    layout = StudyLayout(tmp_path)
    runner = study.Steps(layout)
    study.finetune_step(runner, config, "smoke")
    assert trained == ["lora", "task-lora-lora"]
    study.finetune_step(runner, config, "smoke")
    assert trained == ["lora", "task-lora-lora"]  # nothing changed: both done already
    (layout.finetune_run("tiny", "lora") / "final.json").unlink()  # the domain fine-tune is trained again
    study.finetune_step(runner, config, "smoke")
    assert trained == ["lora", "task-lora-lora", "lora", "task-lora-lora"]


def _scores(accuracy: float, **extra) -> dict:
    """PubMedQA scores of 4 questions, as ft-eval writes them."""
    return {"questions": 4, "accuracy": accuracy, "accuracy_ci95": [0.0, 1.0], "macro_f1": 0.3,
            "macro_f1_ci95": [0.0, 1.0], "predicted": {"yes": 4}, "gold": {"yes": 2, "no": 2},
            "majority_class": "yes", "majority_baseline": 0.5, "confusion": {}, **extra}


def _evaluation(model: str, accuracy: float):
    from lmlab import results

    return results.ModelEvaluation(
        model=model, architecture="llama", params=1, tokenizer="t", vocab_size=2, domain="pubmed", domain_ppl=9.0,
        general_ppl={"wikitext2": 20.0}, word_ppl={"wikitext2": 40.0}, byte_ppl={"wikitext2": 2.0},
        bits_per_byte={"wikitext2": 1.0}, perplexity={}, pubmedqa_acc=accuracy, pubmedqa=_scores(accuracy),
        cloze_acc=0.9, cloze={}, completions=[], settings={}, seconds=1.0, threads=1,
        pubmedqa_settings={"lm-eval 0-shot": _scores(accuracy)})


def test_the_finetune_tables_keep_every_model_evaluated_so_far(tmp_path):
    """comparison.md and qa.json are rebuilt with the report from the result files: a model that an earlier
    invocation evaluated (another finetune.models list, as on a GPU lent in pieces) stays in them."""
    from lmlab import results
    from lmlab.config import load_study
    from lmlab.report.pretrained import finetune_results, write_finetune_summaries

    layout = StudyLayout(tmp_path)
    layout.model_dir("a").mkdir(parents=True)
    results.write(layout.base_evaluation("a"), _evaluation("a", 0.25))  # an earlier invocation: base only
    layout.finetune_run("b", "lora").mkdir(parents=True)
    results.write(layout.base_evaluation("b"), _evaluation("b", 0.5))
    results.write(layout.finetune_run("b", "lora") / results.AFTER, _evaluation("b/lora", 0.75))
    layout.task_run("b", "lora", "lora").mkdir(parents=True)
    results.write(layout.task_run("b", "lora", "lora") / results.TASK_SCORES,
                  results.TaskEvaluation("b/task", {"lm-eval 0-shot": _scores(1.0)}, {}, 1.0))
    config = load_study("smoke", ['finetune.models=["a", "b"]', 'finetune.modes=["lora"]',
                                  'finetune.task.starts=["lora"]', 'finetune.task.modes=["lora"]'])
    write_finetune_summaries(layout, finetune_results(layout, config))
    rows = json.loads(layout.qa.read_text())["rows"]
    assert [(r["model"], r["run"], r["accuracy"]) for r in rows] == [
        ("a", "pretrained", 0.25), ("b", "pretrained", 0.5), ("b", "domain LoRA", 0.75),
        ("b", "task from lora (lora)", 1.0)]
    assert (layout.finetune / "comparison.md").read_text().startswith("| metric | a before | b before | b after LoRA |")
    from lmlab.report.pretrained import analysis_lines

    plain = [line for line in analysis_lines(finetune_results(layout, config), {}) if "plain sliding windows" in line]
    assert plain and "`a` before, `b` before, `b` after LoRA." in plain[0]  # settings without start_every_window


def test_a_task_run_from_a_domain_start_is_compared_with_the_run_from_base_question_by_question(tmp_path):
    """Both task runs answered the same test questions: the report pairs them (the change in accuracy with a paired
    bootstrap interval, and how many questions only one got right) instead of only comparing two intervals."""
    from lmlab import results
    from lmlab.config import load_study
    from lmlab.pretrained.domain_data import pubmedqa_records
    from lmlab.report.pretrained import (
        analysis_lines,
        finetune_results,
        write_finetune_summaries,
    )

    questions = pubmedqa_records()["test"][:4]
    wrong = {"yes": "no", "no": "yes", "maybe": "yes"}

    def task(right: list[int]) -> results.TaskEvaluation:
        answers = {q.id: q.decision if i in right else wrong[q.decision] for i, q in enumerate(questions)}
        return results.TaskEvaluation("m", {"lm-eval 0-shot": _scores(len(right) / 4, answers=answers)}, {}, 1.0)

    layout = StudyLayout(tmp_path)
    layout.model_dir("m").mkdir(parents=True)
    results.write(layout.base_evaluation("m"), _evaluation("m", 0.25))
    for start, right in (("base", [0, 1]), ("lora", [0, 2, 3])):
        layout.task_run("m", start, "lora").mkdir(parents=True)
        results.write(layout.task_run("m", start, "lora") / results.TASK_SCORES, task(right))
    config = load_study("smoke", ['finetune.models=["m"]', 'finetune.modes=["lora"]', 'finetune.sizes.train_docs=[]',
                                  'finetune.task.starts=["base", "lora"]', 'finetune.task.modes=["lora"]'])
    found = finetune_results(layout, config)
    write_finetune_summaries(layout, found)
    [paired] = json.loads(layout.qa.read_text())["start_comparisons"]
    assert (paired["run"], paired["against"], paired["questions"]) == ("task from lora (lora)", "task from base (lora)", 4)
    assert paired["change"] == 0.25 and (paired["only_run_right"], paired["only_against_right"]) == (2, 1)
    low, high = paired["change_ci95"]
    assert -1 <= low <= 0.25 <= high <= 1
    [line] = [x for x in analysis_lines(found, {}) if "vs task from base" in x]
    assert "paired over the 4 questions: +0.250" in line and "2 right only from the domain start, 1 only from base" in line


def test_the_report_names_rows_made_from_an_earlier_training(tmp_path):
    """Cross-domain and sample rows record the digest of the final.json they were made from: where a later run
    replaced that training and the rows were not made again, the report says so and names their run."""
    from lmlab.report.document import _earlier_training

    layout = StudyLayout(tmp_path)
    for model in ("rnn", "lstm"):
        layout.ptb_run(model).mkdir(parents=True)
        (layout.ptb_run(model) / rundir.FINAL).write_text(f'{{"model": "{model}"}}')
    current = rundir.final_digest(layout.ptb_run("rnn"))
    rows = [{"model": "rnn", "made_from": current, "run": "ptb/rnn"},
            {"model": "lstm", "made_from": "0123456789abcdef", "run": "ptb/lstm-2026-11-28"},
            {"model": "smollm2-135m", "made_from": "fedcba9876543210"}]  # not a PTB run: nothing to compare
    assert _earlier_training(rows, layout) == [
        "Made with an earlier training than the PTB table above: **lstm** (`ptb/lstm-2026-11-28`).", ""]
    assert _earlier_training(rows[:1], layout) == []
