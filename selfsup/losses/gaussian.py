"""Losses of the Gaussian-splatting model (GaussianFlowOcc) not shared with other models."""

from __future__ import annotations

from jaxtyping import Bool, Float
from torch import Tensor

from selfsup.losses.photometric import masked_mean


def depth_mse_loss(
    prediction: Float[Tensor, "*s"], target: Float[Tensor, "*s"], mask: Bool[Tensor, "*s"] | None = None
) -> Float[Tensor, ""]:
    """Mean squared depth error ``mean (d_pred - d_gt)^2`` (metres^2) over pixels with a target.

    Targets ``<= 0`` (no LiDAR return / no pseudo depth) never count; 0 if no pixel counts.

    Args:
        prediction: rendered camera depth (z), metres.
        target: LiDAR or pseudo depth (z), metres; 0 where unknown.
        mask: further restricts the pixels that count.

    Source: GaussianFlowOcc (Boeder et al. 2025): depth MSE on pixels with depth > 0,
    weight 0.05.
    """
    valid = target > 0
    if mask is not None:
        valid = valid & mask
    return masked_mean((prediction - target).square(), valid)


def flow_regularization(
    flow: Float[Tensor, "*s 3"], mask: Bool[Tensor, "*s"] | None = None
) -> Float[Tensor, ""]:
    """Mean squared length of the temporal displacements (metres^2): prefers the smallest flow
    that explains the neighbouring frames, so static scene parts do not drift.

    Args:
        flow: displacements of Gaussians to target timestamps, metres.
        mask: displacements that count (e.g. Gaussians allowed to move); all without one.

    Source: GaussianFlowOcc's optional movement regulariser (its exact form is not
    published; this is a plain L2 penalty).
    """
    return masked_mean(flow.square().sum(-1), mask)
