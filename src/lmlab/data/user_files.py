"""Reading a user's own files (text, JSON lines) with one-line errors that name the file and the line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from lmlab.errors import LmlabError


def read_text(path: Path, what: str) -> str:
    """The UTF-8 text of ``path``; ``what`` says what the file should be, for the error message."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise LmlabError(f"{what} {path} is a directory: give the path of a file")
    if not path.is_file():
        raise LmlabError(f"{what} {path} not found: check the path")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise LmlabError(f"{path} is not UTF-8 text ({e.reason}): convert it first") from e


def read_jsonl(path: Path, what: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-empty line of a JSON-lines file."""
    for n, line in enumerate(read_text(path, what).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise LmlabError(f"{path}:{n} is not a JSON object ({e.msg}): one object per line") from e
        if not isinstance(row, dict):
            raise LmlabError(f"{path}:{n} is not a JSON object: one object per line")
        yield n, row
