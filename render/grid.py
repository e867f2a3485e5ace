"""Fields stored on a dense voxel grid and read by trilinear interpolation.

A neural field decoded once per step on a regular grid (SelfOcc decodes its TPV this way)
makes each ray sample a cheap trilinear lookup instead of an MLP evaluation, so hundreds of
samples per ray are affordable, and derivatives for the eikonal / smoothness regularisers
become finite differences on the grid instead of a double backward through the MLP.

Grid convention: a volume ``[C, X, Y, Z]`` holds values at the cell centres
``lower + (upper - lower) (i + 0.5) / n`` of an axis-aligned box; lookups use
``grid_sample`` with ``align_corners=False`` and border padding (values are clamped to the
outermost centres). Knows no dataset.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from render.volume import FieldSamples

__all__ = ["sample_grid", "GridField", "grid_spacing"]


def grid_spacing(shape: tuple[int, int, int], lower: Tensor, upper: Tensor) -> Float[Tensor, "3"]:
    """Cell edge lengths (metres) of a grid of ``shape`` cells over ``[lower, upper]``."""
    return (upper - lower) / torch.tensor(shape, dtype=lower.dtype, device=lower.device)


def sample_grid(
    volume: Float[Tensor, "C X Y Z"],
    lower: Float[Tensor, "3"],
    upper: Float[Tensor, "3"],
    xyz: Float[Tensor, "P 3"],
) -> Float[Tensor, "P C"]:
    """Trilinear interpolation of a cell-centred volume at points (border padding).

    Args:
        volume: values at the cell centres, indexed [x, y, z].
        lower, upper: box corners, metres, in the points' frame.
        xyz: query points, metres.

    Returns:
        Interpolated values; exactly the stored value at a cell centre.

    Source: trilinear interpolation as in ``torch.nn.functional.grid_sample``
    (``align_corners=False``): the unit coordinate ``2 (x - lower) / (upper - lower) - 1``.
    """
    unit = 2.0 * (xyz - lower) / (upper - lower) - 1.0  # [P 3], (x, y, z)
    # grid_sample's 5-D input is [N, C, D, H, W] = [1, C, X, Y, Z]; its grid is (w, h, d).
    grid = unit.flip(-1).reshape(1, -1, 1, 1, 3).to(volume.dtype)
    out = F.grid_sample(volume[None], grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.reshape(volume.shape[0], -1).T


@dataclass
class GridField:
    """An SDF and per-point features on a dense grid, callable as a renderer field.

    Attributes:
        sdf: signed distance at the cell centres, metres (positive in free space).
        features: channels to composite (colour, semantic logits), ``C >= 0``.
        lower, upper: box corners, metres.
        outside_sdf: SDF returned outside the box (empty space).
    """

    sdf: Float[Tensor, "X Y Z"]
    features: Float[Tensor, "C X Y Z"]
    lower: Float[Tensor, "3"]
    upper: Float[Tensor, "3"]
    outside_sdf: float = 100.0

    def __call__(self, xyz: Float[Tensor, "P 3"]) -> FieldSamples:
        """SDF and features at ``xyz`` (metres); gradients are left to the renderer (it takes
        the along-ray slope when asked not to differentiate)."""
        values = sample_grid(torch.cat([self.sdf[None], self.features], dim=0), self.lower, self.upper, xyz)
        outside = ((xyz < self.lower) | (xyz > self.upper)).any(dim=-1)
        sdf = torch.where(outside, torch.full_like(values[:, 0], self.outside_sdf), values[:, 0])
        return FieldSamples(sdf=sdf, features=values[:, 1:])
