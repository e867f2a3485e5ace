"""Semantic supervision of rendered semantic logits by 2D (pseudo) labels."""

from __future__ import annotations

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from selfsup.constants import SEMANTIC_UNLABELLED
from selfsup.data.frames import Frames
from selfsup.losses.semantic import semantic_loss
from selfsup.model_api import RenderedViews, read_nearest


def semantic_target(views: RenderedViews, batch: Frames, max_depth: float | None = None) -> Int[Tensor, "B V R"] | None:
    """Labels of the rays (nearest pixel of ``Frames.semantic_maps`` of frame
    ``views.frame``), ``SEMANTIC_UNLABELLED`` (255) where unlabelled or negative and, with
    ``max_depth`` and ``Frames.depth_maps``, where the pseudo depth is beyond ``max_depth``;
    ``None`` without semantic maps."""
    if batch.semantic_maps is None:
        return None
    t = views.frame
    labels = read_nearest(batch.semantic_maps[:, t].long(), views.pixels)
    ignore = labels < 0
    if max_depth is not None and batch.depth_maps is not None:
        ignore = ignore | (read_nearest(batch.depth_maps[:, t].float(), views.pixels) > max_depth)
    return torch.where(ignore, torch.full_like(labels, SEMANTIC_UNLABELLED), labels)


def semantic_objective(
    views: RenderedViews, batch: Frames, mask: Bool[Tensor, "B V R"], *, max_depth: float | None = None
) -> Tensor | None:
    """Cross-entropy ``-log softmax(l)_y`` of the rendered logits, averaged over labelled rays
    in ``mask`` (:func:`semantic_target`; 255 = unlabelled never counts).

    Returns:
        the loss, or ``None`` when the batch has no ``semantic_maps``.

    Raises:
        ValueError: the views carry no ``semantic_logits``.

    Source: SelfOcc (Huang et al. 2024) rendered semantics CE (weight 0.1) against 2D pseudo
    labels; GaussianFlowOcc (Boeder et al. 2025) CE on labelled pixels (weight 2), pseudo
    labels beyond 40 m dropped.
    """
    labels = semantic_target(views, batch, max_depth)
    if labels is None:
        return None
    if views.semantic_logits is None:
        raise ValueError("semantic_objective: the views carry no semantic_logits (num_classes = 0?)")
    k = views.semantic_logits.shape[-1]
    return semantic_loss(views.semantic_logits.reshape(-1, k), labels.reshape(-1), mask.reshape(-1))
