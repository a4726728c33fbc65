"""lmlab data list / download."""

from __future__ import annotations

from lmlab.data import corpora


def list_corpora() -> None:
    root = corpora.data_dir()
    print(f"data directory: {root} (set LMLAB_DATA_DIR to change it)")
    print(f"{'corpus':<14} {'status':<18} description")
    for corpus in corpora.CORPORA.values():
        files = corpora.file_status(corpus, root)
        present = sum(p for _, p, _ in files)
        if present == 0:
            status = "missing"
        elif present < len(files):
            status = f"partial {present}/{len(files)}"
        elif all(ok for _, _, ok in files):
            status = "ok (sha256 match)"
        else:
            status = "CHECKSUM MISMATCH"
        print(f"{corpus.name:<14} {status:<18} {corpus.description}")


def download(name: str, mirror: str | None) -> None:
    for path in corpora.download(name, mirror=mirror):
        print(f"{path} (sha256 verified)")
