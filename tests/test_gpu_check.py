"""scripts/gpu_check.py (make gpu-check): its whole path runs on a CPU with tiny settings, and without CUDA the
GPU check fails in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_without_cuda_the_check_fails_in_one_line():
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 1 and "no CUDA device is visible" in done.stdout and "Traceback" not in done.stderr


def test_every_check_runs_on_a_cpu_up_to_cuda(ptb_available, domain_data, tiny_llama, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--smoke", "--model", str(tiny_llama),
                           "--out", str(tmp_path)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [r["check"] for r in report["rows"]] == ["train rnn", "train gru", "train lstm", "train transformer",
                                                    "train rnn scratch", "train gru scratch", "train lstm scratch",
                                                    f"finetune {tiny_llama}", f"dpo {tiny_llama}"]
    assert all("error" not in r for r in report["rows"]) and "gpu-check: passed" in done.stdout
    assert all(r["tokens_per_s"] > 0 and 0 < r["mfu"] for r in report["rows"][:8])
