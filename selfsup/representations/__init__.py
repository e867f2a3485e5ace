"""Scene representations queried at 3D points of the ego frame (or splatted, for Gaussians)."""

from selfsup.representations.gaussians import (
    DYNAMIC_CLASSES,
    GaussianDecoder,
    GaussianFlow,
    Gaussians,
    splat_gaussians_to_grid,
    voxelize_gaussians,
)
from selfsup.representations.triplane_sdf import TPVPlanes, TriplaneSDF

__all__ = [
    "DYNAMIC_CLASSES",
    "GaussianDecoder",
    "GaussianFlow",
    "Gaussians",
    "TPVPlanes",
    "TriplaneSDF",
    "splat_gaussians_to_grid",
    "voxelize_gaussians",
]
