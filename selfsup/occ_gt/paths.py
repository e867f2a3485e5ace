"""Where the ground truth of a sample lives: ``{gt_dir}/{scene_name}/{token_dir}/labels.npz``.

``token_dir`` is the sample token, except that a token that starts with ``"{scene_name}/"``
loses that prefix. DDAD sample ids are ``"scene_02/15616458251018358"`` (scene / LiDAR time in
microseconds, as :class:`selfsup.data.ddad.DDADFrames` yields them), so their files are
``{gt_dir}/scene_02/15616458251018358/labels.npz``; nuScenes sample tokens (and the
lidarseg frames' LIDAR_TOP sample_data tokens) are used as they are, which is exactly
Occ3D's ``gts/{scene_name}/{sample_token}/labels.npz``. ``eval_iou.py`` and the dataset
readers go through these functions, so one rule holds everywhere.

Next to ``labels.npz`` the generator writes ``lidar_origins.npy`` (float64 [K, 3]): the LiDAR
positions of all K keyframes of the scene in this keyframe's ego frame (RayIoU origins,
unselected), so ``eval_iou.py`` can score RayIoU on any dataset without its devkit tables.
"""

from __future__ import annotations

import os
from pathlib import Path

LABELS_FILE = "labels.npz"
ORIGINS_FILE = "lidar_origins.npy"


def token_dirname(scene_name: str, token: str) -> str:
    """The directory name of a sample inside its scene directory (see the module docstring).

    Raises:
        ValueError: an empty token, or one that is still not a single path component
            (contains ``/`` or ``\\``, or is ``.`` / ``..``).
    """
    name = token[len(scene_name) + 1 :] if token.startswith(f"{scene_name}/") else token
    if not name or name in (".", "..") or "/" in name or "\\" in name or (os.sep in name):
        raise ValueError(
            f"sample token {token!r} of scene {scene_name!r} does not map to one directory name "
            f"(allowed: a token without '/', or '{scene_name}/<id>')"
        )
    return name


def sample_token_from_dirname(scene_name: str, dirname: str, dataset: str = "nuscenes") -> str:
    """Inverse of :func:`token_dirname` for a dataset: DDAD ids get their scene prefix back.

    Raises:
        ValueError: an unknown dataset name.
    """
    if dataset == "ddad":
        return f"{scene_name}/{dirname}"
    if dataset in ("nuscenes", "lidarseg-frames"):
        return dirname
    raise ValueError(f"unknown dataset {dataset!r}; expected 'nuscenes', 'lidarseg-frames' or 'ddad'")


def gt_sample_dir(gt_dir: str | os.PathLike, scene_name: str, token: str) -> Path:
    """``{gt_dir}/{scene_name}/{token_dir}`` of a sample."""
    if not scene_name or "/" in scene_name or scene_name in (".", ".."):
        raise ValueError(f"scene name {scene_name!r} is not a single directory name")
    return Path(gt_dir) / scene_name / token_dirname(scene_name, token)


def gt_label_path(gt_dir: str | os.PathLike, scene_name: str, token: str) -> Path:
    """The ground-truth ``labels.npz`` of a sample (Occ3D layout, see the module docstring).

    >>> str(gt_label_path("data/samples/occ_gt/ddad", "scene_02", "scene_02/15616458251018358"))
    'data/samples/occ_gt/ddad/scene_02/15616458251018358/labels.npz'
    """
    return gt_sample_dir(gt_dir, scene_name, token) / LABELS_FILE
