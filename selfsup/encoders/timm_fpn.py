"""A timm backbone with a feature pyramid (FPN) neck for multi-camera images."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

# ImageNet statistics: timm backbones are trained on images normalised this way.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TimmFPN(nn.Module):
    """timm ``features_only`` backbone + FPN (Lin et al. 2017) on every camera image.

    Args:
        name: timm model name ("resnet50" as in SelfOcc; "resnet18" for tiny configs).
        out_channels: channels of every FPN level.
        out_indices: backbone stages fed to the FPN (timm ``out_indices``); for a ResNet,
            (2, 3, 4) gives strides 8, 16, 32.
        pretrained_path: optional local checkpoint of the backbone (a timm / torchvision
            state dict, or a dict with a "state_dict" or "model" entry). Nothing is ever
            downloaded; without it the backbone starts from random weights.

    Raises:
        FileNotFoundError: ``pretrained_path`` does not exist.
        RuntimeError: the checkpoint's keys do not fit the backbone.
    """

    def __init__(
        self,
        name: str = "resnet50",
        out_channels: int = 256,
        out_indices: tuple[int, ...] = (2, 3, 4),
        pretrained_path: str | None = None,
    ):
        super().__init__()
        self.backbone = timm.create_model(name, pretrained=False, features_only=True, out_indices=out_indices)
        if pretrained_path:
            self._load_backbone(pretrained_path)
        in_channels = self.backbone.feature_info.channels()
        self.strides: tuple[int, ...] = tuple(self.backbone.feature_info.reduction())
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels)
        self.out_channels = out_channels
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def _load_backbone(self, path: str) -> None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"TimmFPN: pretrained_path {path!r} does not exist")
        state = torch.load(path, map_location="cpu", weights_only=True)
        for key in ("state_dict", "model"):
            if isinstance(state, dict) and key in state and isinstance(state[key], dict):
                state = state[key]
        missing, _ = self.backbone.load_state_dict(state, strict=False)
        if missing:
            raise RuntimeError(f"TimmFPN: {path!r} lacks {len(missing)} backbone keys, e.g. {missing[:3]}")

    def forward(self, images: Float[Tensor, "B V 3 H W"]) -> list[Float[Tensor, "B V C _h _w"]]:
        """Features of every camera image, finest level first (strides ``self.strides``).

        Args:
            images: RGB in [0, 1].
        """
        b, v = images.shape[:2]
        x = (images.flatten(0, 1) - self.mean) / self.std
        feats = self.backbone(x)
        laterals = [conv(f) for conv, f in zip(self.lateral, feats)]
        for i in range(len(laterals) - 1, 0, -1):  # top-down pathway
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[-2:], mode="bilinear", align_corners=False
            )
        outs = [conv(x) for conv, x in zip(self.output, laterals)]
        return [o.unflatten(0, (b, v)) for o in outs]
