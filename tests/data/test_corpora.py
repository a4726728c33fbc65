"""The corpus registry: listing, checksums, downloads (from a local HTTP server) and missing-corpus errors."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading

import pytest

from lmlab.cli import main
from lmlab.data import corpora
from lmlab.errors import LmlabError


@pytest.fixture
def mirror(tmp_path, ptb_available):
    """An HTTP server on 127.0.0.1 serving a copy of the shared data directory, with one file tampered."""
    root = tmp_path / "mirror"
    shutil.copytree(ptb_available / "ptb", root / "ptb")
    (root / "tinyshakespeare").mkdir()
    (root / "tinyshakespeare" / "input.txt").write_text("not the real text\n")

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # keep stderr for the CLI's own messages
            pass

    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_fetches_and_verifies(mirror, tmp_path, monkeypatch, capsys):
    target = tmp_path / "data"
    monkeypatch.setenv("LMLAB_DATA_DIR", str(target))
    assert main(["data", "download", "ptb", "--mirror", mirror]) == 0
    assert "sha256 verified" in capsys.readouterr().out
    assert all(ok for _, _, ok in corpora.file_status(corpora.CORPORA["ptb"], target))
    main(["data", "list"])
    listing = capsys.readouterr().out
    assert "ptb" in listing and "ok (sha256 match)" in listing


def test_download_rejects_a_checksum_mismatch_and_keeps_nothing(mirror, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LMLAB_DATA_DIR", str(tmp_path / "data"))
    assert main(["data", "download", "shakespeare", "--mirror", mirror]) == 2
    err = capsys.readouterr().err
    assert "checksum mismatch" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "data" / "tinyshakespeare" / "input.txt").exists()


def test_unreachable_source_is_one_clear_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LMLAB_DATA_DIR", str(tmp_path))
    assert main(["data", "download", "ptb", "--mirror", "http://127.0.0.1:9"]) == 2
    assert "could not download" in capsys.readouterr().err


def test_list_reports_missing_and_mismatched_files(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LMLAB_DATA_DIR", str(tmp_path))
    (tmp_path / "tinyshakespeare").mkdir()
    (tmp_path / "tinyshakespeare" / "input.txt").write_text("tampered\n")
    main(["data", "list"])
    out = capsys.readouterr().out
    assert "CHECKSUM MISMATCH" in out and "missing" in out


def test_missing_corpus_names_both_ways_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("LMLAB_DATA_DIR", str(tmp_path))
    with pytest.raises(LmlabError) as e:
        corpora.split_path("ptb", "train")
    assert "LMLAB_DATA_DIR" in str(e.value) and "lmlab data download ptb" in str(e.value)


def test_unknown_corpus_lists_known_names():
    with pytest.raises(LmlabError, match="choose one of ptb"):
        corpora.get_corpus("enwik8")
