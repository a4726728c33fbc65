"""benchmarks/recurrence_ab.py: it loads each scratch recurrence from two source trees and times both; run
against this tree as its own baseline, it reports a time for both sides of every layer."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ab_runs_every_layer_against_a_baseline_tree():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "recurrence_ab.py"), "--baseline", str(ROOT / "src"),
                           "--threads", "1", "--rounds", "1", "--windows", "1"], capture_output=True, text=True, check=True)
    rows = re.findall(r"^(rnn|gru|lstm)\s+baseline\s+([\d.]+) ms\s+current\s+([\d.]+) ms\s+speed-up [\d.]+x$",
                      done.stdout, flags=re.M)
    assert [row[0] for row in rows] == ["rnn", "gru", "lstm"]
    assert all(float(base) > 0 and float(cur) > 0 for _, base, cur in rows)
