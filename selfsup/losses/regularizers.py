"""Regularisers of a signed distance field: eikonal and second-order smoothness."""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from selfsup.losses.photometric import masked_mean


def eikonal_loss(
    gradients: Float[Tensor, "*s 3"], mask: Bool[Tensor, "*s"] | None = None
) -> Float[Tensor, ""]:
    """Eikonal loss ``mean((|grad f(x)| - 1)^2)``: a true SDF has unit gradient norm.

    Args:
        gradients: ``grad f`` at sample points (autograd, ego frame, metres / metre).
        mask: points that count; all without a mask.

    Source: Gropp et al. 2020 (IGR), eq. 2; NeuS (Wang et al. 2021), eq. 14; SelfOcc weight 0.1.
    """
    return masked_mean((gradients.norm(dim=-1) - 1.0) ** 2, mask)


def axis_offsets(points: Float[Tensor, "P 3"], step: float) -> Float[Tensor, "P 7 3"]:
    """Each point and its 6 neighbours ``x +- step e_k`` (k = x, y, z), for :func:`hessian_loss`.

    Order: ``x, x + h e_x, x + h e_y, x + h e_z, x - h e_x, x - h e_y, x - h e_z``.
    """
    eye = torch.eye(3, dtype=points.dtype, device=points.device) * step
    offsets = torch.cat([torch.zeros_like(eye[:1]), eye, -eye], dim=0)  # [7 3]
    return points[:, None, :] + offsets


def hessian_loss(
    sdf_stencil: Float[Tensor, "P 7"], step: float, mask: Bool[Tensor, "P"] | None = None
) -> Float[Tensor, ""]:
    """Second-order smoothness: mean L1 norm of the finite-difference Hessian diagonal.

    With ``f`` sampled on the stencil of :func:`axis_offsets` (spacing ``h = step``),
    ``H_kk(x) ~= (f(x + h e_k) - 2 f(x) + f(x - h e_k)) / h^2`` and the loss is
    ``mean_x sum_k |H_kk(x)|``. It is exactly 0 for a field linear in x (a plane's SDF).
    Only the diagonal of the Hessian is penalised (mixed partials would need 12 more
    queries per point).

    Args:
        sdf_stencil: SDF values at the 7 stencil points of each point, metres.
        step: stencil spacing h, metres.
        mask: points that count.

    Raises:
        ValueError: if ``step`` is not positive.

    Source: SelfOcc (Huang et al. 2024) second-order smoothness regulariser (weight 0.01),
    here in finite-difference form (cf. Neuralangelo, Li et al. 2023, Sec. 3.2).
    """
    if step <= 0:
        raise ValueError(f"hessian_loss: step must be positive, got {step}")
    centre = sdf_stencil[:, :1]
    second = (sdf_stencil[:, 1:4] + sdf_stencil[:, 4:7] - 2 * centre) / step**2  # [P 3]
    return masked_mean(second.abs().sum(dim=-1), mask)
