"""Occ3D mIoU on hand-worked cases."""

import math

import numpy as np
import pytest
import torch

from eval.occ3d import FREE_LABEL, Occ3DMetric, iou_from_confusion, occ3d_miou


def _empty(shape=(4, 4, 2)):
    return np.full(shape, FREE_LABEL, np.uint8)


def test_single_voxel_exact_and_free_not_in_mean():
    gt = _empty()
    gt[1, 1, 0] = 4
    r = occ3d_miou(gt, gt)
    assert r["IoU_per_class"]["car"] == 100.0
    # Only 'car' is present: every other class is NaN and skipped.
    assert r["mIoU"] == 100.0 and r["IoU"] == 100.0 and r["mIoU_D"] == 100.0
    assert math.isnan(r["IoU_per_class"]["bus"])


def test_predicted_but_absent_from_gt_counts_as_zero():
    gt = _empty()
    gt[0, 0, 0] = 11
    pred = gt.copy()
    pred[3, 3, 1] = 3  # a bus that the GT never has
    r = occ3d_miou(pred, gt)
    assert r["IoU_per_class"]["bus"] == 0.0
    assert r["mIoU"] == pytest.approx(50.0)
    # geometric: TP 1, FP 1 -> 1/2
    assert r["IoU"] == pytest.approx(50.0)
    assert r["mIoU_D"] == 0.0


def test_empty_prediction_and_mask():
    gt = _empty()
    gt[:, :, 0] = 11
    pred = _empty()
    r = occ3d_miou(pred, gt)
    assert r["mIoU"] == 0.0 and r["IoU"] == 0.0
    mask = np.zeros(gt.shape, np.uint8)
    mask[:, :, 1] = 1  # only free voxels visible: every class absent -> NaN
    r = occ3d_miou(pred, gt, mask)
    assert math.isnan(r["mIoU"])


def test_split_level_matrix_not_mean_of_samples_and_merge():
    gt1, gt2 = _empty(), _empty()
    gt1[0, 0, 0] = 4
    gt2[:, :, 0] = 4
    pred1, pred2 = _empty(), gt2.copy()
    m = Occ3DMetric()
    m.update(pred1, gt1)
    m.update(torch.from_numpy(pred2), torch.from_numpy(gt2))
    # car: TP 16, FN 1 -> 16/17 over the split (a per-sample mean would give 50).
    assert m.compute()["IoU_per_class"]["car"] == pytest.approx(100 * 16 / 17)
    a, b = Occ3DMetric(), Occ3DMetric()
    a.update(pred1, gt1)
    b.update(pred2, gt2)
    summed = Occ3DMetric.from_state_vector(a.state_vector() + b.state_vector())
    assert np.array_equal(summed.confusion, m.confusion) and summed.num_samples == 2


def test_matches_direct_formula_on_random_scene():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 18, (20, 20, 4)).astype(np.uint8)
    pred = np.where(rng.random(gt.shape) < 0.7, gt, rng.integers(0, 18, gt.shape)).astype(np.uint8)
    r = occ3d_miou(pred, gt)
    ious = []
    for c in range(17):
        tp = np.sum((pred == c) & (gt == c))
        union = np.sum((pred == c) | (gt == c))
        ious.append(tp / union)
    assert r["mIoU"] == pytest.approx(100 * np.mean(ious), abs=1e-12)
    conf = np.zeros((3, 3), np.int64)
    conf[0, 0], conf[1, 1], conf[0, 1] = 2, 0, 1
    assert math.isnan(iou_from_confusion(conf)[2])


def test_bad_input_raises():
    with pytest.raises(ValueError, match="shape"):
        occ3d_miou(_empty((2, 2, 2)), _empty())
    bad = _empty()
    bad[0, 0, 0] = 18
    with pytest.raises(ValueError, match="0..17"):
        occ3d_miou(bad, _empty())


def _reference_gaussianflowocc_miou(pred, gt, mask):
    """GaussianFlowOcc's formula written out literally (its nuscenes_dataset_occ.py +
    occ_metrics.py, with_others=False): mask out GT 0 and 12, 18x18 histogram, nanmean of
    the IoU over classes 1-11 and 13-16."""
    mask = mask & ~((gt == 0) | (gt == 12))
    g, p = gt[mask].astype(int), pred[mask].astype(int)
    hist = np.bincount(18 * g + p, minlength=18 * 18).reshape(18, 18)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.diag(hist) / (hist.sum(1) + hist.sum(0) - np.diag(hist))
    return np.nanmean(iou[[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16]]) * 100


def test_gaussianflowocc_protocol_drops_gt_others_and_other_flat():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 18, size=(3, 20, 20, 4)).astype(np.uint8)
    pred = np.where(rng.random(gt.shape) < 0.6, gt, rng.integers(0, 18, size=gt.shape)).astype(np.uint8)
    mask = rng.random(gt.shape) < 0.8
    ours, challenge = Occ3DMetric("gaussianflowocc"), Occ3DMetric()
    for s in range(3):
        ours.update(pred[s], gt[s], mask[s])
        challenge.update(pred[s], gt[s], mask[s])
    ref = _reference_gaussianflowocc_miou(pred, gt, mask)
    assert abs(ours.compute()["mIoU"] - ref) < 1e-9
    assert abs(challenge.compute()["mIoU"] - ref) > 0.1  # the protocols really differ
    # a prediction that is wrong only where GT is 0 or 12 is perfect under GaussianFlowOcc's protocol
    g = np.full((4, 4, 2), 17, np.uint8)
    g[0, :, 0] = 4
    g[1, :, 0] = 0
    g[2, :, 0] = 12
    p = g.copy()
    p[1, :, 0] = 15
    p[2, :, 0] = 17
    m = Occ3DMetric("gaussianflowocc")
    m.update(p, g)
    res = m.compute()
    assert res["mIoU"] == 100.0 and res["IoU"] == 100.0
    assert Occ3DMetric().__class__(protocol="challenge").protocol == "challenge"
    with pytest.raises(ValueError, match="protocol"):
        Occ3DMetric("selfocc")
    with pytest.raises(ValueError, match="protocols differ"):
        m.merge(Occ3DMetric())
    again = Occ3DMetric.from_state_vector(m.state_vector(), "gaussianflowocc")
    assert again.compute()["mIoU"] == 100.0
