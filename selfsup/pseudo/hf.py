"""Loading transformers checkpoints from a local directory only, with clear errors.

Nothing here downloads: every load passes ``local_files_only=True`` and
``HF_HUB_OFFLINE=1`` is set before transformers is imported. Importing transformers'
vision models imports torchvision; on the CPU installs of this project that needs the
torchvision hook (``python -m selfsup.compat.torchvision_ops install``), which this module
also activates in-process, so the backends work even without the hook installed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json", ".txt", ".model")


def import_transformers():
    """Import transformers offline (and quietly); returns the module.

    Raises:
        ImportError: transformers is not installed (``pip install transformers==5.24.0``).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    _hook_torchvision()
    try:
        import transformers
    except ImportError as e:
        raise ImportError("the network backends need transformers (pip install transformers==5.24.0)") from e
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


def _hook_torchvision() -> None:
    """Install the torchvision hook in this process unless the ``.pth`` hook already did
    (two hooks would define the same operators twice)."""
    import sys

    from selfsup.compat import torchvision_ops

    if "torchvision" in sys.modules:
        return
    if any(type(f).__name__ == "_Finder" and type(f).__module__ in (torchvision_ops.MODULE_NAME, torchvision_ops.__name__)
           for f in sys.meta_path):
        return
    torchvision_ops.install_hook()


def checkpoint_config(path: str | os.PathLike, what: str, model_types: tuple[str, ...]) -> dict:
    """Check that ``path`` is a local checkpoint folder of one of ``model_types``.

    Returns the parsed ``config.json``.

    Raises:
        FileNotFoundError: ``path`` is not a directory or has no ``config.json``.
        ValueError: ``config.json`` is unreadable or its ``model_type`` is not expected.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} checkpoint directory {folder} does not exist (models load from a local folder "
                                "only; save one with save_pretrained or download it yourself)")
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{what} checkpoint directory {folder} has no config.json (not a transformers checkpoint)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_path} is not valid JSON: {e}") from None
    mt = cfg.get("model_type")
    if mt not in model_types:
        raise ValueError(f"{what} checkpoint {folder} is a {mt!r} model (config.json model_type), expected one of "
                         f"{list(model_types)}")
    return cfg


def checkpoint_hash(path: str | os.PathLike | None) -> str | None:
    """sha256 over the names and bytes of a checkpoint folder's weight / config files."""
    if path is None:
        return None
    h = hashlib.sha256()
    for p in sorted(Path(path).rglob("*")):
        if p.is_file() and p.suffix in WEIGHT_SUFFIXES:
            h.update(str(p.relative_to(path)).encode())
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


def load_pretrained(cls, path: str | os.PathLike, what: str, **kwargs):
    """``cls.from_pretrained(path, local_files_only=True, **kwargs)`` with the error naming ``what``.

    Raises:
        ValueError: the folder cannot be loaded as ``cls`` (missing / mismatched weights,
            processor files, ...), naming the folder and the original error.
    """
    try:
        return cls.from_pretrained(str(path), local_files_only=True, **kwargs)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        raise ValueError(f"cannot load {what} ({cls.__name__}) from {path}: {type(e).__name__}: {e}") from e
