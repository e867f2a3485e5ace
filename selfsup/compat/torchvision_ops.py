"""Let ``import torchvision`` (and so ``import timm`` and the ``accelerate`` CLI) work when
torchvision's compiled ops cannot load.

Why: PyPI has no CPU build of torchvision 0.28.0. The wheel that pairs with the CPU
torch 2.13.0 is built against CUDA torch, so its ``_C.so`` fails to load; torchvision
then still registers fake (meta) kernels for ``torchvision::nms`` and
``torchvision::qnms`` and import dies with ``operator torchvision::nms does not exist``.

What: when torchvision is about to be imported and its ``_C`` library does not load, we
define the two operator schemas ourselves (with a plain PyTorch NMS behind them, for
``torch.ops.torchvision.nms``), so that torchvision imports. Nothing in selfsup calls
torchvision's C ops; ``torchvision.ops.*`` keeps raising torchvision's own "Couldn't load
custom C++ ops" error, as it should on such an install.

How it is activated: ``python -m selfsup.compat.torchvision_ops install`` copies this
file into site-packages as ``_selfsup_torchvision_compat.py`` and writes
``selfsup_torchvision_compat.pth`` beside it (``make install`` does it). The line in that
file only installs a ``sys.meta_path`` finder: torch is imported only when
something imports torchvision. On a machine where ``_C.so`` loads (a CUDA install), the
finder does nothing.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
import sysconfig
from pathlib import Path

PTH_NAME = "selfsup_torchvision_compat.pth"
MODULE_NAME = "_selfsup_torchvision_compat"
_done = False


def _nms_reference(dets, scores, iou_threshold: float):
    """Greedy NMS on boxes ``dets`` [N, 4] (x1, y1, x2, y2); returns kept indices, sorted by
    descending score (torchvision's contract)."""
    import torch

    order = torch.argsort(scores, descending=True)
    x1, y1, x2, y2 = dets.unbind(-1)
    areas = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    suppressed = torch.zeros(dets.shape[0], dtype=torch.bool, device=dets.device)
    keep = []
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        xx1 = torch.maximum(x1[i], x1)
        yy1 = torch.maximum(y1[i], y1)
        xx2 = torch.minimum(x2[i], x2)
        yy2 = torch.minimum(y2[i], y2)
        inter = (xx2 - xx1).clamp(min=0) * (yy2 - yy1).clamp(min=0)
        iou = inter / (areas[i] + areas - inter).clamp(min=1e-12)
        suppressed |= iou > iou_threshold
    return torch.tensor(keep, dtype=torch.long, device=dets.device)


def _torchvision_c_loads() -> bool:
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True  # nothing to patch
    for folder in spec.submodule_search_locations:
        for name in os.listdir(folder):
            if name.startswith("_C") and name.endswith((".so", ".pyd")):
                try:
                    torch.ops.load_library(os.path.join(folder, name))
                    return True
                except (OSError, ImportError, RuntimeError):
                    return False
    return False


def ensure_torchvision_importable() -> None:
    """Define ``torchvision::nms`` / ``torchvision::qnms`` if torchvision's ``_C`` cannot load.

    Idempotent; a no-op where torchvision's own library loads.
    """
    global _done
    if _done:
        return
    _done = True
    if _torchvision_c_loads():
        return
    import torch

    lib = torch.library.Library("torchvision", "DEF")  # noqa: F841 (kept alive below)
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.impl("nms", _nms_reference, "CompositeExplicitAutograd")
    lib.impl("qnms", _nms_reference, "CompositeExplicitAutograd")
    sys.modules[__name__]._library = lib  # a Library is unregistered when collected


class _Finder(importlib.abc.MetaPathFinder):
    """Runs :func:`ensure_torchvision_importable` right before torchvision is imported."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision":
            sys.meta_path.remove(self)
            ensure_torchvision_importable()
        return None  # let the normal finders import it


def install_hook() -> None:
    """Called from the ``.pth`` line at interpreter start-up; cheap (no torch import)."""
    if "torchvision" in sys.modules:
        return
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


def install_pth(site_packages: str | None = None) -> str:
    """Activate the hook in every interpreter of this environment.

    Copies this file into site-packages as a top-level module ``MODULE_NAME`` and writes
    a ``.pth`` line importing it, so interpreter start-up never imports the ``selfsup``
    package itself (pytest plugins such as jaxtyping's must import it later).
    """
    target = Path(site_packages or sysconfig.get_paths()["purelib"])
    with open(__file__) as src:
        code = src.read()
    _atomic_write(target / f"{MODULE_NAME}.py", code)
    _atomic_write(target / PTH_NAME, f"import {MODULE_NAME}; {MODULE_NAME}.install_hook()\n")
    return str(target / PTH_NAME)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


if __name__ == "__main__":
    if sys.argv[1:] == ["install"]:
        print(f"wrote {install_pth()}")
    else:
        raise SystemExit("usage: python -m selfsup.compat.torchvision_ops install")
