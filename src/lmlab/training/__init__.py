"""What every training recipe needs: run directories, resume state, schedules, best/early-stop tracking,
metrics logging and the runtime (device, threads, processes). Recipes (``train``, ``finetune``, ``dpo``) use
these; nothing here knows a recipe."""
