"""Occ3D-format voxel ground truth: file layout, loading with clear errors, class counts.

Layout (Occ3D-nuScenes, and what ``scripts/generate_occ_gt.py`` writes for any dataset):
``{gt_dir}/{scene_name}/{token_dir}/labels.npz`` (:func:`selfsup.occ_gt.paths.gt_label_path`:
the token, without a ``{scene_name}/`` prefix for DDAD ids) with uint8 ``semantics`` (0-16, 17 = free),
and ``mask_lidar`` / ``mask_camera`` (0/1), each ``(200, 200, 16)`` indexed [x, y, z] in
the ego frame of the sample. ``eval_iou.py --gt-dir`` reads the same files.
"""

from __future__ import annotations

import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from selfsup.data.frames import Frames
from selfsup.grid import OCC3D_FREE, OCC3D_GRID, OCC3D_NUM_CLASSES
from selfsup.occ_gt.paths import gt_label_path

OCC_GT_KEYS = ("semantics", "mask_lidar", "mask_camera")
IGNORE_LABEL = 255  # voxels without a label (some generated GT); ignored by the objectives


def load_occ_gt(
    path: str | Path, keys: tuple[str, ...] = OCC_GT_KEYS, shape: tuple[int, int, int] = OCC3D_GRID.shape
) -> dict[str, np.ndarray]:
    """Read an Occ3D ``labels.npz``: ``semantics`` as uint8, masks as bool.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: not a readable npz, a missing key, a wrong shape, non-integer or
            out-of-range labels (allowed: 0-17 and 255 = unlabelled).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"voxel GT file not found: {path}")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"voxel GT file {path} is not a readable npz (not a zip archive)")
    try:
        with np.load(path) as data:
            files = list(data.files)
            arrays = {k: np.asarray(data[k]) for k in keys if k in files}
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        raise ValueError(f"voxel GT file {path} is not a readable npz: {err}") from err
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise ValueError(f"voxel GT file {path} has no key(s) {missing} (it has {files}); expected {list(OCC_GT_KEYS)}")
    out = {}
    for k, arr in arrays.items():
        if arr.shape != tuple(shape):
            raise ValueError(f"voxel GT file {path}: `{k}` has shape {arr.shape}, expected {tuple(shape)} ([x, y, z])")
        if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
            raise ValueError(f"voxel GT file {path}: `{k}` has dtype {arr.dtype}, expected an integer type")
        if k == "semantics":
            bad = (arr > OCC3D_FREE) & (arr != IGNORE_LABEL) | (arr < 0)
            if bad.any():
                raise ValueError(
                    f"voxel GT file {path}: `semantics` holds values {np.unique(arr[bad])[:5].tolist()} outside 0..{OCC3D_FREE} and {IGNORE_LABEL}"
                )
            out[k] = arr.astype(np.uint8)
        else:
            out[k] = arr.astype(bool)
    return out


def attach_occ_gt(frames: Frames, gt_dir: str | Path) -> Frames:
    """``frames`` (one unbatched sample) with its voxel GT fields filled from ``gt_dir``.

    Raises:
        FileNotFoundError, ValueError: as :func:`load_occ_gt`, naming the sample's file.
    """
    gt = load_occ_gt(gt_label_path(gt_dir, frames.scene_names, frames.tokens))
    return replace(
        frames,
        occ_semantics=torch.from_numpy(gt["semantics"]),
        occ_mask_lidar=torch.from_numpy(gt["mask_lidar"]),
        occ_mask_camera=torch.from_numpy(gt["mask_camera"]),
    )


def count_class_frequencies(gt_dir: str | Path, mask: str | None = None) -> np.ndarray:
    """Voxel count per class (0-17) over every ``{gt_dir}/*/*/labels.npz``.

    Args:
        gt_dir: GT root.
        mask: None (every labelled voxel), "mask_camera" or "mask_lidar" (only voxels
            inside that mask), matching the training protocol the weights are for.

    Raises:
        FileNotFoundError: no labels.npz under ``gt_dir``.
        ValueError: a malformed file (see :func:`load_occ_gt`) or an unknown mask.
    """
    if mask not in (None, "mask_camera", "mask_lidar"):
        raise ValueError(f"count_class_frequencies: mask must be None, 'mask_camera' or 'mask_lidar', got {mask!r}")
    files = sorted(Path(gt_dir).glob("*/*/labels.npz"))
    if not files:
        raise FileNotFoundError(f"no {{scene}}/{{token}}/labels.npz under {gt_dir}")
    counts = np.zeros(OCC3D_NUM_CLASSES, dtype=np.int64)
    for f in files:
        gt = load_occ_gt(f, ("semantics",) + ((mask,) if mask else ()))
        sem = gt["semantics"][gt[mask]] if mask else gt["semantics"]
        counts += np.bincount(sem[sem < OCC3D_NUM_CLASSES].astype(np.int64), minlength=OCC3D_NUM_CLASSES)
    return counts
