"""Loss functions: pure ``(prediction, target, mask) -> scalar`` functions; weights live in configs."""

from selfsup.losses.depth import depth_l1_loss, sparse_depth_grid
from selfsup.losses.gaussian import depth_mse_loss, flow_regularization
from selfsup.losses.photometric import (
    gaussian_blur,
    masked_mean,
    photometric_error,
    project_points,
    reprojection_loss,
    rgb_loss,
    sample_image,
    ssim_dissimilarity,
)
from selfsup.losses.regularizers import (
    axis_offsets,
    distortion_loss,
    eikonal_loss,
    free_space_loss,
    grid_eikonal_loss,
    grid_gradient,
    grid_hessian_loss,
    hessian_loss,
)
from selfsup.losses.semantic import IGNORE_INDEX, semantic_loss

__all__ = [
    "IGNORE_INDEX",
    "axis_offsets",
    "depth_l1_loss",
    "depth_mse_loss",
    "distortion_loss",
    "flow_regularization",
    "eikonal_loss",
    "free_space_loss",
    "gaussian_blur",
    "grid_eikonal_loss",
    "grid_gradient",
    "grid_hessian_loss",
    "hessian_loss",
    "masked_mean",
    "photometric_error",
    "project_points",
    "reprojection_loss",
    "rgb_loss",
    "sample_image",
    "semantic_loss",
    "sparse_depth_grid",
    "ssim_dissimilarity",
]
