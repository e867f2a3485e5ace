"""Depth supervision of rendered depth from a named source: LiDAR or dense pseudo depth."""

from __future__ import annotations

import math
from typing import Literal

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from selfsup.data.frames import Frames
from selfsup.losses.depth import depth_l1_loss, sparse_depth_grid, sparse_map_grid
from selfsup.losses.gaussian import depth_mse_loss
from selfsup.model_api import RenderedViews, read_nearest

DEPTH_SOURCES = ("lidar", "pseudo", "sparse")


def depth_target(
    views: RenderedViews,
    batch: Frames,
    source: Literal["lidar", "pseudo", "sparse"] = "lidar",
    min_depth: float = 0.1,
    max_depth: float = math.inf,
) -> Float[Tensor, "B V R"]:
    """Depth target (camera z, metres; 0 = unknown) of every ray of ``views``.

    ``"lidar"``: frame ``views.frame``'s LiDAR points (``Frames.points_ego``, that frame's ego
    frame) projected into its cameras (``Frames.T_ego_cam``), the nearest return per ray-grid
    cell (:func:`selfsup.losses.depth.sparse_depth_grid`; a ray lies in its cell), points
    closer than ``min_depth`` dropped. ``"pseudo"``: ``Frames.depth_maps`` read at the rays'
    pixels (nearest pixel). ``"sparse"``: ``Frames.depth_maps`` holding sparse depth
    (triangulated keypoints), the nearest labelled pixel per ray-grid cell
    (:func:`selfsup.losses.depth.sparse_map_grid`, the map form of ``"lidar"``'s rule).
    Targets beyond ``max_depth`` become 0.

    Raises:
        ValueError: unknown source, ``"pseudo"`` without ``depth_maps``, ``"lidar"`` without
            points.
    """
    t = views.frame
    if source in ("pseudo", "sparse") and batch.depth_maps is None:
        raise ValueError(f"depth_target: source {source!r} needs Frames.depth_maps [B, T, V, H, W]")
    if source == "pseudo":
        target = read_nearest(batch.depth_maps[:, t].float(), views.pixels)
    elif source == "sparse":
        target = sparse_map_grid(batch.depth_maps[:, t].float(), *views.grid_hw).flatten(-2)
    elif source == "lidar":
        if not batch.points_ego or not len(batch.points_ego[0]):
            raise ValueError("depth_target: source 'lidar' needs Frames.points_ego")
        rows, cols = views.grid_hw
        target = torch.stack(
            [
                sparse_depth_grid(
                    batch.points_ego[b][t], batch.K[b, t], batch.T_ego_cam[b, t], views.image_hw, rows, cols, min_depth
                )
                for b in range(batch.images.shape[0])
            ]
        ).flatten(-2)
    else:
        raise ValueError(f"depth_target: source must be one of {DEPTH_SOURCES}, got {source!r}")
    if math.isfinite(max_depth):
        target = torch.where(target <= max_depth, target, torch.zeros_like(target))
    return target


def depth_objective(
    views: RenderedViews,
    batch: Frames,
    mask: Bool[Tensor, "B V R"],
    *,
    source: Literal["lidar", "pseudo", "sparse"] = "lidar",
    norm: Literal["l1", "l2"] = "l1",
    on: Literal["expected", "accumulated"] = "expected",
    min_depth: float = 0.1,
    max_depth: float = math.inf,
    current_frame: bool = True,
) -> Tensor | None:
    """Depth loss on rays with a target: ``mean |d - d*|`` (``l1``) or ``mean (d - d*)^2``
    (``l2``) over rays in ``mask`` with ``d* > 0`` (:func:`depth_target`).

    Args:
        source: "lidar" or "pseudo" (see :func:`depth_target`).
        norm: "l1" (metres) or "l2" (metres^2).
        on: "expected" depth (``views.depth``, what ``render_depth`` reports) or
            "accumulated" ``sum_i w_i z_i`` (also pushes the opacity to 1 where there is a
            target; GaussianFlowOcc's choice).
        min_depth, max_depth: target range, metres.
        current_frame: also supervise the current frame (``views.frame == 0``); False keeps
            depth evaluation against the current frame's LiDAR honest.

    Returns:
        the loss, or ``None`` for a skipped current frame.

    Source: SelfOcc (Huang et al. 2024) optional L1 depth supervision; GaussianFlowOcc
    (Boeder et al. 2025) depth MSE (weight 0.05) on the accumulated depth of pixels with
    depth > 0.
    """
    if norm not in ("l1", "l2") or on not in ("expected", "accumulated"):
        raise ValueError(f"depth_objective: norm must be 'l1'/'l2' and on 'expected'/'accumulated', got {norm!r}, {on!r}")
    if views.frame == 0 and not current_frame:
        return None
    target = depth_target(views, batch, source, min_depth, max_depth)
    rendered = views.depth if on == "expected" else views.accumulated()
    loss = depth_l1_loss if norm == "l1" else depth_mse_loss
    return loss(rendered, target, mask)
