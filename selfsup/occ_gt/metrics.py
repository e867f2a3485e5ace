"""Scores and statistics against generated (or real Occ3D) ground-truth files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np
from jaxtyping import Shaped
from torch import Tensor

from eval.occ3d import FREE_LABEL, Occ3DMetric, to_numpy
from selfsup.grid import OCC3D_GRID

GT_KEYS = ("semantics", "mask_lidar", "mask_camera")


def load_gt(path: Union[str, os.PathLike]) -> dict[str, np.ndarray]:
    """The three Occ3D arrays of a ``labels.npz`` (uint8 (200, 200, 16) each).

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable npz, a missing key or a wrong shape (naming file and key).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ground-truth file {path} does not exist")
    try:
        with np.load(path) as data:
            missing = [k for k in GT_KEYS if k not in data.files]
            if missing:
                raise ValueError(f"ground-truth file {path} has no key(s) {missing} (has {data.files})")
            arrays = {k: np.asarray(data[k]) for k in GT_KEYS}
    except (OSError, EOFError) as err:
        raise ValueError(f"ground-truth file {path} is not a readable npz: {err}") from err
    for k, a in arrays.items():
        if a.shape != OCC3D_GRID.shape:
            raise ValueError(f"ground-truth file {path}: `{k}` has shape {a.shape}, expected {OCC3D_GRID.shape}")
    return arrays


def geometric_iou(
    pred_labels: Union[Shaped[np.ndarray, "X Y Z"], Shaped[Tensor, "X Y Z"]],
    gt: Union[str, os.PathLike, dict],
    mask: str = "mask_lidar",
) -> float:
    """Geometric IoU (occupied vs free, percent) of a predicted label grid inside a GT mask.

    Occupied = label != 17 in both grids; only voxels where ``gt[mask]`` is set count. The
    formula is the Occ3D challenge's (``eval.occ3d.Occ3DMetric``, ``IoU``): TP / (TP + FP + FN)
    of the occupied class, x100; NaN when neither grid has an occupied voxel in the mask.

    Args:
        pred_labels: uint8 / integer labels [200, 200, 16] in the GT's ego frame, 0-17.
        gt: path of a ``labels.npz`` or its loaded arrays (see :func:`load_gt`).
        mask: ``"mask_lidar"`` (default), ``"mask_camera"`` or ``"none"`` (all voxels).

    Raises:
        ValueError: shape mismatch, labels outside 0..17, an unknown mask name.
        FileNotFoundError: a missing GT file.
    """
    arrays = gt if isinstance(gt, dict) else load_gt(gt)
    pred = to_numpy(pred_labels)
    sem = np.asarray(arrays["semantics"])
    if pred.shape != sem.shape:
        raise ValueError(f"prediction shape {pred.shape} != ground-truth shape {sem.shape}")
    if pred.size and (int(pred.min()) < 0 or int(pred.max()) > FREE_LABEL):
        raise ValueError(f"predicted labels must lie in 0..{FREE_LABEL}, got {int(pred.min())}..{int(pred.max())}")
    if mask == "none":
        m = None
    elif mask in ("mask_lidar", "mask_camera"):
        m = np.asarray(arrays[mask]).astype(bool)
    else:
        raise ValueError(f"unknown mask {mask!r}; expected 'mask_lidar', 'mask_camera' or 'none'")
    metric = Occ3DMetric()
    # Geometry only: every occupied label becomes class 0, so the matrix is occupied vs free.
    metric.update(np.where(pred == FREE_LABEL, FREE_LABEL, 0).astype(np.uint8),
                  np.where(sem == FREE_LABEL, FREE_LABEL, 0).astype(np.uint8), m)
    return float(metric.compute()["IoU"])


def label_statistics(arrays: dict) -> dict:
    """Statistics of one GT sample (fractions of the 640,000 voxels unless stated).

    Returns:
        dict with ``occupied_fraction``, ``mask_lidar_fraction``, ``mask_camera_fraction``,
        ``occupied_in_mask_lidar`` / ``occupied_in_mask_camera`` (share of occupied voxels
        that are seen), ``mask_camera_outside_mask_lidar`` (voxels), ``occupied_height_histogram``
        (share of occupied voxels per z index 0-15), ``class_histogram`` (occupied voxels per
        class 0-16).
    """
    sem = np.asarray(arrays["semantics"])
    ml = np.asarray(arrays["mask_lidar"]).astype(bool)
    mc = np.asarray(arrays["mask_camera"]).astype(bool)
    occ = sem != FREE_LABEL
    n_occ = max(int(occ.sum()), 1)
    return dict(
        occupied_voxels=int(occ.sum()),
        occupied_fraction=float(occ.mean()),
        mask_lidar_fraction=float(ml.mean()),
        mask_camera_fraction=float(mc.mean()),
        occupied_in_mask_lidar=float((occ & ml).sum() / n_occ),
        occupied_in_mask_camera=float((occ & mc).sum() / n_occ),
        mask_camera_outside_mask_lidar=int((mc & ~ml).sum()),
        free_in_mask_lidar_fraction=float((~occ & ml).mean()),
        occupied_height_histogram=[float(v) for v in occ.sum(axis=(0, 1)) / n_occ],
        class_histogram=[int(v) for v in np.bincount(sem[occ].ravel(), minlength=17)[:17]],
    )
