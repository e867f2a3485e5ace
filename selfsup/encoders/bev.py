"""BEV (2D) and voxel (3D) encoders: ResNet-style residual stages + an LSS-style FPN.

Inputs and outputs are channels-first grids indexed [x, y] / [x, y, z] (the Occ3D layout);
every convolution is isotropic, so the axis order only fixes the output layout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn


def _conv(dim: int, cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Module:
    conv = nn.Conv2d if dim == 2 else nn.Conv3d
    return conv(cin, cout, k, stride=stride, padding=k // 2, bias=False)


def _norm(dim: int, c: int) -> nn.Module:
    return nn.BatchNorm2d(c) if dim == 2 else nn.BatchNorm3d(c)


class BasicBlock(nn.Module):
    """ResNet basic block (He et al. 2016): two 3x3 convs with BN, identity / projected skip."""

    def __init__(self, dim: int, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1, self.bn1 = _conv(dim, cin, cout, 3, stride), _norm(dim, cout)
        self.conv2, self.bn2 = _conv(dim, cout, cout), _norm(dim, cout)
        # BEVDet's CustomResNet projects the skip with a 3x3 strided conv.
        self.down = None if (stride == 1 and cin == cout) else _conv(dim, cin, cout, 3, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.down is None else self.down(x)), inplace=True)


class ResNetStages(nn.Module):
    """Residual stages; returns every stage's output, finest first.

    Args:
        dim: 2 (BEV plane) or 3 (voxel volume).
        in_channels: input channels.
        channels: output channels per stage.
        num_layers: blocks per stage.
        strides: stride of each stage's first block.

    Source: BEVDet ``CustomResNet`` (2D: channels [2C, 4C, 8C], 2 blocks, strides 2) and
    ``CustomResNet3D`` (3D: channels [C, 2C, 4C], blocks [1, 2, 4], strides [1, 2, 2]).
    """

    def __init__(self, dim: int, in_channels: int, channels: tuple[int, ...], num_layers: tuple[int, ...] = (2, 2, 2),
                 strides: tuple[int, ...] = (2, 2, 2)):
        super().__init__()
        if dim not in (2, 3):
            raise ValueError(f"ResNetStages: dim must be 2 or 3, got {dim}")
        if not (len(channels) == len(num_layers) == len(strides)):
            raise ValueError(f"ResNetStages: channels {channels}, num_layers {num_layers}, strides {strides} differ in length")
        self.stages = nn.ModuleList()
        cin = in_channels
        for c, n, s in zip(channels, num_layers, strides):
            blocks = [BasicBlock(dim, cin, c, s)] + [BasicBlock(dim, c, c) for _ in range(n - 1)]
            self.stages.append(nn.Sequential(*blocks))
            cin = c

    def forward(self, x: Tensor) -> list[Tensor]:
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs


class BEVEncoder2D(nn.Module):
    """BEV encoder of FlashOcc / BEVDet: ``CustomResNet`` stages + ``FPN_LSS`` neck.

    The deepest stage is upsampled to the first stage's size, concatenated with it, fused by
    two 3x3 convs, upsampled x2 back to the input size and projected to ``out_channels``.

    Args:
        in_channels: channels of the lifted BEV plane (FlashOcc M1: 64).
        channels: stage channels (FlashOcc M1: [128, 256, 512]).
        out_channels: output channels (FlashOcc M1: 256).
        num_layers: blocks per stage (default 2 each, BEVDet).

    Raises:
        ValueError: fewer than 2 stages.

    Source: BEVDet ``CustomResNet`` + ``FPN_LSS`` (input_feature_index (0, 2), scale 4,
    extra upsample 2, channel factor 2); the same layout for any number of stages >= 2
    (finest and deepest are fused).
    """

    def __init__(self, in_channels: int = 64, channels: tuple[int, ...] = (128, 256, 512), out_channels: int = 256,
                 num_layers: tuple[int, ...] | None = None):
        super().__init__()
        num_layers = (2,) * len(channels) if num_layers is None else num_layers
        if len(channels) < 2:
            raise ValueError(f"BEVEncoder2D: need >= 2 stages, got channels {channels}")
        self.in_channels = in_channels
        self.backbone = ResNetStages(2, in_channels, tuple(channels), tuple(num_layers), (2,) * len(channels))
        mid = 2 * out_channels
        self.fuse = nn.Sequential(
            nn.Conv2d(channels[0] + channels[-1], mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
        )
        self.up = nn.Sequential(
            nn.Conv2d(mid, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 1),
        )
        self.out_channels = out_channels

    def forward(self, x: Float[Tensor, "B C X Y"]) -> Float[Tensor, "B Co X Y"]:
        feats = self.backbone(x)
        fine, deep = feats[0], feats[-1]
        deep = F.interpolate(deep, size=fine.shape[-2:], mode="bilinear", align_corners=True)
        y = self.fuse(torch.cat([fine, deep], dim=1))
        y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=True)
        return self.up(y)


class VoxelEncoder3D(nn.Module):
    """Voxel encoder of BEVDet-Occ 3D: ``CustomResNet3D`` stages + ``LSSFPN3D`` neck.

    Every stage's output is upsampled (trilinear) to the first stage's size, concatenated
    and projected by a 1x1x1 conv + BN + ReLU.

    Args:
        in_channels: channels of the lifted volume (BEVDet-Occ 3D: 32).
        channels: stage channels (BEVDet-Occ 3D: [32, 64, 128]).
        out_channels: output channels (BEVDet-Occ 3D: 32).
        num_layers: blocks per stage ([1, 2, 4]).
        strides: first-block strides ([1, 2, 2]).

    Source: BEVDet ``CustomResNet3D`` and ``LSSFPN3D``.
    """

    def __init__(self, in_channels: int = 32, channels: tuple[int, ...] = (32, 64, 128), out_channels: int = 32,
                 num_layers: tuple[int, ...] = (1, 2, 4), strides: tuple[int, ...] = (1, 2, 2)):
        super().__init__()
        self.in_channels = in_channels
        self.backbone = ResNetStages(3, in_channels, tuple(channels), tuple(num_layers), tuple(strides))
        self.neck = nn.Sequential(
            nn.Conv3d(sum(channels), out_channels, 1, bias=False), nn.BatchNorm3d(out_channels), nn.ReLU(inplace=True)
        )
        self.out_channels = out_channels

    def forward(self, x: Float[Tensor, "B C X Y Z"]) -> Float[Tensor, "B Co X Y Z"]:
        feats = self.backbone(x)
        size = feats[0].shape[-3:]
        ups = [feats[0]] + [F.interpolate(f, size=size, mode="trilinear", align_corners=True) for f in feats[1:]]
        y = self.neck(torch.cat(ups, dim=1))
        if y.shape[-3:] != x.shape[-3:]:
            y = F.interpolate(y, size=x.shape[-3:], mode="trilinear", align_corners=True)
        return y
