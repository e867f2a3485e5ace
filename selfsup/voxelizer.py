"""Turn a representation into Occ3D semantic voxels: the shared entry point of the evaluators.

Every model exposes ``predict_occupancy(encode(batch)).labels`` (uint8 ``[B X Y Z]``, labels 0-16,
17 = free); field-based models (SDF tri-plane, density volumes) build it with
:func:`voxelize_field`, Gaussian models with ``voxelize_gaussians`` in
``selfsup.representations.gaussians``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from jaxtyping import Float, UInt8
from torch import Tensor

from selfsup.grid import OCC3D_FREE, VoxelGrid


@torch.no_grad()
def voxelize_field(
    query: Callable[[Float[Tensor, "N 3"]], tuple[Float[Tensor, "N"], Float[Tensor, "N K"]]],
    grid: VoxelGrid,
    sdf_threshold: float = 0.0,
    free_label: int = OCC3D_FREE,
    chunk: int = 262_144,
    device: torch.device | str = "cpu",
) -> UInt8[Tensor, "X Y Z"]:
    """Label each voxel by querying a field at the voxel centre.

    Args:
        query: maps ego-frame points (metres) to (sdf or negated occupancy score [N], semantic
            logits [N, K]); a voxel is occupied where the first output is <= ``sdf_threshold``.
        grid: the voxel grid; queries use the true centres lower + size (i + 0.5).
        sdf_threshold: occupancy threshold on the first output, metres for an SDF.
        free_label: label written to unoccupied voxels (Occ3D: 17).
        chunk: points per query call, bounding memory.

    Returns:
        uint8 labels [X, Y, Z]: semantic argmax where occupied, ``free_label`` elsewhere.

    Source: SelfOcc ``eval_iou.py --occ3d --sem``; deliberate difference: SelfOcc queries
    ``linspace`` end points (up to 0.2 m off the centres), we query the true voxel centres.
    """
    xyz = grid.centers(device).reshape(-1, 3)
    labels = torch.empty(xyz.shape[0], dtype=torch.uint8, device=device)
    for start in range(0, xyz.shape[0], chunk):
        sdf, logits = query(xyz[start : start + chunk])
        sem = logits.argmax(dim=-1).to(torch.uint8)
        labels[start : start + chunk] = torch.where(sdf <= sdf_threshold, sem, torch.full_like(sem, free_label))
    return labels.reshape(grid.shape)
