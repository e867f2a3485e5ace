"""Depth supervision of rendered depth by sparse LiDAR (or dense pseudo) depth."""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from render.precision import full_precision

from selfsup.losses.photometric import masked_mean, project_points


def depth_l1_loss(
    prediction: Float[Tensor, "*s"], target: Float[Tensor, "*s"], mask: Bool[Tensor, "*s"] | None = None
) -> Float[Tensor, ""]:
    """Mean absolute depth error ``mean |d_pred - d_gt|`` over rays with a valid target.

    Targets ``<= 0`` (no LiDAR return) never count.

    Args:
        prediction: rendered camera depth (z), metres.
        target: LiDAR / pseudo depth (z), metres; 0 where unknown.
        mask: further restricts the rays that count.

    Source: SelfOcc (Huang et al. 2024) optional depth supervision (off in its
    self-supervised setting); the L1 form as in DS-NeRF-style sparse depth losses.
    """
    valid = target > 0
    if mask is not None:
        valid = valid & mask
    return masked_mean((prediction - target).abs(), valid)


@full_precision
def sparse_depth_grid(
    points_ego: Float[Tensor, "P 3"],
    K: Float[Tensor, "V 3 3"],
    T_ego_cam: Float[Tensor, "V 4 4"],
    image_hw: tuple[int, int],
    rows: int,
    cols: int,
    min_depth: float = 0.1,
) -> Float[Tensor, "V rows cols"]:
    """Project points into each camera and keep the nearest depth per ray-grid cell.

    The image is cut into ``rows x cols`` cells exactly as
    :func:`render.rays.jittered_pixel_grid` does; a jittered ray lies in its cell, so the
    cell's nearest point depth is its (approximate) target.

    Args:
        points_ego: LiDAR points in the ego frame of the cameras' frame, metres.
        K: intrinsics of the images, pixels.
        T_ego_cam: camera (OpenCV) -> ego.
        image_hw: image (height, width), pixels.
        rows, cols: ray grid size.
        min_depth: points closer than this (metres, camera z) are ignored.

    Returns:
        camera depth (z, metres) per cell, 0 where no point falls in the cell.
    """
    height, width = image_hw
    uv, z, in_front = project_points(points_ego.expand(K.shape[0], -1, -1), K, T_ego_cam, min_depth)
    u, v = uv[..., 0], uv[..., 1]
    ok = in_front & (u >= 0) & (u < width) & (v >= 0) & (v < height)
    col = (u * cols / width).long().clamp(0, cols - 1)
    row = (v * rows / height).long().clamp(0, rows - 1)
    n_views = K.shape[0]
    cell = torch.arange(n_views, device=K.device)[:, None] * rows * cols + row * cols + col
    depth = torch.full((n_views * rows * cols,), float("inf"), dtype=points_ego.dtype, device=points_ego.device)
    depth = depth.scatter_reduce(0, cell[ok], z[ok], reduce="amin")
    depth = torch.where(torch.isinf(depth), torch.zeros_like(depth), depth)
    return depth.reshape(n_views, rows, cols)


def sparse_map_grid(
    depth: Float[Tensor, "*b H W"], rows: int, cols: int
) -> Float[Tensor, "*b rows cols"]:
    """The nearest labelled depth per ray-grid cell of sparse depth maps (0 = unknown).

    Pixel ``(i, j)`` belongs to the cell holding its centre, the cells cut the image into
    ``rows x cols`` exactly as :func:`render.rays.jittered_pixel_grid` does, so a jittered
    ray lies in its cell: the map counterpart of :func:`sparse_depth_grid`, for sparse
    pseudo depth (triangulated keypoints, ``selfsup.pseudo.triangulation``).

    Returns:
        camera depth (metres) per cell, 0 where the cell holds no labelled pixel.
    """
    height, width = depth.shape[-2:]
    row = ((torch.arange(height, device=depth.device) + 0.5) * rows / height).long().clamp(max=rows - 1)
    col = ((torch.arange(width, device=depth.device) + 0.5) * cols / width).long().clamp(max=cols - 1)
    cell = (row[:, None] * cols + col[None, :]).flatten()  # [H W]
    flat = depth.flatten(-2)
    flat = torch.where(flat > 0, flat, torch.full_like(flat, float("inf")))
    out = torch.full((*flat.shape[:-1], rows * cols), float("inf"), dtype=flat.dtype, device=flat.device)
    out = out.scatter_reduce(-1, cell.expand_as(flat), flat, reduce="amin")
    out = torch.where(torch.isinf(out), torch.zeros_like(out), out)
    return out.reshape(*depth.shape[:-2], rows, cols)
