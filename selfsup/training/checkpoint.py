"""Checkpoints: accelerate ``save_state`` folders, written atomically, with the resolved
config inside.

Layout: ``WORK/checkpoints/step_0000300/`` holds accelerate's files (``model.safetensors``,
``optimizer.bin``, ``scheduler.bin``, ``random_states_{rank}.pkl``,
``custom_checkpoint_{i}.pkl`` for the train state and the EMA weights) and ``meta.json``
(step, config JSON and text, which custom object is which). The folder is written under a
temporary name and renamed when complete, so a crash never leaves a half checkpoint;
``WORK/checkpoints/latest`` names the newest one.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from selfsup.io import atomic_write_text

CHECKPOINTS = "checkpoints"


@dataclass
class TrainState:
    """Registered with accelerate so the step counter is saved and restored."""

    step: int = 0

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


def checkpoint_dir(work_dir: str | Path, step: int) -> Path:
    return Path(work_dir) / CHECKPOINTS / f"step_{step:07d}"


def save_checkpoint(accelerator, work_dir: str | Path, step: int, meta: dict, keep_last: int) -> Path:
    """Save accelerate state for ``step`` atomically; every process must call this."""
    final = checkpoint_dir(work_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_text(tmp / "meta.json", json.dumps({"step": step, **meta}, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        atomic_write_text(final.parent / "latest", final.name + "\n")
        _prune(final.parent, keep_last)
    accelerator.wait_for_everyone()
    return final


def _prune(folder: Path, keep_last: int) -> None:
    done = sorted(p for p in folder.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp"))
    for old in done[: max(0, len(done) - max(1, keep_last))]:
        shutil.rmtree(old)


def resolve_checkpoint(path: str | Path, work_dir: str | Path | None = None) -> Path:
    """A checkpoint folder from a path, a work dir, or ``latest`` (in ``work_dir``).

    Raises:
        FileNotFoundError: nothing usable at that path.
    """
    path = Path(path)
    if str(path) == "latest":
        if work_dir is None:
            raise FileNotFoundError("--resume-from latest needs a --work-dir")
        path = Path(work_dir)
    for candidate in (path, path / CHECKPOINTS):
        latest = candidate / "latest"
        if latest.is_file():
            path = candidate / latest.read_text().strip()
            break
    if not (path / "meta.json").is_file() or not (path / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"checkpoint {str(path)!r} is incomplete or missing: expected meta.json and model.safetensors "
            "(a folder written by train.py)"
        )
    return path


def read_meta(ckpt: str | Path) -> dict:
    return json.loads((Path(ckpt) / "meta.json").read_text())


def load_model_weights(model: torch.nn.Module, ckpt: str | Path, use_ema: bool = True) -> dict:
    """Load a checkpoint's weights into ``model`` for evaluation (the EMA weights when the
    run kept them and ``use_ema``). Returns the checkpoint's meta.

    Raises:
        FileNotFoundError: see :func:`resolve_checkpoint`.
        RuntimeError: the weights do not fit the model (missing / unexpected keys).
    """
    ckpt = resolve_checkpoint(ckpt)
    meta = read_meta(ckpt)
    ema_index = meta.get("custom_objects", {}).get("ema")
    if use_ema and ema_index is not None:
        ema_state = torch.load(ckpt / f"custom_checkpoint_{ema_index}.pkl", map_location="cpu", weights_only=True)
        state = {k.removeprefix("module."): v for k, v in ema_state.items() if k.startswith("module.")}
    else:
        state = load_file(str(ckpt / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(
            f"checkpoint {str(ckpt)!r} does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return meta
