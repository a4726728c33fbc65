#!/bin/bash
# GRPO on PubMedQA verdicts from SmolLM2-135M-Instruct (issue #13), after the task chain frees its core.
export LMLAB_DATA_DIR=/work/shared/data
while pgrep -f "runs/cpu/chain.sh" > /dev/null; do sleep 20; done
.venv/bin/lmlab rl --model smollm2-135m --preset cpu --threads 1 --out runs/cpu/rl \
  --set train.steps=12 --set data.prompt_tokens=160
