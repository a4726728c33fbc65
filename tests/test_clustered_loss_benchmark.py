"""benchmarks/clustered_loss.py: it times the clustered softmax's loss as one node and composed, for each recurrent
preset with clusters, and says which presets it skips."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_both_losses_are_timed_on_each_clustered_preset_and_a_preset_without_clusters_is_named():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "clustered_loss.py"), "--threads", "1",
                           "--rounds", "1", "--steps", "1", "--models", "rnn", "lstm", "gru"],
                          capture_output=True, text=True, check=True)
    rows = re.findall(r"^(rnn|lstm)\s+(\d+) x (\d+)\s+\[2000\]\s+([\d.]+)\s+([\d.]+)\s+[\d.]+x", done.stdout, flags=re.M)
    assert [(name, rows_, width) for name, rows_, width, *_ in rows] == [("rnn", "1400", "320"), ("lstm", "700", "256")]
    assert all(float(one) > 0 and float(composed) > 0 for *_, one, composed in rows)
    assert re.search(r"^gru .*no clustered softmax: not timed$", done.stdout, flags=re.M)
