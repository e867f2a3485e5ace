"""RayIoU: rays, origins on real poses, DDA marching against the per-ray reference, counts."""

import math
import pickle

import numpy as np
import pytest
import torch
from pyquaternion import Quaternion

from eval.rayiou import (
    RayIoUMetric,
    cast_query_rays,
    generate_query_rays,
    march_first_hit,
    march_first_hit_reference,
    pitch_angles,
    scene_lidar_origins_ego,
    select_origins,
    to_voxel_units,
)

FREE = 17


def test_query_rays_count_and_pitch_rule():
    rays = generate_query_rays()
    assert rays.shape == (14040, 3) and rays.dtype == np.float32
    angles = pitch_angles()
    assert len(angles) == 39
    assert angles[0] == pytest.approx(-(math.pi / 2 - math.atan(1)))
    assert angles[-2] < 0.21 <= angles[-1]
    np.testing.assert_allclose(np.linalg.norm(rays, axis=1), 1.0, atol=1e-6)
    # pitch-major: the first 360 rays share the first pitch
    np.testing.assert_allclose(rays[:360, 2], math.sin(angles[0]), atol=1e-7)


def _empty_grid():
    return np.full((200, 200, 16), FREE, np.uint8)


def _cast(grid, origin):
    return cast_query_rays([grid], np.array([origin], dtype=np.float64))


def test_wall_hit_distance_is_where_ray_leaves_the_voxel():
    grid = _empty_grid()
    grid[150, :, :] = 15  # wall x in [20, 20.4) m
    grid[:, :, 0] = 11  # floor and roof keep the other rays short (fast test)
    grid[:, :, 15] = 16
    origin = [0.2, 0.2, 1.8]  # a voxel centre
    hits = _cast(grid, origin)
    rays = generate_query_rays()
    idx = int(np.argmin(np.abs(rays[:, 2]) + np.abs(rays[:, 1]) - rays[:, 0]))  # forward, level-ish
    assert hits.label[0, idx] == 15
    # leaves the wall voxel at x = 20.4 m: 20.2 m along x for a ray with direction cos
    expected = (20.4 - 0.2) / float(rays[idx, 0])
    assert float(hits.dist[0, idx]) == pytest.approx(expected, abs=1e-4)
    # Rays pointing backwards never see the wall.
    assert not bool((hits.label[0][torch.from_numpy(rays[:, 0] < 0)] == 15).any())


def test_origin_voxel_itself_is_tested():
    grid = _empty_grid()
    grid[100, 100, 7] = 4  # the voxel that holds the origin
    hits = _cast(grid, [0.2, 0.2, 1.8])
    assert bool((hits.label[0] == 4).all())
    # distance = where each ray leaves that voxel: at most the voxel diagonal from its centre
    assert float(hits.dist.max()) <= 0.2 * math.sqrt(3) + 1e-5


def test_single_voxel_ray_counts_by_hand():
    grid = _empty_grid()
    grid[:, :, 0] = 11  # road everywhere
    m = RayIoUMetric()
    m.update(grid, grid, np.array([[0.9, 0.0, 1.84]]))
    r = m.compute()
    assert r["RayIoU"] == 1.0 and r["RayIoU@1"] == 1.0
    assert r["RayIoU_per_class"]["driveable_surface"] == [1.0, 1.0, 1.0]
    assert math.isnan(r["RayIoU_per_class"]["car"][0])


def test_empty_prediction_and_class_absent_from_gt():
    gt = _empty_grid()
    gt[:, :, 0] = 11
    pred = _empty_grid()
    m = RayIoUMetric()
    m.update(pred, gt, np.array([[0.0, 0.0, 1.8]]))
    r = m.compute()
    assert r["RayIoU"] == 0.0  # every GT ray missed, only road in the mean
    # A predicted class that the GT never has counts as 0 and lowers the mean.
    pred2 = gt.copy()
    pred2[100:105, 100:105, 1:3] = 3
    m2 = RayIoUMetric()
    m2.update(pred2, gt, np.array([[0.0, 0.0, 1.8]]))
    r2 = m2.compute()
    assert r2["RayIoU_per_class"]["bus"][0] == 0.0
    road = r2["RayIoU_per_class"]["driveable_surface"][0]
    assert 0 < road < 1
    assert r2["RayIoU@1"] == pytest.approx((road + 0.0) / 2)
    # Rays whose GT is free are dropped: predicting extra objects in empty GT space
    # beyond the road hits never counts, so pred = gt + floating car above the horizon only
    pred3 = gt.copy()
    pred3[:, :, 15] = 4  # ceiling: only upward rays (GT free) see it
    m3 = RayIoUMetric()
    m3.update(pred3, gt, np.array([[0.0, 0.0, 1.8]]))
    assert m3.compute()["RayIoU"] == 1.0


def test_distance_threshold_counts():
    gt = _empty_grid()
    gt[:, :, 0] = 11
    pred = _empty_grid()
    pred[:, :, 2] = 11  # road predicted 0.8 m too high
    m = RayIoUMetric()
    m.update(pred, gt, np.array([[0.0, 0.0, 1.8]]))
    table = m.iou_table()
    road = 11
    assert table[0, road] < table[1, road] <= table[2, road] <= 1.0
    assert m.tp_count[0, road] + 0 <= m.tp_count[1, road] <= m.tp_count[2, road]


def _random_scene(rng, fill):
    grid = np.full((200, 200, 16), FREE, np.uint8)
    occ = rng.random(grid.shape) < fill
    grid[occ] = rng.integers(0, 17, occ.sum())
    return grid


@pytest.mark.parametrize("fill", [0.0, 0.002, 0.05])
def test_vectorized_march_equals_reference(fill):
    rng = np.random.default_rng(int(fill * 1000))
    grids = [_random_scene(rng, fill), _random_scene(rng, fill * 2)]
    origins = torch.tensor([[0.9858, 0.0, 1.84019], [-38.9, 38.5, 1.2], [12.0, 0.0, 0.0]], dtype=torch.float64)
    rays = torch.from_numpy(generate_query_rays())
    pick = torch.from_numpy(rng.choice(rays.shape[0], 60, replace=False))
    # axis-aligned and diagonal rays exercise the tie rules
    pick = torch.cat([pick, torch.tensor([0, 45, 90, 180, 270, 360 * 20, 360 * 20 + 45])])
    origin_vox, end_vox = to_voxel_units(origins, rays[pick])
    o = origin_vox.repeat_interleave(pick.numel(), 0)
    e = end_vox.reshape(-1, 3)
    occupied = torch.from_numpy(np.stack(grids) != FREE)
    dist, index = march_first_hit(occupied, o, e)
    for g in range(2):
        for i in range(o.shape[0]):
            d_ref, v_ref = march_first_hit_reference(occupied[g].numpy(), o[i].numpy(), e[i].numpy())
            assert float(dist[g, i]) == d_ref  # bit-exact
            assert tuple(index[g, i].tolist()) == v_ref


def test_origin_outside_grid_matches_reference():
    occupied = torch.zeros(1, 200, 200, 16, dtype=torch.bool)
    occupied[0, 100:, :, 0] = True
    o = torch.tensor([[-3.0, 100.5, 20.0], [5.0, 5.0, -4.0], [150.0, 100.0, 30.0]], dtype=torch.float32)
    e = o + torch.tensor([[1.0, 0.0, -0.3], [0.0, 1.0, 0.0], [0.1, 0.1, -1.0]])
    dist, index = march_first_hit(occupied, o, e)
    for i in range(3):
        d_ref, v_ref = march_first_hit_reference(occupied[0].numpy(), o[i].numpy(), e[i].numpy())
        assert float(dist[0, i]) == d_ref and tuple(index[0, i].tolist()) == v_ref
    assert float(dist[0, 1]) == -1.0  # never enters the grid


@pytest.mark.requires_cuda
def test_cuda_kernel_equals_torch():
    from eval.kernels import rayiou_dvr_march

    rng = np.random.default_rng(3)
    grids = np.stack([_random_scene(rng, 0.01), _random_scene(rng, 0.03)])
    origins = torch.tensor([[0.9858, 0.0, 1.84019], [-20.0, 10.0, 1.5]], dtype=torch.float64)
    rays = torch.from_numpy(generate_query_rays())
    origin_vox, end_vox = to_voxel_units(origins, rays)
    o = origin_vox.repeat_interleave(rays.shape[0], 0)
    e = end_vox.reshape(-1, 3)
    occupied = torch.from_numpy(grids != FREE)
    d_t, i_t = march_first_hit(occupied.cuda(), o.cuda(), e.cuda())
    d_c, i_c = rayiou_dvr_march(occupied, o, e)
    assert torch.equal(d_t, d_c) and torch.equal(i_t, i_c)


# ------------------------------------------------------------ origins on real poses


def _pose(t, q):
    m = np.eye(4)
    m[:3, :3] = Quaternion(q).rotation_matrix
    m[:3, 3] = t
    return m


@pytest.fixture(scope="module")
def real_scene(samples_root):
    infos = pickle.load(open(samples_root / "nuscenes_raw" / "nuscenes_infos_val_mini_81keyframes.pkl", "rb"))["infos"]
    # scene-0103 (40 keyframes) then scene-0916 (41): split at the timestamp gap
    ts = np.array([i["timestamp"] for i in infos])
    cut = int(np.argmax(np.diff(ts))) + 1
    assert cut == 40
    return infos[:cut]


def test_origins_on_real_poses(real_scene):
    infos = real_scene
    T_ego_lidar = [_pose(i["lidar2ego_translation"], i["lidar2ego_rotation"]) for i in infos]
    T_global_ego = [_pose(i["ego2global_translation"], i["ego2global_rotation"]) for i in infos]
    T_global_lidar = np.stack([e.dot(l) for e, l in zip(T_global_ego, T_ego_lidar)])
    for cur in (0, 17, 39):
        origins = scene_lidar_origins_ego(T_global_ego[cur], T_ego_lidar[cur], T_global_lidar, cur)
        assert origins.shape == (40, 3)
        # own origin = lidar2ego translation exactly
        np.testing.assert_array_equal(origins[cur], np.array(infos[cur]["lidar2ego_translation"]))
        # others: the LiDAR position in the current ego frame (float32 rounding in between)
        direct = (np.linalg.inv(T_global_ego[cur]) @ T_global_lidar[:, :, 3].T).T[:, :3]
        np.testing.assert_allclose(origins, direct, atol=1e-4)
        kept = select_origins(origins)
        inside = origins[(np.abs(origins[:, 0]) < 39) & (np.abs(origins[:, 1]) < 39)]
        n = inside.shape[0]
        assert 1 <= kept.shape[0] <= 8
        if n > 8:
            expected = [int(round(k * (n - 1) / 7)) for k in range(8)]
            np.testing.assert_array_equal(kept, inside[expected])
        else:
            np.testing.assert_array_equal(kept, inside)
        assert np.all(np.abs(kept[:, :2]) < 39)


def test_select_origins_rules():
    xs = np.linspace(-50, 50, 21)
    origins = np.stack([xs, np.zeros_like(xs), np.full_like(xs, 1.8)], 1)
    kept = select_origins(origins)
    inside = origins[np.abs(xs) < 39]  # 15 of them
    assert inside.shape[0] == 15
    np.testing.assert_array_equal(kept, inside[[0, 2, 4, 6, 8, 10, 12, 14]])
    np.testing.assert_array_equal(select_origins(origins[8:12]), origins[8:12])
    with pytest.raises(ValueError, match="39"):
        select_origins(np.array([[45.0, 0.0, 1.8]]))


def test_state_merge_equals_single_accumulator():
    rng = np.random.default_rng(1)
    gt_a, gt_b = _random_scene(rng, 0.2), _random_scene(rng, 0.2)
    pred_a, pred_b = gt_a.copy(), _random_scene(rng, 0.2)
    origins = np.array([[0.0, 0.0, 1.8]])
    one = RayIoUMetric()
    one.update(pred_a, gt_a, origins)
    one.update(pred_b, gt_b, origins)
    a, b = RayIoUMetric(), RayIoUMetric()
    a.update(pred_a, gt_a, origins)
    b.update(pred_b, gt_b, origins)
    merged = RayIoUMetric.from_state_vector(a.state_vector() + b.state_vector())
    assert np.array_equal(merged.state_vector(), one.state_vector())
    a.merge(b)
    assert a.compute()["RayIoU"] == one.compute()["RayIoU"]


def test_counts_equal_naive_per_threshold_loop():
    rng = np.random.default_rng(5)
    n = 5000
    gt_label = torch.from_numpy(rng.integers(0, 18, n))
    pred_label = torch.where(torch.from_numpy(rng.random(n) < 0.6), gt_label, torch.from_numpy(rng.integers(0, 18, n)))
    gt_dist = torch.from_numpy(rng.random(n).astype(np.float32) * 40)
    pred_dist = gt_dist + torch.from_numpy(rng.normal(0, 2.5, n).astype(np.float32))
    m = RayIoUMetric()
    m.add_hits(pred_label, pred_dist, gt_label, gt_dist)
    valid = gt_label.numpy() != FREE
    gl, pl = gt_label.numpy()[valid], pred_label.numpy()[valid]
    err = np.abs(pred_dist.numpy()[valid] - gt_dist.numpy()[valid])
    for c in range(18):
        assert m.gt_count[c] == np.sum(gl == c) and m.pred_count[c] == np.sum(pl == c)
        for j, t in enumerate((1, 2, 4)):
            assert m.tp_count[j, c] == np.sum((gl == c) & (pl == c) & (err < t))


@pytest.mark.slow
def test_compiled_cpu_kernel_equals_torch():
    pytest.importorskip("torch.utils.cpp_extension")
    from eval.kernels import rayiou_dvr_march_cpu

    rng = np.random.default_rng(4)
    grids = np.stack([_random_scene(rng, 0.01), _random_scene(rng, 0.03)])
    origins = torch.tensor([[0.9858, 0.0, 1.84019], [-38.9, 38.5, 1.2]], dtype=torch.float64)
    rays = torch.from_numpy(generate_query_rays())[::7]
    origin_vox, end_vox = to_voxel_units(origins, rays)
    o = origin_vox.repeat_interleave(rays.shape[0], 0)
    e = end_vox.reshape(-1, 3)
    occupied = torch.from_numpy(grids != FREE)
    d_t, i_t = march_first_hit(occupied, o, e)
    d_c, i_c = rayiou_dvr_march_cpu(occupied, o, e)
    assert torch.equal(d_t, d_c) and torch.equal(i_t, i_c)


def test_metric_with_openocc_label_order():
    from eval.openocc import OPENOCC_CLASS_NAMES

    grid = np.full((200, 200, 16), 16, np.uint8)  # OpenOcc free = 16
    grid[:, :, 0] = 10  # driveable_surface in the OpenOcc order
    m = RayIoUMetric(class_names=OPENOCC_CLASS_NAMES)
    m.update(grid, grid, np.array([[0.9, 0.0, 1.84]]))
    r = m.compute()
    assert r["RayIoU"] == 1.0 and list(r["RayIoU_per_class"])[0] == "car"
    assert len(r["RayIoU_per_class"]) == 16 and m.gt_count[10] > 0
    back = RayIoUMetric.from_state_vector(m.state_vector(), class_names=OPENOCC_CLASS_NAMES)
    assert np.array_equal(back.state_vector(), m.state_vector())
    with pytest.raises(ValueError, match="class_names"):
        RayIoUMetric().merge(m)
    with pytest.raises(ValueError, match="entries"):
        RayIoUMetric.from_state_vector(m.state_vector())
