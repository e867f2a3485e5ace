"""Images for people: coloured depth maps and bird's-eye views of Occ3D voxels."""

from __future__ import annotations

import numpy as np
from jaxtyping import Float, UInt8
from matplotlib import colormaps

from selfsup.grid import OCC3D_FREE

# Occ3D class colours (RGB), in class order 0-16; free is drawn black.
OCC3D_PALETTE = np.array(
    [
        [0, 0, 0], [255, 120, 50], [255, 192, 203], [255, 255, 0], [0, 150, 245],
        [0, 255, 255], [200, 180, 0], [255, 0, 0], [255, 240, 150], [135, 60, 0],
        [160, 32, 240], [255, 0, 255], [139, 137, 137], [75, 0, 75], [150, 240, 80],
        [230, 230, 250], [0, 175, 0],
    ],
    dtype=np.uint8,
)
OCC3D_PALETTE[0] = (128, 128, 128)  # "others": grey, so it differs from free (black)


def colorize_depth(depth: Float[np.ndarray, "H W"], max_depth: float = 60.0) -> UInt8[np.ndarray, "H W 3"]:
    """Depth in metres -> RGB with the turbo colour map (near red, far blue); 0 = no depth, black."""
    valid = depth > 0
    scaled = np.clip(depth / max_depth, 0.0, 1.0)
    rgb = (colormaps["turbo_r"](scaled)[..., :3] * 255).astype(np.uint8)
    rgb[~valid] = 0
    return rgb


def bev_occupancy(labels: UInt8[np.ndarray, "X Y Z"], free_label: int = OCC3D_FREE) -> UInt8[np.ndarray, "X Y 3"]:
    """Top-down image of semantic voxels: each (x, y) column shows its highest occupied class.

    The image is oriented like a map seen from above with ego x (forward) pointing up and
    ego y (left) pointing left: row 0 is the largest x, column 0 the largest y.
    """
    occupied = labels != free_label
    z_top = labels.shape[2] - 1 - np.argmax(occupied[:, :, ::-1], axis=2)
    top = np.take_along_axis(labels, z_top[..., None], axis=2)[..., 0]
    any_occ = occupied.any(axis=2)
    rgb = np.zeros((*top.shape, 3), dtype=np.uint8)
    rgb[any_occ] = OCC3D_PALETTE[np.clip(top[any_occ], 0, len(OCC3D_PALETTE) - 1)]
    return np.ascontiguousarray(rgb[::-1, ::-1])
