#!/bin/bash
# When the SPIN pairs are cached, restart the DPO run with fewer steps so it ends inside the session.
export LMLAB_DATA_DIR=/work/shared/data
while [ -z "$(ls ~/.cache/lmlab/pairs/pubmed-spin-valid-*.jsonl 2>/dev/null)" ]; do sleep 10; done
sleep 5
pkill -f "lmlab dpo --model runs/cpu/lora/model" ; pkill -f "runs/cpu/dpo_spin.sh"
sleep 5
rm -rf runs/cpu/dpo-spin
.venv/bin/lmlab dpo --model runs/cpu/lora/model --pairs pubmed-spin --lora --preset cpu --threads 1 \
  --set pairs.context_tokens=128 --set dpo.max_length=256 --set train.steps=60 --set eval.kl_samples=16 \
  --out runs/cpu/dpo-spin
