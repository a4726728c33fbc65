"""The fine-tuning loop on tiny random models: learning, saved weights, LoRA merge, resume, CLI and errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from lmlab import cli
from lmlab.errors import LmlabError
from lmlab.pretrained import registry
from lmlab.pretrained.domain_data import load_domain, pack
from lmlab.recipes import finetune
from lmlab.training import rundir

SENTENCES = ["The kidney filters the blood and removes waste.", "Insulin lowers the level of glucose in the blood.",
             "The heart pumps blood through the arteries.", "Antibiotics treat infections caused by bacteria."]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "medical.txt"
    path.write_text("\n\n".join(f"Case {i}. " + " ".join(SENTENCES[(i + k) % 4] for k in range(4)) for i in range(60)))
    return path


def _cfg(model, corpus, *overrides, lora=False):
    return finetune.configure(str(model), f"text:{corpus}", "smoke",
                              ["train.general_corpus=", "data.train_docs=0", "data.seq_len=32", *overrides], lora=lora)


def _valid_loss(model_dir, cfg) -> float:
    model, tok = registry.load(str(model_dir))
    chunks = pack(load_domain(cfg.data.dataset).valid, tok, cfg.data.seq_len)[: cfg.data.valid_chunks]
    with torch.no_grad():
        return sum(model(input_ids=c[None], labels=c[None]).loss.item() for c in chunks) / len(chunks)


def test_full_finetune_learns_and_saves_exactly_the_best_weights(tiny_llama, corpus, tmp_path):
    cfg = _cfg(tiny_llama, corpus, "train.steps=40", "train.eval_every=10", "optim.lr=1e-2", "optim.warmup_steps=0")
    final = finetune.run(cfg, tmp_path / "run")
    rows = rundir.read_jsonl(tmp_path / "run" / rundir.METRICS)
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, 10, 20, 30, 40]
    assert final.best_valid_loss < 0.5 * evals[0]["valid_loss"]  # a repetitive corpus is learnt fast
    assert len([r for r in rows if r["kind"] == "train"]) == 40
    # save/load round trip: the saved model/ scores exactly the best validation loss the loop measured
    assert _valid_loss(tmp_path / "run" / "model", cfg) == pytest.approx(final.best_valid_loss, rel=1e-5)
    assert (tmp_path / "run" / "curves.png").stat().st_size > 1000
    assert not (tmp_path / "run" / rundir.LAST).exists()


def test_lora_merged_model_equals_the_unmerged_adapter(tiny_llama, corpus, tmp_path):
    from peft import PeftModel

    cfg = _cfg(tiny_llama, corpus, "train.steps=4", "train.eval_every=4", "lora.lr=1e-2", lora=True)
    final = finetune.run(cfg, tmp_path / "run")
    assert final.mode == "lora" and final.params_trainable < 0.1 * final.params_total
    x = torch.tensor([[50256, 464, 21919, 16628, 262, 2910, 13]])
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model")  # plain transformers, no peft
    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    unmerged = PeftModel.from_pretrained(base, tmp_path / "run" / "adapter").eval()
    with torch.no_grad():
        a, b = merged(input_ids=x).logits, unmerged(input_ids=x).logits
        c = AutoModelForCausalLM.from_pretrained(tiny_llama)(input_ids=x).logits
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(a, c, atol=1e-4)  # the adapter changed the model


def test_interrupted_run_resumes_to_the_same_result(tiny_gpt2, corpus, tmp_path, monkeypatch):
    cfg = _cfg(tiny_gpt2, corpus, "train.steps=6", "train.eval_every=2", "optim.lr=1e-3")
    straight = finetune.run(cfg, tmp_path / "straight")

    calls = {"n": 0}
    real = finetune._checkpoint

    def stop_after_second_checkpoint(*args, **kwargs):
        real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(finetune, "_checkpoint", stop_after_second_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        finetune.run(cfg, tmp_path / "resumed")
    monkeypatch.setattr(finetune, "_checkpoint", real)
    with pytest.raises(LmlabError, match="--resume"):
        finetune.run(cfg, tmp_path / "resumed")
    resumed = finetune.run(cfg, tmp_path / "resumed", resume=True)
    losses = lambda d: [r["train_loss"] for r in rundir.read_jsonl(d / rundir.METRICS) if r["kind"] == "train"]
    assert losses(tmp_path / "resumed") == pytest.approx(losses(tmp_path / "straight"), rel=1e-5)
    assert resumed.best_valid_loss == pytest.approx(straight.best_valid_loss, rel=1e-5)


def test_gpt2_architecture_through_the_cli(tiny_gpt2, corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["finetune", "--model", str(tiny_gpt2), "--text-file", str(corpus), "--preset", "smoke",
                     "--out", str(out), "--set", "train.general_corpus=", "--set", "data.train_docs=0",
                     "--set", "data.seq_len=32"]) == 0
    final = json.loads((out / "final.json").read_text())
    assert final["steps"] == 4 and final["tokens_trained"] == 4 * 2 * 32
    assert math.isfinite(final["best_valid_ppl"]) and final["train_tokens_per_s"] > 0
    # a finished run is never overwritten
    assert cli.main(["finetune", "--model", str(tiny_gpt2), "--text-file", str(corpus), "--preset", "smoke",
                     "--out", str(out)]) == 2
    assert "already holds a run (finished)" in capsys.readouterr().err


def test_bad_models_and_files_are_one_line_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LmlabError, match="unknown model 'no-such-model-anywhere'"):
        registry.load("no-such-model-anywhere")
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file at all")
    monkeypatch.setenv("LMLAB_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(LmlabError, match="could not be read as GGUF"):
        registry.load(str(bad))
    with pytest.raises(LmlabError, match="not found"):
        registry.load(str(tmp_path / "missing.gguf"))
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(LmlabError, match="no config.json"):
        registry.load(str(empty))
    assert cli.main(["ft-eval", "no-such-model-anywhere", "--preset", "smoke"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lmlab: error: unknown model") and "Traceback" not in "\n".join(err)


def test_corrupt_checkpoint_directory_is_a_one_line_error(tiny_gpt2, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_gpt2, broken)
    (broken / "model.safetensors").write_bytes(b"truncated")
    with pytest.raises(LmlabError, match="corrupt"):
        registry.load(str(broken))


def test_two_processes_under_torchrun_share_the_work(tiny_gpt2, corpus, tmp_path):
    """The same command under torchrun (accelerate underneath): each process takes its share of the global
    batch and the logged loss is the global batch's."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "lmlab",
           "finetune", "--model", str(tiny_gpt2), "--text-file", str(corpus), "--preset", "smoke",
           "--out", str(tmp_path / "ddp"), "--set", "train.general_corpus=", "--set", "data.train_docs=0",
           "--set", "data.seq_len=32"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    final = json.loads((tmp_path / "ddp" / "final.json").read_text())
    assert final["processes"] == 2 and final["tokens_trained"] == 4 * 2 * 2 * 32
    assert (tmp_path / "ddp" / "model" / "config.json").is_file()


def test_verdict_examples_make_only_the_verdict_a_target():
    from lmlab.data.documents import QARecord
    from lmlab.pretrained.examples import IGNORE, verdict_examples
    from tests.conftest import gpt2_tokenizer

    tok = gpt2_tokenizer()
    records = [QARecord("1", "Does it work?", "", "It does, in most patients.", "yes", ("Trial. " * 50,)),
               QARecord("2", "Is it safe?", "", "Not clearly.", "maybe", ("Short.",))]
    ex = verdict_examples(records, tok, seq_len=48)
    assert ex.input_ids.shape[1] <= 48 and ex.weights.tolist() == [1, 1]
    for i, verdict in enumerate(["yes", "maybe"]):
        targets = ex.labels[i][ex.labels[i] != IGNORE].tolist()
        assert tok.decode(targets) == f" {verdict}"
        n = int(ex.attention_mask[i].sum())
        assert tok.decode(ex.input_ids[i, :n].tolist()).endswith(f"\nAnswer: {verdict}")
    long = verdict_examples(records[:1], tok, seq_len=64, long_answer=True)
    assert tok.decode(long.labels[0][long.labels[0] != IGNORE].tolist()) == " yes. It does, in most patients.<|endoftext|>"


def test_task_finetune_trains_on_training_ids_and_keeps_the_most_accurate_checkpoint(domain_data, tiny_gpt2, tmp_path,
                                                                                        monkeypatch):
    from lmlab.pretrained import examples
    from lmlab.pretrained.domain_data import pubmedqa_records

    test_ids = {r.id for r in pubmedqa_records()["test"]}
    real, used = examples.verdict_examples, []
    monkeypatch.setattr(finetune, "verdict_examples", lambda records, *a, **k: used.append(records) or real(records, *a, **k))
    cfg = finetune.configure(str(tiny_gpt2), None, "smoke", ["train.general_corpus=", "data.seq_len=64",
                             "train.steps=4", "train.eval_every=2", "optim.lr=1e-3"], task="pubmedqa")
    final = finetune.run(cfg, tmp_path / "task")
    assert used and all(not {r.id for r in records} & test_ids for records in used)
    evals = [r for r in rundir.read_jsonl(tmp_path / "task" / rundir.METRICS) if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, 2, 4] and all(0 <= r["valid_acc"] <= 1 for r in evals)
    best = max(evals[1:], key=lambda r: r["valid_acc"])  # the first of the most accurate evaluations after step 0
    assert final.task == "pubmedqa" and final.best_valid_acc == best["valid_acc"] and final.best_step == best["step"]
    assert (tmp_path / "task" / "model" / "config.json").is_file()
