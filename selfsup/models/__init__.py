"""Occupancy models implementing ``selfsup.model_api.OccupancyModel``."""

from selfsup.models.gaussian_occ import GAUSSIAN_OCC_LOSS_WEIGHTS, GaussianOcc, GaussianScene
from selfsup.models.sdf_occ import DEFAULT_LOSS_WEIGHTS, SDFOcc, TPVScene

__all__ = ["DEFAULT_LOSS_WEIGHTS", "GAUSSIAN_OCC_LOSS_WEIGHTS", "GaussianOcc", "GaussianScene", "SDFOcc", "TPVScene"]
