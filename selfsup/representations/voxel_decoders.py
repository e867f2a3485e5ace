"""Voxel decoders shared by every branch: features on the ego grid -> Occ3D class logits.

Both heads return logits ``[B, X, Y, Z, K]`` in the Occ3D [x, y, z] layout (K = 18: the
17 classes and free = 17), the input of the voxel objectives
(:mod:`selfsup.objectives.voxel`) and of :func:`logits_to_labels`. Any representation
that can put a feature plane ``[B, C, X, Y]`` or volume ``[B, C, X, Y, Z]`` on the grid
(LSS lifting, TPV planes, splatted Gaussian features) can use them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from jaxtyping import Float, UInt8
from torch import Tensor, nn

from selfsup.grid import OCC3D_FREE, OCC3D_NUM_CLASSES


def _init_free_prior(layer: nn.Linear, num_classes: int, groups: int, free_prior: float | None) -> None:
    """Bias the last layer so that every voxel starts with softmax probability ``free_prior``
    of free (the other classes equal): ``b_free = ln(q (K - 1) / (1 - q))``, others 0, last
    layer weights scaled by 0.01. An occupancy prior in the spirit of the focal-loss prior
    init (Lin et al. 2017, Sec. 4.1); ``None`` keeps PyTorch's default init (FlashOcc)."""
    if free_prior is None:
        return
    if not 0.0 < free_prior < 1.0:
        raise ValueError(f"free_prior must lie in (0, 1), got {free_prior}")
    with torch.no_grad():
        layer.weight.mul_(0.01)
        bias = layer.bias.view(groups, num_classes)
        bias.zero_()
        bias[:, OCC3D_FREE] = math.log(free_prior * (num_classes - 1) / (1.0 - free_prior))


class ChannelToHeightHead(nn.Module):
    """FlashOcc channel-to-height head: a BEV plane to voxel logits.

    ``3x3 conv + ReLU`` (in -> ``hidden``), then per BEV cell an MLP ``Linear(hidden,
    2 hidden) - Softplus - Linear(2 hidden, K Z)`` whose output is viewed as (Z heights x K
    classes).

    Args:
        in_channels: channels of the BEV plane (FlashOcc M1: 256).
        hidden: channels of the conv / MLP (FlashOcc M1: ``out_dim`` 256).
        num_z: height cells (Occ3D: 16).
        num_classes: classes incl. free (Occ3D: 18).
        free_prior: initial probability of free per voxel (see ``_init_free_prior``), or
            None for the default init (FlashOcc).

    Source: FlashOcc (Yu et al. 2023) Sec. 3.3, ``BEVOCCHead2D`` with ``use_predicter``.
    """

    def __init__(self, in_channels: int = 256, hidden: int = 256, num_z: int = 16,
                 num_classes: int = OCC3D_NUM_CLASSES, free_prior: float | None = None):
        super().__init__()
        self.num_z, self.num_classes = num_z, num_classes
        self.conv = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.mlp = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.Softplus(), nn.Linear(2 * hidden, num_classes * num_z))
        _init_free_prior(self.mlp[-1], num_classes, num_z, free_prior)

    def forward(self, bev: Float[Tensor, "B C X Y"]) -> Float[Tensor, "B X Y Z K"]:
        x = F.relu(self.conv(bev)).permute(0, 2, 3, 1)  # [B X Y hidden]
        out = self.mlp(x)
        return out.view(*out.shape[:3], self.num_z, self.num_classes)


class Conv3DHead(nn.Module):
    """BEVDet-Occ 3D head: ``3x3x3 conv + ReLU`` then a per-voxel MLP to class logits.

    Args:
        in_channels: channels of the volume (BEVDet-Occ 3D: 32).
        hidden: channels of the conv (32 in BEVDet-Occ; the MLP is hidden -> 2 hidden -> K).
        num_classes: classes incl. free (18).
        free_prior: as :class:`ChannelToHeightHead`.

    Source: BEVDet-Occ / FlashOcc repository, ``BEVOCCHead3D`` with ``use_predicter``.
    """

    def __init__(self, in_channels: int = 32, hidden: int = 32, num_classes: int = OCC3D_NUM_CLASSES,
                 free_prior: float | None = None):
        super().__init__()
        self.num_classes = num_classes
        self.conv = nn.Conv3d(in_channels, hidden, 3, padding=1)
        self.mlp = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.Softplus(), nn.Linear(2 * hidden, num_classes))
        _init_free_prior(self.mlp[-1], num_classes, 1, free_prior)

    def forward(self, volume: Float[Tensor, "B C X Y Z"]) -> Float[Tensor, "B X Y Z K"]:
        x = F.relu(self.conv(volume)).permute(0, 2, 3, 4, 1)
        return self.mlp(x)


def logits_to_labels(logits: Float[Tensor, "B X Y Z K"]) -> UInt8[Tensor, "B X Y Z"]:
    """Occ3D labels: the argmax class of every voxel (17 = free), uint8."""
    return logits.argmax(dim=-1).to(torch.uint8)


def tpv_volume(representation, planes, grid) -> Float[Tensor, "B C X Y Z"]:
    """TPV plane features at the voxel centres of ``grid`` (the sum of the three planes'
    bilinear samples, :meth:`TriplaneSDF.sample_planes`), as a volume for :class:`Conv3DHead`:
    the way the SDF branch puts the shared voxel decoders on its features."""
    centres = grid.centers(planes.xy.device).reshape(1, -1, 3).expand(planes.xy.shape[0], -1, -1)
    feats = representation.sample_planes(planes, centres)  # [B N C]
    X, Y, Z = grid.shape
    return feats.transpose(1, 2).reshape(feats.shape[0], feats.shape[2], X, Y, Z)
