"""Differentiable renderers: rays, NeuS / density volume rendering, Gaussian splatting.

``render`` knows no dataset and imports nothing from ``selfsup``: it takes rays and a field
callable and returns typed dataclasses. Dimension letters: R rays, S samples per ray,
P points, C channels.
"""

from render.gaussians import GaussianRenderOutput, rasterize_gaussians
from render.geometry import project_points, quat_to_rotmat
from render.grid import GridField, grid_spacing, sample_grid
from render.rays import Rays, jittered_pixel_grid, pixel_rays, ray_aabb, rays_in_box, strided_pixel_grid
from render.volume import (
    DensityRenderOutput,
    FieldSamples,
    NeuSRenderer,
    VolumeRenderOutput,
    depth_from_dist,
    neus_alpha,
    render_density,
    resolve_backend,
    weights_from_alpha,
    weights_from_density,
)

__all__ = [
    "GridField",
    "grid_spacing",
    "sample_grid",
    "GaussianRenderOutput",
    "rasterize_gaussians",
    "Rays",
    "pixel_rays",
    "jittered_pixel_grid",
    "strided_pixel_grid",
    "ray_aabb",
    "rays_in_box",
    "project_points",
    "quat_to_rotmat",
    "FieldSamples",
    "VolumeRenderOutput",
    "DensityRenderOutput",
    "NeuSRenderer",
    "neus_alpha",
    "weights_from_alpha",
    "weights_from_density",
    "render_density",
    "depth_from_dist",
    "resolve_backend",
]
