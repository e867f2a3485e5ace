"""SelfOcc depth metrics on hand-worked cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from eval.depth import DepthMetricAccumulator, depth_metrics, distance_bin


def test_perfect_prediction():
    gt = torch.tensor([2.0, 5.0, 10.0], dtype=torch.float64)
    m = depth_metrics(gt.clone(), gt)
    assert m["abs_rel"] == 0 and m["sq_rel"] == 0 and m["rmse"] == 0 and m["rmse_log"] == 0
    assert m["a1"] == m["a2"] == m["a3"] == 1.0


def test_hand_worked_values():
    gt = np.array([2.0, 4.0])
    pred = np.array([3.0, 4.0])  # errors 1 and 0
    m = depth_metrics(pred, gt)
    assert m["abs_rel"] == pytest.approx((1 / 2 + 0) / 2)
    assert m["sq_rel"] == pytest.approx((1 / 2 + 0) / 2)
    assert m["rmse"] == pytest.approx(math.sqrt(0.5))
    assert m["rmse_log"] == pytest.approx(math.sqrt((math.log(2) - math.log(3)) ** 2 / 2))
    assert m["a1"] == 0.5  # ratio 1.5 fails delta < 1.25, ratio 1 passes
    assert m["a2"] == 1.0  # 1.5 < 1.5625


def test_median_scaling_removes_a_global_scale():
    gt = torch.tensor([1.0, 3.0, 7.0, 20.0], dtype=torch.float64)
    m = depth_metrics(0.5 * gt, gt, median_scaling=True)
    assert m["abs_rel"] == pytest.approx(0.0, abs=1e-12)
    assert m["scale"] == pytest.approx(2.0)
    raw = depth_metrics(0.5 * gt, gt)
    assert raw["abs_rel"] == pytest.approx(0.5)


def test_prediction_is_clamped_to_the_range():
    gt = np.array([50.0])
    m = depth_metrics(np.array([500.0]), gt)  # clamped to 80
    assert m["abs_rel"] == pytest.approx(30 / 50)
    m0 = depth_metrics(np.array([0.0]), np.array([1.0]))  # clamped to 1e-3
    assert m0["abs_rel"] == pytest.approx(1 - 1e-3)


def test_images_are_averaged_not_points():
    acc = DepthMetricAccumulator(eval_types=("raw",))
    acc.update(np.array([2.0]), np.array([1.0]))  # abs_rel 1 on 1 point
    acc.update(np.full(99, 1.0), np.full(99, 1.0))  # abs_rel 0 on 99 points
    assert acc.compute()["raw"]["all"]["abs_rel"] == pytest.approx(0.5)


def test_bins_and_merge():
    a, b = DepthMetricAccumulator(), DepthMetricAccumulator()
    a.update(np.array([2.0]), np.array([1.0]), bin_key=distance_bin(0.4))
    b.update(np.array([1.0]), np.array([1.0]), bin_key=distance_bin(3.2))
    a.merge(b)
    res = a.compute()["raw"]
    assert set(res["bins"]) == {1, 4}
    assert res["all"]["num_images"] == 2 and res["all"]["abs_rel"] == pytest.approx(0.5)


@pytest.mark.parametrize("pred, gt, match", [
    (np.ones(0), np.ones(0), "no valid"),
    (np.ones(2), np.array([1.0, 0.0]), "> 0"),
])
def test_bad_input(pred, gt, match):
    with pytest.raises(ValueError, match=match):
        depth_metrics(pred, gt)


def test_mismatched_shapes_are_rejected():
    # jaxtyping's run-time check (on in the tests) or our own ValueError, whichever fires first
    with pytest.raises((ValueError, TypeError), match="shape|P"):
        depth_metrics(np.ones(2), np.ones(3))


def test_point_pooled_depth_weighs_points_not_images():
    from eval.depth import PointDepthAccumulator

    acc = PointDepthAccumulator()
    acc.update(torch.tensor([10.0, 20.0, 30.0]), torch.tensor([10.0, 20.0, 20.0]))  # abs_rel per point 0, 0, 0.5
    acc.update(torch.tensor([200.0]), torch.tensor([40.0]))  # pred clamped to 80: abs_rel 1
    res = acc.compute()["raw"]["all"]
    assert res["num_points"] == 4 and res["num_images"] == 2
    assert abs(res["abs_rel"] - (0.5 + 1.0) / 4) < 1e-12  # per image it would be (1/6 + 1) / 2
    assert abs(res["rmse"] - ((10.0**2 + 40.0**2) / 4) ** 0.5) < 1e-9
    assert abs(res["a1"] - 2 / 4) < 1e-12
    with pytest.raises(ValueError, match="> 0"):
        acc.update(torch.tensor([1.0]), torch.tensor([0.0]))
