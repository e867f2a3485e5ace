"""Non-local photometric depth search along rendered rays (plane-sweep patch matching).

A volume renderer trained by the reprojection loss only feels the photometric error where
its weights already sit (NeuS weights are ~0 away from the current surface), so it refines
locally. This module searches every ray non-locally instead: it places ``K`` depth
candidates along the ray (uniform in inverse distance), projects each into the same
camera of the neighbouring frames, and compares a small image patch around the target pixel
with the patch around each projection (zero-mean normalised cross-correlation). The
candidate with the lowest cost over the sources (minimum over sources, as the reprojection
loss does for occlusions) is the ray's photometric depth hypothesis; it counts only where it
is distinct (its cost clearly below every candidate away from it) and the patch is textured.
It uses the same images and poses as the reprojection loss and no depth sensor.

Source: plane-sweep stereo (Collins 1996) with ZNCC patch costs; the cost-volume idea of
multi-view stereo networks (MVSNet, Yao et al. 2018), used here as a self-generated target.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from selfsup.losses.photometric import project_points, sample_image

__all__ = ["DepthSearchResult", "inverse_depth_candidates", "photometric_depth_search"]


@dataclass
class DepthSearchResult:
    """Per-ray result of :func:`photometric_depth_search`.

    Attributes:
        dist: best candidate distance along the ray, metres.
        confident: the hypothesis is distinct, textured and seen by a source.
        cost: its matching cost, ``(1 - ZNCC) / 2`` in [0, 1].
    """

    dist: Float[Tensor, "N R"]
    confident: Bool[Tensor, "N R"]
    cost: Float[Tensor, "N R"]


def inverse_depth_candidates(near: float, far: float, count: int, device=None) -> Float[Tensor, "K"]:
    """``count`` distances from ``near`` to ``far`` (metres), uniform in 1 / distance.

    Raises:
        ValueError: unless ``0 < near < far`` and ``count >= 2``.
    """
    if not 0 < near < far or count < 2:
        raise ValueError(f"inverse_depth_candidates: need 0 < near < far and count >= 2, got {near}, {far}, {count}")
    inv = torch.linspace(1.0 / near, 1.0 / far, count, device=device)
    return 1.0 / inv


def _patch_offsets(size: int, stride: float, device) -> Tensor:
    r = torch.arange(size, device=device, dtype=torch.float32) - (size - 1) / 2
    dv, du = torch.meshgrid(r * stride, r * stride, indexing="ij")
    return torch.stack([du, dv], dim=-1).reshape(-1, 2)  # [P 2]


def _zncc_normalise(patches: Tensor) -> tuple[Tensor, Tensor]:
    """Zero-mean, unit-norm patch vectors over (pixels, channels); also their std."""
    flat = patches.flatten(-2)
    flat = flat - flat.mean(dim=-1, keepdim=True)
    norm = flat.norm(dim=-1, keepdim=True)
    return flat / norm.clamp_min(1e-6), norm[..., 0] / flat.shape[-1] ** 0.5


@torch.no_grad()
def photometric_depth_search(
    target: Float[Tensor, "N 3 H W"],
    sources: Float[Tensor, "M N 3 H W"],
    K_target: Float[Tensor, "N 3 3"],
    K_sources: Float[Tensor, "M N 3 3"],
    T_ego_sources: Float[Tensor, "M N 4 4"],
    origins: Float[Tensor, "N R 3"],
    directions: Float[Tensor, "N R 3"],
    uv: Float[Tensor, "N R 2"],
    ray_far: Float[Tensor, "N R"],
    candidates: Float[Tensor, "K"],
    source_valid: Bool[Tensor, "M N"] | None = None,
    patch: int = 5,
    stride: float = 1.0,
    max_cost: float = 0.3,
    distinct_ratio: float = 0.8,
    exclusion: int = 3,
    min_texture: float = 0.02,
) -> DepthSearchResult:
    """Search each ray's depth by patch matching against the neighbouring frames.

    Args:
        target: the images the rays start in (current frame), colours in [0, 1].
        sources: the same cameras in M neighbouring frames.
        K_target, K_sources: intrinsics, pixels (``render.rays`` convention).
        T_ego_sources: source camera -> ego frame of the rays.
        origins, directions: the rays (unit directions), metres, ego frame.
        uv: each ray's pixel in the target image.
        ray_far: where each ray leaves the represented box, metres; candidates beyond are
            not considered.
        candidates: candidate distances along the rays, metres, increasing.
        source_valid: sources that exist per image (``None``: all).
        patch, stride: patch of ``patch x patch`` pixels ``stride`` apart (fronto-parallel).
        max_cost: a hypothesis counts only with cost below this.
        distinct_ratio: ... and below ``distinct_ratio`` times the lowest cost of the
            candidates more than ``exclusion`` steps away.
        min_texture: ... and where the target patch's standard deviation exceeds this.

    Returns:
        :class:`DepthSearchResult`.
    """
    M, N = sources.shape[:2]
    R, Kc = uv.shape[1], candidates.shape[0]
    offsets = _patch_offsets(patch, stride, uv.device)  # [P 2]
    P = offsets.shape[0]
    tgt, _ = sample_image(target, (uv[:, :, None] + offsets).reshape(N, R * P, 2))
    tgt_vec, tgt_std = _zncc_normalise(tgt.reshape(N, R, P, 3))  # [N R 3P]
    points = origins[:, :, None] + directions[:, :, None] * candidates[:, None]  # [N R K 3]
    cost = torch.full((N, R, Kc), float("inf"), device=uv.device)
    for m in range(M):
        uv_s, _, in_front = project_points(points.reshape(N, R * Kc, 3), K_sources[m], T_ego_sources[m])
        pts = (uv_s[:, :, None] + offsets).reshape(N, R * Kc * P, 2)
        vals, inside = sample_image(sources[m], pts)
        src_vec, _ = _zncc_normalise(vals.reshape(N, R, Kc, P, 3))
        c = 0.5 * (1.0 - (src_vec * tgt_vec[:, :, None]).sum(dim=-1))  # [N R K]
        ok = (in_front & inside.reshape(N, R * Kc, P).all(dim=-1)).reshape(N, R, Kc)
        if source_valid is not None:
            ok = ok & source_valid[m][:, None, None]
        cost = torch.minimum(cost, torch.where(ok, c, torch.full_like(c, float("inf"))))
    cost = torch.where(candidates <= ray_far[..., None], cost, torch.full_like(cost, float("inf")))
    best, idx = cost.min(dim=-1)
    steps = torch.arange(Kc, device=uv.device)
    far_from_best = (steps - idx[..., None]).abs() > exclusion
    runner_up = torch.where(far_from_best, cost, torch.full_like(cost, float("inf"))).min(dim=-1).values
    confident = (
        torch.isfinite(best) & (best < max_cost) & (best < distinct_ratio * runner_up) & (tgt_std > min_texture)
    )
    return DepthSearchResult(dist=candidates[idx], confident=confident, cost=best)
