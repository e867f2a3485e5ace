"""OpenOcc v2: flow read at the first-hit voxel, AVE over TP rays at 2 m, score, merging."""

import math

import numpy as np
import pytest
import torch

from eval.openocc import (
    OPENOCC_CLASS_NAMES,
    OPENOCC_FLOW_CLASSES,
    OpenOccMetric,
    occupancy_score,
)
from eval.rayiou import cast_query_rays

FREE = 16
CAR, TRUCK, BUS, ROAD, MANMADE, VEGETATION = 0, 1, 3, 10, 14, 15
ORIGIN = np.array([[0.2, 0.2, 1.8]])  # centre of voxel (100, 100, 7)


def test_class_order_and_dynamic_classes():
    assert len(OPENOCC_CLASS_NAMES) == 17
    assert OPENOCC_CLASS_NAMES[0] == "car" and OPENOCC_CLASS_NAMES[FREE] == "free"
    assert [OPENOCC_CLASS_NAMES[c] for c in OPENOCC_FLOW_CLASSES] == [
        "car", "truck", "trailer", "bus", "construction_vehicle", "bicycle", "motorcycle", "pedestrian",
    ]


def test_occupancy_score_formula():
    assert occupancy_score(0.4, 0.5) == pytest.approx(0.9 * 0.4 + 0.1 * 0.5)
    assert occupancy_score(0.4, 1.5) == pytest.approx(0.36)  # velocity term clipped at 0
    assert occupancy_score(0.4, 0.0) == pytest.approx(0.46)
    assert math.isnan(occupancy_score(0.4, math.nan))


def _street():
    """A closed street (short rays keep the test fast) with a two-voxel-thick car wall
    ahead at x = 20..20.8 m."""
    grid = np.full((200, 200, 16), FREE, np.uint8)
    grid[:, :, 0] = ROAD
    grid[:, :, 15] = VEGETATION
    grid[:, (88, 112), :] = MANMADE  # y = -4.8 m and +4.8 m
    grid[85, :, :] = MANMADE  # x = -6 m
    grid[150:152, :, 1:15] = CAR
    return grid


def _flows(first, second):
    flow = np.zeros((200, 200, 16, 2), np.float32)
    flow[150, :, 1:15] = first
    flow[151, :, 1:15] = second
    return flow


def test_moving_wall_ave_reads_the_first_hit_voxel():
    gt = _street()
    m = OpenOccMetric()
    # GT: the front layer moves at (3, 4) m/s; prediction says it stands still. The back
    # layer (never the first hit) carries flows that would change the answer if read.
    m.update(gt, gt, ORIGIN, _flows((0.0, 0.0), (3.0, 4.0)), _flows((3.0, 4.0), (50.0, 50.0)))
    r = m.compute()
    assert r["RayIoU"] == 1.0
    car_rays = m.rayiou.gt_count[CAR]
    assert car_rays > 0 and m.flow_tp_count[CAR] == car_rays
    assert r["AVE_per_class"]["car"] == pytest.approx(5.0, rel=1e-6)
    assert math.isnan(r["AVE_per_class"]["truck"])  # no truck anywhere: skipped
    assert r["mAVE"] == pytest.approx(5.0, rel=1e-6)
    assert r["OccScore"] == pytest.approx(0.9)  # max(1 - 5, 0) = 0
    # Prediction flow (3, 4.5): error 0.5 m/s on every car ray.
    m2 = OpenOccMetric()
    m2.update(gt, gt, ORIGIN, _flows((3.0, 4.5), (0.0, 0.0)), _flows((3.0, 4.0), (50.0, 50.0)))
    r2 = m2.compute()
    assert r2["mAVE"] == pytest.approx(0.5, rel=1e-6)
    assert r2["OccScore"] == pytest.approx(0.9 + 0.05)


def test_class_without_tp_is_skipped_and_far_wall_gives_no_flow_tp():
    gt = _street()
    gt[90:93, 95:105, 3:9] = TRUCK  # behind the origin
    pred = gt.copy()
    pred[gt == TRUCK] = BUS  # truck never a TP, bus never in GT
    gt_flow = _flows((3.0, 4.0), (0.0, 0.0))
    gt_flow[gt == TRUCK] = (1.0, 0.0)
    m = OpenOccMetric()
    m.update(pred, gt, ORIGIN, _flows((0.0, 0.0), (0.0, 0.0)), gt_flow)
    r = m.compute()
    assert m.rayiou.gt_count[TRUCK] > 0 and m.flow_tp_count[TRUCK] == 0
    assert math.isnan(r["AVE_per_class"]["truck"]) and math.isnan(r["AVE_per_class"]["bus"])
    assert r["mAVE"] == pytest.approx(5.0, rel=1e-6)  # car alone
    assert r["RayIoU_per_class"]["bus"] == [0.0, 0.0, 0.0]

    # The predicted wall 6 voxels (2.4 m) further: every car ray is off by >= 2.4 m, so no
    # TP at 2 m and no AVE at all; mAVE and the score are NaN, as in the reference.
    far = _street()
    far[150:152, :, 1:15] = FREE
    far[156:158, :, 1:15] = CAR
    m3 = OpenOccMetric()
    m3.update(far, gt, ORIGIN, np.zeros((200, 200, 16, 2), np.float32), _flows((3.0, 4.0), (0.0, 0.0)))
    r3 = m3.compute()
    assert m3.flow_tp_count.sum() == 0 and m3.rayiou.tp_count[2, CAR] > 0  # TP at 4 m only
    assert math.isnan(r3["mAVE"]) and math.isnan(r3["OccScore"])


def _naive_reference(pred_label, pred_dist, pred_flow, gt_label, gt_dist, gt_flow):
    """The reference `calc_metrics` loop for one sample (TP rays at 2 m, float32 sums)."""
    valid = gt_label != FREE
    pl, gl = pred_label[valid], gt_label[valid]
    err = np.abs(pred_dist[valid] - gt_dist[valid])
    pf, gf = pred_flow[valid], gt_flow[valid]
    sums, counts = np.zeros(17), np.zeros(17, np.int64)
    for c in OPENOCC_FLOW_CLASSES:
        tp = (pl == c) & (gl == c) & (err < 2)
        if tp.sum() > 0:
            e = np.linalg.norm(gf[tp] - pf[tp], axis=1)
            sums[c] += np.sum(e)
            counts[c] += e.shape[0]
    return sums, counts


def _random_hits(rng, n=4000):
    gl = rng.integers(0, 17, n)
    pl = np.where(rng.random(n) < 0.7, gl, rng.integers(0, 17, n))
    gd = (rng.random(n) * 40).astype(np.float32)
    pd = gd + rng.normal(0, 2.0, n).astype(np.float32)
    gf = rng.normal(0, 3, (n, 2)).astype(np.float32)
    pf = gf + rng.normal(0, 0.7, (n, 2)).astype(np.float32)
    return pl, pd, pf, gl, gd, gf


def test_flow_sums_equal_reference_loop_bit_for_bit():
    rng = np.random.default_rng(0)
    m = OpenOccMetric()
    total_sum, total_count = np.zeros(17), np.zeros(17, np.int64)
    for _ in range(3):
        pl, pd, pf, gl, gd, gf = _random_hits(rng)
        m.add_hits(*(torch.from_numpy(a) for a in (pl, pd, pf, gl, gd, gf)))
        s, c = _naive_reference(pl, pd, pf, gl, gd, gf)
        total_sum += s
        total_count += c
    assert np.array_equal(m.flow_error_sum, total_sum)
    assert np.array_equal(m.flow_tp_count, total_count)
    assert m.compute()["mAVE"] == np.nanmean(total_sum[:8] / total_count[:8])


def test_merge_and_state_vector_equal_single_accumulation():
    rng = np.random.default_rng(1)
    batches = [[torch.from_numpy(a) for a in _random_hits(rng)] for _ in range(2)]
    one = OpenOccMetric()
    for b in batches:
        one.add_hits(*b)
    a, b = OpenOccMetric(), OpenOccMetric()
    a.add_hits(*batches[0])
    b.add_hits(*batches[1])
    summed = OpenOccMetric.from_state_vector(a.state_vector() + b.state_vector())
    assert np.array_equal(summed.state_vector(), one.state_vector())
    a.merge(b)
    assert np.array_equal(a.state_vector(), one.state_vector())
    ra, r1 = a.compute(), one.compute()
    assert ra["OccScore"] == r1["OccScore"] and ra["mAVE"] == r1["mAVE"]
    with pytest.raises(ValueError, match="entries"):
        OpenOccMetric.from_state_vector(one.state_vector()[:-1])


def test_bad_inputs_raise_clear_errors():
    gt = _street()
    flow = np.zeros((200, 200, 16, 2), np.float32)
    m = OpenOccMetric()
    with pytest.raises(ValueError, match="flow has shape"):
        m.update(gt, gt, ORIGIN, flow[..., :1], flow)
    occ3d_free = gt.copy()
    occ3d_free[0, 0, 5] = 17  # an Occ3D free label is not an OpenOcc label
    with pytest.raises(ValueError, match=r"0\.\.16"):
        m.update(occ3d_free, gt, ORIGIN, flow, flow)
    with pytest.raises(ValueError, match="flow_classes"):
        OpenOccMetric(flow_classes=(16,))


def test_ray_index_gives_the_label_with_openocc_free():
    gt = _street()
    hits = cast_query_rays([gt], ORIGIN, free_label=FREE)
    i = hits.index[0].numpy()
    assert np.array_equal(gt[i[:, 0], i[:, 1], i[:, 2]], hits.label[0].numpy())
    assert not bool((hits.label[0] == FREE).any())  # a closed street
    gt[:, 112, :] = FREE
    hits = cast_query_rays([gt], ORIGIN, free_label=FREE)
    # A ray that hits nothing ends in its last voxel inside the grid, on the border.
    i = hits.index[0].numpy()
    miss = (hits.label[0] == FREE).numpy()
    assert miss.any() and (i[miss, 1] == 199).all()
