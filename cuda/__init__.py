"""Optional CUDA kernels, each with a PyTorch twin; built lazily on first use, never at import.

`load_kernel(name)` compiles `cuda/<name>.cu` with torch.utils.cpp_extension.load the first
time it is called in a process (cached by torch under TORCH_EXTENSIONS_DIR afterwards).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

_HERE = Path(__file__).resolve().parent


@lru_cache(maxsize=None)
def load_kernel(name: str) -> ModuleType:
    """Build (once) and return the extension compiled from `cuda/<name>.cu` (CUDA) or
    `cuda/<name>.cpp` (a CPU build of a kernel).

    Raises:
        RuntimeError: no CUDA device, or the build failed (the compiler output is in the
            message).
        FileNotFoundError: no such kernel source.
    """
    from torch.utils.cpp_extension import load

    cpu_source = _HERE / f"{name}.cpp"
    if cpu_source.exists():
        # No FMA contraction: results must equal the PyTorch twin bit for bit.
        return load(name=f"selfsup_{name}", sources=[str(cpu_source)],
                    extra_cflags=["-O3", "-ffp-contract=off"], verbose=False)
    source = _HERE / f"{name}.cu"
    if not source.exists():
        raise FileNotFoundError(f"no kernel source {source} or {cpu_source}")
    if not torch.cuda.is_available():
        raise RuntimeError(f"the CUDA kernel {name} needs a CUDA device; use the PyTorch twin")
    return load(name=f"selfsup_{name}", sources=[str(source)], extra_cuda_cflags=["-O3"], verbose=False)


def rayiou_dvr_march_cpu(occupied: Tensor, origin_vox: Tensor, end_vox: Tensor) -> tuple[Tensor, Tensor]:
    """Compiled CPU twin of `eval.rayiou.march_first_hit` (same arguments and results)."""
    dist, index = load_kernel("rayiou_dvr_cpu").march(
        occupied.cpu().bool().contiguous(),
        origin_vox.cpu().float().contiguous(),
        end_vox.cpu().float().contiguous(),
    )
    return dist, index


def rayiou_dvr_march(occupied: Tensor, origin_vox: Tensor, end_vox: Tensor) -> tuple[Tensor, Tensor]:
    """CUDA twin of `eval.rayiou.march_first_hit` (same arguments and results)."""
    dist, index = load_kernel("rayiou_dvr").march(
        occupied.cuda().bool().contiguous(),
        origin_vox.cuda().float().contiguous(),
        end_vox.cuda().float().contiguous(),
    )
    return dist, index
