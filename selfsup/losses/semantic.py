"""Semantic supervision of rendered semantic logits."""

from __future__ import annotations

import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from selfsup.constants import SEMANTIC_UNLABELLED
from selfsup.losses.photometric import masked_mean

IGNORE_INDEX = SEMANTIC_UNLABELLED


def semantic_loss(
    logits: Float[Tensor, "R K"],
    labels: Int[Tensor, "R"],
    mask: Bool[Tensor, "R"] | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> Float[Tensor, ""]:
    """Cross-entropy ``-log softmax(l)_y`` averaged over labelled rays.

    Rays labelled ``ignore_index`` (unlabelled pixels) or outside ``mask`` do not count;
    0 if no ray counts.

    Args:
        logits: volume-rendered semantic logits of the rays.
        labels: class per ray (0..K-1) or ``ignore_index``.
        mask: rays that may count.

    Source: SelfOcc (Huang et al. 2024), rendered semantics cross-entropy (weight 0.1)
    against 2D pseudo labels; GaussianFlowOcc's CE on labelled pixels.
    """
    valid = labels != ignore_index
    if mask is not None:
        valid = valid & mask
    safe = labels.masked_fill(~valid, 0)
    return masked_mean(F.cross_entropy(logits, safe, reduction="none"), valid)
