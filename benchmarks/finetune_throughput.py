"""Our fine-tuning loop against ``transformers.Trainer``: same model, data, batch order, optimizer and schedule,
in one run. Prints tokens/s, MFU and the per-step loss of both, and the ratio (target: ours >= Trainer).

Both sides: AdamW (betas 0.9/0.95, no weight decay), cosine decay to 10% without warm-up, clipping at 1.0,
fp32; the Trainer gets exactly the chunks our loop draws, in the same order (sequential sampler). Time is the
sum of optimizer-step times on each side, the first ``--warmup`` steps (2) excluded as warm-up (model loading, evaluation and
saving excluded from both).
MFU = model FLOP/s / the fp32 GEMM peak measured in this run; a training token costs 6 x (matmul parameters)
+ 12 x layers x seq_len x hidden for attention (4 x ... with LoRA: frozen weights get no weight gradients).

``--profile`` then prints where one training step's time goes (forward, loss, backward, clipping and AdamW on
the batch shape, torch.profiler self time): matmuls, attention, softmax/cross-entropy, the other element-wise
ops (RMSNorm, SiLU, rotary embeddings, residuals), the optimiser, and Python between operators — what stands
between the measured MFU and the GEMM peak.

    python benchmarks/finetune_throughput.py [--model smollm2-135m] [--steps 6] [--warmup 2] [--batch 4] [--seq-len 256]
                                             [--lora] [--profile]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from train_throughput import (
    MATMUL,
    SOFTMAX_CE,
    gemm_peak,
    print_profile,
    profile_shares,
)

from lmlab.pretrained import registry
from lmlab.pretrained.domain_data import limit, load_domain, pack
from lmlab.pretrained.lora import with_lora
from lmlab.recipes import finetune
from lmlab.training import rundir


def flops_per_token(model, seq_len: int, lora: bool) -> float:
    c = model.config
    params = sum(p.numel() for p in model.parameters())  # tied embeddings: counted once, as the output matmul
    return (4 if lora else 6) * params + 12 * c.num_hidden_layers * seq_len * c.hidden_size


def ours(args, out: Path) -> tuple[float, list[float]]:
    overrides = [f"train.steps={args.steps}", f"train.batch_size={args.batch}", "train.grad_accum=1",
                 f"train.eval_every={args.steps}", "data.valid_chunks=1", "train.general_corpus=",
                 f"data.seq_len={args.seq_len}", f"data.train_docs={args.docs}", "optim.warmup_steps=0"]
    cfg = finetune.configure(args.model, "pubmed", "cpu", overrides, lora=args.lora)
    finetune.run(cfg, out)
    steps = [r for r in rundir.read_jsonl(out / rundir.METRICS) if r["kind"] == "train"]
    tokens = args.batch * args.seq_len
    timed = steps[args.warmup:]
    return tokens * len(timed) / sum(tokens / r["tokens_per_s"] for r in timed), [r["train_loss"] for r in steps], cfg


def trainer(args, cfg, out: Path) -> tuple[float, list[float]]:
    from torch.utils.data import SequentialSampler
    from transformers import Trainer, TrainerCallback, TrainingArguments

    model, tokenizer = registry.load(args.model)
    if args.lora:
        model = with_lora(model, cfg.lora)
    data = cfg.data
    chunks = pack(limit(load_domain("pubmed").train, data.train_docs, data.seed), tokenizer, data.seq_len)
    order = torch.cat([finetune._batch_rows(s, args.batch, len(chunks), data.seed) for s in range(1, args.steps + 1)])
    dataset = [{"input_ids": chunks[i], "labels": chunks[i]} for i in order.tolist()]

    class InOrder(Trainer):
        def _get_train_sampler(self, *a, **k):
            return SequentialSampler(self.train_dataset)

    class StepTimer(TrainerCallback):
        seconds: list[float] = []

        def on_step_begin(self, *a, **k):
            self.started = time.perf_counter()

        def on_step_end(self, *a, **k):
            StepTimer.seconds.append(time.perf_counter() - self.started)

    lr = cfg.lora.lr if args.lora else cfg.optim.lr
    targs = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=args.batch, max_steps=args.steps, learning_rate=lr,
        lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": cfg.optim.min_lr_ratio},
        warmup_steps=0, adam_beta2=0.95, weight_decay=0.0, max_grad_norm=cfg.optim.grad_clip, logging_steps=1,
        report_to=[], save_strategy="no", use_cpu=True, seed=0, dataloader_num_workers=0, disable_tqdm=True)
    hf = InOrder(model=model, args=targs, train_dataset=dataset, callbacks=[StepTimer()])
    hf.train()
    losses = [r["loss"] for r in hf.state.log_history if "loss" in r]
    timed = StepTimer.seconds[args.warmup:]
    return len(timed) * args.batch * args.seq_len / sum(timed), losses, model


ATTENTION = ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
             "aten::_scaled_dot_product_attention_math", "aten::_softmax", "aten::_softmax_backward_data")


def step_profile(model, args, lr: float) -> dict[str, float]:
    """Bucketed shares of one of our loop's steps (AdamW over the trainable weights, clipping at 1.0)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    tokens = torch.randint(0, model.config.vocab_size, (args.batch, args.seq_len))
    model.train()

    def step():
        loss = model(input_ids=tokens, labels=tokens).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        with torch.profiler.record_function("optimizer"):
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()

    return profile_shares(step, 2, {"attention": ATTENTION, "matmul": MATMUL,
                                    "softmax + cross-entropy": tuple(op for op in SOFTMAX_CE if op not in ATTENTION)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--docs", type=int, default=200, help="training documents to pack")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=2,
                        help="steps left out of each side's timing: our loop runs first, in a cold process, and its "
                             "first steps were 15-35%% slower than its later ones (1 until 2026-12-07)")
    parser.add_argument("--lora", action="store_true")
    parser.add_argument("--profile", action="store_true", help="also print where one training step's time goes")
    args = parser.parse_args()
    if not 0 <= args.warmup < args.steps:
        parser.error(f"--warmup {args.warmup} leaves no step of --steps {args.steps} to time")
    if args.threads:
        torch.set_num_threads(args.threads)
    peak = gemm_peak()
    with tempfile.TemporaryDirectory() as tmp:
        ours_tok_s, ours_losses, cfg = ours(args, Path(tmp) / "ours")
        hf_tok_s, hf_losses, model = trainer(args, cfg, Path(tmp) / "trainer")
    peak = max(peak, gemm_peak())  # the fastest of a reading before and one after: MFU errs low, never high
    flops = flops_per_token(model, args.seq_len, args.lora)
    print(f"\n{args.model} ({'LoRA' if args.lora else 'full'}), batch {args.batch} x {args.seq_len} tokens, "
          f"{args.steps} steps, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"fp32 GEMM peak {peak / 1e9:.1f} GFLOP/s, {flops / 1e6:.0f} MFLOP per training token")
    print(f"{'loop':<22} {'tokens/s':>9} {'GFLOP/s':>8} {'MFU':>6}   loss per step")
    for name, tok_s, losses in (("lmlab (ours)", ours_tok_s, ours_losses), ("transformers.Trainer", hf_tok_s, hf_losses)):
        print(f"{name:<22} {tok_s:>9.1f} {flops * tok_s / 1e9:>8.1f} {flops * tok_s / peak:>6.1%}   "
              + " ".join(f"{x:.4f}" for x in losses))
    diff = max(abs(a - b) for a, b in zip(ours_losses, hf_losses))
    print(f"ours / Trainer tokens/s: {ours_tok_s / hf_tok_s:.3f}; largest per-step loss difference: {diff:.2e}")
    if args.profile:
        lr = cfg.lora.lr if args.lora else cfg.optim.lr
        print_profile({args.model: step_profile(model, args, lr)},
                      "where one training step's wall time goes (torch.profiler self time; shares of the step)")


if __name__ == "__main__":
    main()
