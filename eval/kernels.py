"""Loader of the optional compiled kernels, each with a PyTorch twin: built lazily on first
use (``torch.utils.cpp_extension.load``, cached by torch under ``TORCH_EXTENSIONS_DIR``),
never at import.

The kernel sources live in the repository's top-level ``cuda/`` folder, which is *not* a
Python package: a regular package named ``cuda`` on ``sys.path`` would shadow NVIDIA's
``cuda`` namespace package (``cuda-bindings``, ``cuda.pathfinder``, dependencies of the
CUDA build of torch). They are found by path: ``eval/_cuda/`` in an installed wheel
(``setup.py`` ships ``cuda/`` there), else ``<checkout>/cuda/`` (editable install, source
checkout).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

_PACKAGE = Path(__file__).resolve().parent
KERNEL_DIRS: tuple[Path, ...] = (_PACKAGE / "_cuda", _PACKAGE.parent / "cuda")


def kernel_source(filename: str) -> Path:
    """Path of a kernel source file (``rayiou_dvr.cu``) in the first of :data:`KERNEL_DIRS`
    that has it.

    Raises:
        FileNotFoundError: no kernel directory has it.
    """
    for folder in KERNEL_DIRS:
        if (folder / filename).is_file():
            return folder / filename
    raise FileNotFoundError(f"no kernel source {filename} in {[str(d) for d in KERNEL_DIRS]}")


@lru_cache(maxsize=None)
def load_kernel(name: str) -> ModuleType:
    """Build (once) and return the extension compiled from ``<name>.cpp`` (a CPU build of a
    kernel) or ``<name>.cu`` (CUDA).

    Raises:
        RuntimeError: a CUDA kernel without a CUDA device, or the build failed (the compiler
            output is in the message).
        FileNotFoundError: no such kernel source.
    """
    from torch.utils.cpp_extension import load

    try:
        cpu_source = kernel_source(f"{name}.cpp")
    except FileNotFoundError:
        cpu_source = None
    if cpu_source is not None:
        # No FMA contraction: results must equal the PyTorch twin bit for bit.
        return load(name=f"selfsup_{name}", sources=[str(cpu_source)],
                    extra_cflags=["-O3", "-ffp-contract=off"], verbose=False)
    source = kernel_source(f"{name}.cu")
    if not torch.cuda.is_available():
        raise RuntimeError(f"the CUDA kernel {name} needs a CUDA device; use the PyTorch twin")
    return load(name=f"selfsup_{name}", sources=[str(source)], extra_cuda_cflags=["-O3"], verbose=False)


def rayiou_dvr_march_cpu(occupied: Tensor, origin_vox: Tensor, end_vox: Tensor) -> tuple[Tensor, Tensor]:
    """Compiled CPU twin of ``eval.rayiou.march_first_hit`` (same arguments and results)."""
    dist, index = load_kernel("rayiou_dvr_cpu").march(
        occupied.cpu().bool().contiguous(),
        origin_vox.cpu().float().contiguous(),
        end_vox.cpu().float().contiguous(),
    )
    return dist, index


def rayiou_dvr_march(occupied: Tensor, origin_vox: Tensor, end_vox: Tensor) -> tuple[Tensor, Tensor]:
    """CUDA twin of ``eval.rayiou.march_first_hit`` (same arguments and results)."""
    dist, index = load_kernel("rayiou_dvr").march(
        occupied.cuda().bool().contiguous(),
        origin_vox.cuda().float().contiguous(),
        end_vox.cuda().float().contiguous(),
    )
    return dist, index
