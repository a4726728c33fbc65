"""lmlab serve: a local page to compare models by sampling and by per-token surprisal."""
