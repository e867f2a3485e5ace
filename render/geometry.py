"""Rigid-body and pinhole geometry shared by every layer: ego -> pixel projection and
quaternion -> rotation. Pixel convention as in ``render.rays`` (centres at +0.5)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor

from render.precision import full_precision

__all__ = ["project_points", "quat_to_rotmat"]


@full_precision
def project_points(
    points: Float[Tensor, "*b P 3"],
    K: Float[Tensor, "*b 3 3"],
    T_ego_cam: Float[Tensor, "*b 4 4"],
    min_depth: float = 0.1,
) -> tuple[Float[Tensor, "*b P 2"], Float[Tensor, "*b P"], Bool[Tensor, "*b P"]]:
    """Project ego-frame points into a pinhole camera: the one ego -> pixel projection.

    ``p_cam = R^T (p_ego - t)`` for ``T_ego_cam = [R | t]`` (the inverse of a rigid
    transform without a matrix inverse), ``uv = (K p_cam)_{xy} / max(z, min_depth)``.

    Args:
        points: points in the ego frame ``T_ego_cam`` maps into, metres.
        K: pinhole intrinsics, pixels (last row 0 0 1).
        T_ego_cam: camera (OpenCV) -> ego.
        min_depth: points with camera z at or below this (metres) are "behind" the camera.

    Returns:
        ``(uv, depth, in_front)``: pixel coordinates (u column, v row; pixel centres at
        +0.5), camera z in metres, and ``depth > min_depth``. ``uv`` of points behind the
        camera is finite but meaningless.

    Source: pinhole model, Hartley & Zisserman, Multiple View Geometry, eq. 6.8.

    >>> K = torch.tensor([[100.0, 0, 50], [0, 100, 40], [0, 0, 1]])
    >>> uv, z, ok = project_points(torch.tensor([[0.0, 0.0, 2.0]]), K, torch.eye(4))
    >>> uv, z, ok
    (tensor([[50., 40.]]), tensor([2.]), tensor([True]))
    """
    R = T_ego_cam[..., :3, :3]
    t = T_ego_cam[..., :3, 3]
    # One affine map, K p_cam = (R K^T)^T (p - t): a single product over the points (the
    # two 3 x 3 products per point it replaces measured 1.4x slower on CPU). K's last row is
    # (0, 0, 1), so the third coordinate is the camera z.
    A = R @ K.transpose(-1, -2)
    pix = points @ A - (t[..., None, :] @ A)
    depth = pix[..., 2]
    in_front = depth > min_depth
    uv = pix[..., :2] / depth.clamp_min(min_depth)[..., None]
    return uv, depth, in_front


def quat_to_rotmat(quats: Float[Tensor, "*n 4"]) -> Float[Tensor, "*n 3 3"]:
    """Rotation matrices of (w, x, y, z) quaternions; the input is normalised first.

    Source: the standard unit-quaternion to rotation-matrix formula (as in gsplat).

    >>> quat_to_rotmat(torch.tensor([0.0, 0.0, 0.0, 2.0]))  # 180 degrees about z
    tensor([[-1.,  0.,  0.],
            [ 0., -1.,  0.],
            [ 0.,  0.,  1.]])
    """
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    rows = (
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    )  # fmt: skip
    return torch.stack(rows, dim=-1).unflatten(-1, (3, 3))
