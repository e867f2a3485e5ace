"""Photometric objectives: multi-view reprojection of rendered sample points and rendered colour."""

from __future__ import annotations

from jaxtyping import Bool
from torch import Tensor

import torch

from selfsup.data.frames import Frames
from selfsup.losses.photometric import project_points, reprojection_loss, rgb_loss, sample_image
from selfsup.model_api import RenderedViews


def photometric_objective(
    views: RenderedViews, batch: Frames, mask: Bool[Tensor, "B V R"], reduction: str = "min"
) -> Tensor | None:
    """Reprojection loss of the rendered sample points into the other frames, auto-masked.

    Every sample ``x_i`` (weight ``w_i``) of a ray of frame ``f = views.frame`` is projected
    into the same camera of every other frame ``m`` of the batch (``Frames.T_ego0_cam``:
    the points are in the current ego frame), the source colour ``c_i^m`` is read bilinearly
    there, and per pixel ``e_m = 0.85 (1 - SSIM(sum_i w~_i c_i^m, I_f)) / 2 + 0.15 sum_i w~_i
    |c_i^m - I_f|`` with ``w~ = w / sum w``; the loss is the mean over counted rays of
    ``min_m e_m`` (``reduction="mean"``: the mean over the counted sources, SelfOcc's
    nuScenes setting), where a ray counts if ``mask``, enough weight projects into a source, and
    ``min_m e_m < min_m pe(I_m, I_f)`` (auto-masking against the unwarped sources). A source
    whose frame offset equals frame f's (a neighbour clamped at a sequence end) never counts.
    Exactly :func:`selfsup.losses.photometric.reprojection_loss` on the ray grid.

    Returns:
        the loss, or ``None`` for a single-frame batch (no source).

    Raises:
        ValueError: the views have no ``sample_points`` / ``sample_weights`` (rasterisers).

    Source: SelfOcc (Huang et al. 2024), Sec. 3.3; monodepth2 (Godard et al. 2019), eq. 1,
    per-pixel minimum and auto-masking (eq. 5).
    """
    if views.sample_points is None or views.sample_weights is None:
        raise ValueError("photometric_objective: the views carry no sample_points / sample_weights (a rasteriser?)")
    B, T, V = batch.images.shape[:3]
    if T < 2:
        return None
    f = views.frame
    N = B * V
    S = views.sample_points.shape[-2]
    rows, cols = views.grid_hw
    pixels = views.pixels.flatten(0, 1)  # [N R 2]
    target = views.grid(sample_image(batch.images[:, f].flatten(0, 1), pixels)[0].unflatten(0, (B, V)))
    pts = views.sample_points.reshape(N, -1, 3)
    T_ego0_cam = batch.T_ego0_cam()
    colours, in_view, identity, sources = [], [], [], []
    for t in range(T):
        if t == f:
            continue
        uv_src, _, in_front = project_points(pts, batch.K[:, t].flatten(0, 1), T_ego0_cam[:, t].flatten(0, 1))
        src = batch.images[:, t].flatten(0, 1)
        c, inside = sample_image(src, uv_src)  # [N R*S 3]
        colours.append(c.reshape(N, rows, cols, S, 3).permute(0, 3, 4, 1, 2))
        in_view.append((in_front & inside).reshape(N, rows, cols, S).permute(0, 3, 1, 2))
        identity.append(views.grid(sample_image(src, pixels)[0].unflatten(0, (B, V))))
        sources.append(t)
    weights = views.grid(views.sample_weights)  # [N S rows cols]
    offsets = batch.frame_offsets
    source_valid = (offsets[:, sources] != offsets[:, f : f + 1]).T.repeat_interleave(V, dim=1)  # [M N]
    valid = mask.reshape(N, rows, cols)
    return reprojection_loss(
        torch.stack(colours), weights, torch.stack(in_view), target, torch.stack(identity), valid,
        source_valid=source_valid, reduction=reduction,
    )


def rgb_objective(views: RenderedViews, batch: Frames, mask: Bool[Tensor, "B V R"]) -> Tensor:
    """Rendered-colour loss ``mean 0.85 (1 - SSIM) / 2 + 0.15 |c - I|`` on the ray grid, the
    target ``I`` read bilinearly from frame ``views.frame``'s images at the rays' pixels.

    Raises:
        ValueError: the views carry no ``rgb``.

    Source: SelfOcc (Huang et al. 2024), rendered RGB loss (0.85 SSIM + 0.15 L1, weight
    0.1); GaussianFlowOcc's optional colour rendering; see
    :func:`selfsup.losses.photometric.rgb_loss`.
    """
    if views.rgb is None:
        raise ValueError("rgb_objective: the views carry no rgb (the representation renders no colour)")
    B, _, V = batch.images.shape[:3]
    target, _ = sample_image(batch.images[:, views.frame].flatten(0, 1), views.pixels.flatten(0, 1))
    rows, cols = views.grid_hw
    return rgb_loss(views.grid(views.rgb), views.grid(target.unflatten(0, (B, V))), mask.reshape(B * V, rows, cols))
