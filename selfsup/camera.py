"""Pinhole camera helpers shared by models and evaluation (pixel convention: see
``selfsup.data.frames.Frames.K``)."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor


def scale_intrinsics(
    K: Float[Tensor, "*b 3 3"], src_hw: tuple[int, int], dst_hw: tuple[int, int]
) -> Float[Tensor, "*b 3 3"]:
    """Intrinsics of the same camera after resizing its image from ``src_hw`` to ``dst_hw``.

    In continuous pixel coordinates (centres at +0.5) a resize is a pure scaling,
    ``u' = u * dst_w / src_w`` and ``v' = v * dst_h / src_h``.
    """
    sx, sy = dst_hw[1] / src_hw[1], dst_hw[0] / src_hw[0]
    scale = torch.tensor([sx, sy, 1.0], dtype=K.dtype, device=K.device)
    return K * scale[:, None]
