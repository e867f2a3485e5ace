"""Camera geometry in one place: poses, intrinsics, ego -> pixel projection, quaternions,
camera rays clipped to a box, and the multi-view image-feature sampler.

Pixel convention (``selfsup.data.frames.Frames.K``, ``render.rays``): continuous
coordinates, ``u`` along columns, ``v`` along rows, pixel centres at ``+0.5``. The pure
tensor pieces that ``render/`` needs too (``project_points``, ``quat_to_rotmat``,
``rays_in_box``) are defined in ``render.geometry`` / ``render.rays`` (``render`` imports
nothing from ``selfsup``) and re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor

from render.geometry import project_points, quat_to_rotmat
from render.rays import rays_in_box

__all__ = [
    "pose_matrix",
    "project_points",
    "quat_to_rotmat",
    "rays_in_box",
    "sample_multiview_features",
    "scale_intrinsics",
]


def pose_matrix(rotation_wxyz: Sequence[float], translation: Sequence[float]) -> Float[np.ndarray, "4 4"]:
    """4x4 float64 rigid transform from a (w, x, y, z) quaternion and a translation (metres):
    the one pose parser of the datasets (nuScenes, DDAD) and the evaluators.

    The rotation is pyquaternion's ``rotation_matrix`` (it normalises the quaternion), as the
    nuScenes devkit and the Occ3D / RayIoU references build poses.

    Raises:
        ValueError: a quaternion without 4 numbers, a translation without 3, or a zero
            quaternion.

    >>> pose_matrix((1.0, 0.0, 0.0, 0.0), (1.0, 2.0, 3.0))[:3, 3]
    array([1., 2., 3.])
    """
    from pyquaternion import Quaternion

    q = np.asarray(rotation_wxyz, dtype=np.float64).reshape(-1)
    t = np.asarray(translation, dtype=np.float64).reshape(-1)
    if q.shape != (4,) or t.shape != (3,):
        raise ValueError(f"pose_matrix: need a (w, x, y, z) quaternion and an (x, y, z) translation, got {rotation_wxyz!r}, {translation!r}")
    if not np.linalg.norm(q) > 0:
        raise ValueError(f"pose_matrix: zero quaternion {rotation_wxyz!r}")
    T = np.eye(4)
    T[:3, :3] = Quaternion(q).rotation_matrix
    T[:3, 3] = t
    return T


def scale_intrinsics(
    K: Float[Tensor, "*b 3 3"], src_hw: tuple[int, int], dst_hw: tuple[int, int]
) -> Float[Tensor, "*b 3 3"]:
    """Intrinsics of the same camera after resizing its image from ``src_hw`` to ``dst_hw``.

    In continuous pixel coordinates (centres at +0.5) a resize is a pure scaling,
    ``u' = u * dst_w / src_w`` and ``v' = v * dst_h / src_h``.
    """
    sx, sy = dst_hw[1] / src_hw[1], dst_hw[0] / src_hw[0]
    scale = torch.tensor([sx, sy, 1.0], dtype=K.dtype, device=K.device)
    return K * scale[:, None]


def sample_multiview_features(
    features: Sequence[Float[Tensor, "B V C _h _w"]],
    points: Float[Tensor, "B P 3"],
    K: Float[Tensor, "B V 3 3"],
    T_ego_cam: Float[Tensor, "B V 4 4"],
    image_hw: tuple[int, int],
    strides: Sequence[int] | None = None,
    min_depth: float = 0.1,
    padding_mode: str = "zeros",
) -> tuple[list[Float[Tensor, "B V C P"]], Bool[Tensor, "B V P"]]:
    """Bilinear image features of ego-frame points in every camera: the one multi-view sampler.

    Each point is projected into each camera (:func:`project_points`); it is *visible* in a
    camera where its depth exceeds ``min_depth`` and its pixel lies inside the image
    ``[0, W) x [0, H)``. Every pyramid level is read there with ``grid_sample``
    (``align_corners=False``). A level at stride ``s`` with ``w`` columns covers ``w s``
    image pixels (feature cell j spans pixels ``[j s, (j + 1) s)``, which may overhang the
    image when ``W`` is not a multiple of ``s``); without ``strides`` every level is taken
    to span the image exactly. Values of invisible points are whatever the padding gives
    (callers mask with ``visible``).

    Args:
        features: pyramid levels ``[B, V, C, h, w]`` of the cameras' images.
        points: query points, ego frame of ``T_ego_cam``, metres.
        K: intrinsics of the ``image_hw`` images, pixels.
        T_ego_cam: camera (OpenCV) -> ego.
        image_hw: (H, W) of the images, pixels.
        strides: image pixels per feature cell of each level, or None (see above).
        min_depth: nearest visible camera depth, metres.
        padding_mode: ``grid_sample`` padding ("zeros" or "border").

    Returns:
        ``(values, visible)``: one ``[B, V, C, P]`` tensor per level, and visibility.

    Raises:
        ValueError: if ``strides`` and ``features`` differ in length.

    Source: the feature lifting of TPVFormer / SelfOcc (point projection + bilinear
    sampling per camera) and BEVFormer's spatial cross-attention reference points.
    """
    if strides is not None and len(strides) != len(features):
        raise ValueError(f"sample_multiview_features: {len(features)} feature levels but {len(strides)} strides")
    B, V = K.shape[:2]
    height, width = image_hw
    uv, _, in_front = project_points(points[:, None].expand(B, V, -1, -1), K, T_ego_cam, min_depth)  # [B V P 2]
    u, v = uv[..., 0], uv[..., 1]
    visible = in_front & (u >= 0) & (u < width) & (v >= 0) & (v < height)
    values = []
    for level, feat in enumerate(features):
        fh, fw = feat.shape[-2:]
        ext_w, ext_h = (fw * strides[level], fh * strides[level]) if strides is not None else (width, height)
        scale = torch.tensor([2.0 / ext_w, 2.0 / ext_h], device=uv.device, dtype=uv.dtype)
        grid = (uv * scale - 1.0).flatten(0, 1)[:, :, None]  # [BV P 1 2]
        read = F.grid_sample(feat.flatten(0, 1), grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)
        values.append(read[..., 0].unflatten(0, (B, V)))  # [B V C P]
    return values, visible
