#!/bin/bash
# Domain-adapted start for PubMedQA task fine-tuning at cpu scale (issue #12), one thread beside development work.
export LMLAB_DATA_DIR=/work/shared/data
L=.venv/bin/lmlab
$L finetune --preset cpu --lora --out runs/cpu/lora --set train.threads=1 || exit 1
$L finetune --task pubmedqa --model runs/cpu/lora/model --lora --preset cpu --set data.seq_len=320 --set train.steps=60 \
  --set train.eval_every=20 --set train.general_chunks=8 --set train.threads=1 --out runs/cpu/task-lora-lora || exit 1
$L ft-eval runs/cpu/task-lora-lora/model --task --threads 1 --out runs/cpu/task-lora-lora --name pubmedqa
