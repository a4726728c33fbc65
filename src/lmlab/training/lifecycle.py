"""Starting, resuming and refusing runs: one rule for every recipe that writes a run directory.

- a new run needs an empty ``--out`` (a ``config.json`` alone, left by a run that failed before its first
  checkpoint, does not count);
- ``--resume`` continues from ``last.pt`` if the recorded config differs only in runtime keys (see
  :func:`lmlab.config.runtime_keys`); with no ``last.pt`` there is nothing to resume and the run starts anew;
- a finished run is never overwritten; it resumes only while its ``last.pt`` is kept and only with a larger
  budget (the recipe checks the budget once it knows the progress).
"""

from __future__ import annotations

import logging
from pathlib import Path

from lmlab.config import changed_keys, to_dict
from lmlab.errors import LmlabError
from lmlab.training import rundir

log = logging.getLogger("lmlab")


def prepare(out: Path, cfg, resume: bool, main: bool = True) -> bool:
    """Check ``out`` against the request, write ``config.json``; True when the run continues from last.pt."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LmlabError(f"--out {out} is a file: give a directory")
    finished = (out / rundir.FINAL).is_file()
    has_state = (out / rundir.LAST).is_file()
    if not resume and finished:
        raise LmlabError(f"{out} already holds a run (finished): choose another --out or remove it")
    if not resume and (has_state or (out / rundir.METRICS).is_file()):
        raise LmlabError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
    if resume and finished and not has_state:
        raise LmlabError(f"{out} holds a finished run with nothing to resume: choose another --out")
    if resume and not has_state:
        if main:
            log.info("nothing to resume in %s; starting a new run", out)
        resume = False
    if resume:
        changed = changed_keys(rundir.read_json(out / rundir.CONFIG), cfg)
        if changed:
            raise LmlabError(f"cannot resume {out}: its config differs in {', '.join(changed)}; "
                             "use the same --set values")
    if main:
        out.mkdir(parents=True, exist_ok=True)
        if not resume:
            rundir.remove(out / rundir.METRICS)
        rundir.write_json(out / rundir.CONFIG, to_dict(cfg))
    return resume


def refuse_if_done(out: Path, done: int, budget: int, unit: str, key: str) -> None:
    """A resumed run that has already used its budget has nothing to do: say how to give it more."""
    if done >= budget and (Path(out) / rundir.FINAL).is_file():
        raise LmlabError(f"{out} already finished {done} {unit}: raise {key} above {done} to continue it")


def abandon(out: Path, main: bool = True) -> None:
    """A run that failed before its first checkpoint leaves nothing a retry would trip over."""
    if main and not (Path(out) / rundir.LAST).is_file() and not (Path(out) / rundir.FINAL).is_file():
        for name in (rundir.CONFIG, rundir.METRICS, rundir.VOCAB):
            rundir.remove(Path(out) / name)
