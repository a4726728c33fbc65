"""Compiled CPU kernels for the from-scratch recurrent cells (C++, built on first use).

``torch.utils.cpp_extension.load`` compiles each source once per machine into torch's extension cache
(``TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``; about 40 s on two cores) and loads it from
there afterwards. Where it cannot be built (no C++ compiler or ninja, an unsupported platform), the layers run
their tensor-operation form instead, which computes the same function, and one warning says so.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import shutil
from pathlib import Path

import torch

log = logging.getLogger("lmlab")


def _cpu_flags() -> list[str]:
    """-ffast-math lets GCC vectorise exp() through glibc's vector math library; AVX2/FMA where the CPU has them
    (the flags are part of torch's cache key, so a machine without them builds its own copy). They are compile
    flags only: the link adds no crtfastmath, so loading the cell leaves the process's denormals as they were."""
    flags = ["-O3", "-ffast-math", "-fopenmp-simd"]
    if platform.machine() in ("x86_64", "AMD64"):
        cpuinfo = Path("/proc/cpuinfo")
        words = set(cpuinfo.read_text().split()) if cpuinfo.is_file() else set()
        flags += [f"-m{feature}" for feature in ("avx2", "fma") if feature in words]
    return flags


def build_ahead(net: torch.nn.Module) -> None:
    """Build now the compiled kernels that ``net``'s layers will call (each layer with one has
    ``compiled_kernel(like)``), so that a first build is paid before a time budget's clock starts, not inside it."""
    for module in net.modules():
        if hasattr(module, "compiled_kernel"):
            module.compiled_kernel(next(module.parameters()))


def _ninja_on_path() -> None:
    """torch looks ninja up on PATH; the pip package's binary sits in the environment's bin folder, which is off
    PATH when lmlab runs as ``.venv/bin/python`` without the environment activated."""
    if shutil.which("ninja") is None:
        try:
            import ninja
        except ImportError:
            return
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


@functools.cache
def lstm_cell():
    """The fused LSTM cell (``lstm_cell.cpp``: ``forward_step``, ``backward_step``), or None if it cannot be built."""
    from torch.utils import cpp_extension

    log.info("loading the compiled LSTM cell (built once per machine, about 40 s)")
    _ninja_on_path()
    try:
        return cpp_extension.load(name="lmlab_lstm_cell", sources=[str(Path(__file__).with_name("lstm_cell.cpp"))],
                                  extra_cflags=_cpu_flags())
    except Exception as error:  # noqa: BLE001 - any build failure means: run the tensor-operation cell
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        log.warning("lmlab: the compiled LSTM cell could not be built (%s); the LSTM runs its tensor-operation "
                    "cell instead (same results, a slower step). Install a C++ compiler and ninja to use it, or "
                    "set model.compiled_cell=false to skip it.", reason)
        return None
