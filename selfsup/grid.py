"""The voxel grid shared by voxelizers, losses and evaluators."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from selfsup.constants import OCC3D_FREE, OCC3D_LOWER, OCC3D_NUM_CLASSES, OCC3D_UPPER, OCC3D_VOXEL_SIZE


@dataclass(frozen=True)
class VoxelGrid:
    """An axis-aligned voxel grid in the ego frame, indexed [x, y, z].

    Args:
        lower: (x, y, z) of the grid's minimum corner, metres, ego frame.
        upper: (x, y, z) of the maximum corner, metres.
        voxel_size: edge length of a voxel, metres.

    Source: Occ3D-nuScenes (Tian et al. 2023): [-40, -40, -1, 40, 40, 5.4] m at 0.4 m,
    200 x 200 x 16; voxel i's centre is lower + voxel_size (i + 0.5).
    """

    lower: tuple[float, float, float] = OCC3D_LOWER
    upper: tuple[float, float, float] = OCC3D_UPPER
    voxel_size: float = OCC3D_VOXEL_SIZE

    def __post_init__(self):
        for lo, hi in zip(self.lower, self.upper):
            if hi <= lo:
                raise ValueError(f"VoxelGrid: upper {self.upper} must exceed lower {self.lower}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(round((hi - lo) / self.voxel_size) for lo, hi in zip(self.lower, self.upper))

    def centers(self, device: torch.device | str = "cpu") -> Float[Tensor, "X Y Z 3"]:
        """Voxel centres in metres (ego frame), the true centres lower + size (i + 0.5)."""
        axes = [
            lo + self.voxel_size * (torch.arange(n, device=device, dtype=torch.float32) + 0.5)
            for lo, n in zip(self.lower, self.shape)
        ]
        return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)

    def box(self, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
        """(lower, upper) corners as float32 tensors of shape [3]."""
        return (
            torch.tensor(self.lower, dtype=torch.float32, device=device),
            torch.tensor(self.upper, dtype=torch.float32, device=device),
        )


OCC3D_GRID = VoxelGrid()
__all__ = ["OCC3D_FREE", "OCC3D_GRID", "OCC3D_NUM_CLASSES", "VoxelGrid"]
