"""Voxel objectives against hand-computed values (small grids, analytic cases)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from jaxtyping import TypeCheckError

from selfsup.objectives.voxel import (
    FLASHOCC_OCC3D_FREQUENCIES,
    class_weights_from_frequencies,
    geo_scal_loss,
    lovasz_softmax,
    sem_scal_loss,
    voxel_cross_entropy,
    voxel_focal_loss,
)


def _case(K: int = 4):
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 2, 2, K)
    labels = torch.randint(0, K, (1, 3, 2, 2))
    return logits, labels


def test_class_weights_formula_and_errors():
    w = class_weights_from_frequencies(FLASHOCC_OCC3D_FREQUENCIES)
    assert w.shape == (18,)
    assert float(w[0]) == pytest.approx(1 / math.log(944004.001), rel=1e-6)
    assert int(w.argmax()) == 2 and int(w.argmin()) == 17  # bicycle rarest, free most common
    with pytest.raises(ValueError, match="counts"):
        class_weights_from_frequencies([3, -1])


def test_cross_entropy_plain_weighted_masked_and_ignore():
    logits, labels = _case()
    ref = F.cross_entropy(logits.reshape(-1, 4), labels.reshape(-1))
    torch.testing.assert_close(voxel_cross_entropy(logits, labels), ref)
    w = torch.tensor([1.0, 2.0, 3.0, 4.0])
    flat_l, flat_y = logits.reshape(-1, 4), labels.reshape(-1)
    nll = -F.log_softmax(flat_l, -1).gather(1, flat_y[:, None])[:, 0]
    torch.testing.assert_close(voxel_cross_entropy(logits, labels, class_weights=w), (w[flat_y] * nll).sum() / w[flat_y].sum())
    mask = torch.zeros(1, 3, 2, 2, dtype=torch.bool)
    mask[0, 0] = True
    torch.testing.assert_close(voxel_cross_entropy(logits, labels, mask), F.cross_entropy(logits[0, 0].reshape(-1, 4), labels[0, 0].reshape(-1)))
    ignored = labels.clone()
    ignored[0, 1:] = 255  # unlabelled voxels are skipped
    torch.testing.assert_close(voxel_cross_entropy(logits, ignored), voxel_cross_entropy(logits, labels, mask))
    empty = voxel_cross_entropy(logits.requires_grad_(), labels, torch.zeros_like(mask))
    assert float(empty.detach()) == 0.0 and empty.requires_grad
    with pytest.raises((ValueError, TypeCheckError)):
        voxel_cross_entropy(logits, labels[..., :1])


def test_focal_loss_reduces_to_ce_and_down_weights_easy_voxels():
    logits, labels = _case()
    torch.testing.assert_close(voxel_focal_loss(logits, labels, gamma=0.0), voxel_cross_entropy(logits, labels))
    assert float(voxel_focal_loss(logits, labels, gamma=2.0)) < float(voxel_cross_entropy(logits, labels))


def _hard_logits(pred: torch.Tensor, K: int) -> torch.Tensor:
    return 50.0 * F.one_hot(pred, K).float()


def test_lovasz_softmax_equals_one_minus_iou_on_hard_predictions():
    # The Lovasz extension is exact at the vertices: for one-hot probabilities the loss is
    # the mean over present classes of 1 - IoU_c.
    labels = torch.tensor([0, 0, 1, 1, 1, 2]).view(1, 6, 1, 1)
    pred = torch.tensor([0, 1, 1, 1, 2, 2]).view(1, 6, 1, 1)
    iou = {0: 1 / 2, 1: 2 / 4, 2: 1 / 2}
    expected = sum(1 - v for v in iou.values()) / 3
    assert float(lovasz_softmax(_hard_logits(pred, 3), labels)) == pytest.approx(expected, abs=1e-5)
    assert float(lovasz_softmax(_hard_logits(labels, 3), labels)) == pytest.approx(0.0, abs=1e-5)


def test_scene_class_affinity_losses():
    labels = torch.tensor([0, 0, 17, 17]).view(1, 4, 1, 1)
    perfect = _hard_logits(labels, 18)
    assert float(sem_scal_loss(perfect, labels)) == pytest.approx(0.0, abs=1e-4)
    assert float(geo_scal_loss(perfect, labels)) == pytest.approx(0.0, abs=1e-4)
    # Hand values: predictions (0, 17, 0, 17). Class 0 and class 17 both have precision,
    # recall and specificity 1/2, so sem_scal = mean over the 2 classes of 3 ln 2; the
    # occupied / free split has the same three ratios, geo_scal = 3 ln 2.
    pred = _hard_logits(torch.tensor([0, 17, 0, 17]).view(1, 4, 1, 1), 18)
    assert float(sem_scal_loss(pred, labels)) == pytest.approx(3 * math.log(2), rel=1e-5)
    assert float(geo_scal_loss(pred, labels)) == pytest.approx(3 * math.log(2), rel=1e-5)
    # everything predicted free: occupied precision collapses (clamped) -> a large loss
    all_free = _hard_logits(torch.full_like(labels, 17), 18)
    assert float(geo_scal_loss(all_free, labels)) > 5.0
    logits = torch.randn(1, 4, 1, 1, 18, requires_grad=True)
    (sem_scal_loss(logits, labels) + geo_scal_loss(logits, labels)).backward()
    assert logits.grad.abs().sum() > 0
