"""Ground truth on the real scene-0006 lidarseg keyframes (data/samples/nuscenes_raw/...)."""

import numpy as np
import pytest

from selfsup.occ_gt.aggregate import aggregate
from selfsup.occ_gt.boxes import points_in_box
from selfsup.occ_gt.generate import GenerationConfig, generate_sample
from selfsup.occ_gt.sources import read_lidarseg_frames
from selfsup.occ_gt.voxelize import voxel_index, voxel_labels

ROOT = "data/samples/nuscenes_raw/scene-0006_lidarseg_11keyframes"
TARGET = 3  # keyframe 3 of 11: the car below drives through it
MOVING_CAR = "56a9802dbe824219992d60debdea6646"  # in keyframes 0-7, 37 m travelled


@pytest.fixture(scope="module")
def scene(repo_root):
    return read_lidarseg_frames(repo_root / ROOT)


@pytest.fixture(scope="module")
def aggregated(scene):
    return aggregate(scene, TARGET, window=None, box_margin=0.2, ground_align=True)


def test_target_points_lie_in_occupied_voxels_and_labels_agree(aggregated):
    agg = aggregated
    sem = voxel_labels(agg.xyz, agg.labels)
    own = agg.frame == TARGET
    idx, inside = voxel_index(agg.xyz[own])
    voxel_class = sem[tuple(idx[inside].T)]
    assert inside.sum() > 25000
    assert (voxel_class != 17).all()  # every labelled point of the keyframe is in an occupied voxel
    agreement = float((voxel_class == agg.labels[own][inside]).mean())
    assert agreement >= 0.95, agreement  # measured 0.979 with all 11 keyframes
    occupied = float((sem != 17).mean())
    assert 0.03 < occupied < 0.08  # measured 4.75 %; the real Occ3D file (another scene) has 6.1 %


def test_moving_car_is_replaced_by_its_box_not_smeared(scene, aggregated):
    agg = aggregated
    target_box = next(b for b in scene.frames[TARGET].boxes if b.instance == MOVING_CAR)
    car = agg.instance == MOVING_CAR
    frames_used = set(agg.frame[car].tolist())
    assert len(frames_used) >= 6  # the car's points of several keyframes were re-placed
    assert points_in_box(agg.xyz[car], target_box, margin=1e-6).all()
    ours = {tuple(v) for v in voxel_index(agg.xyz[car])[0]}
    assert len(ours) > 20
    # The same points moved with the ego poses only (what a naive aggregation does):
    naive = []
    T_tgt_global = np.linalg.inv(scene.frames[TARGET].T_global_ego)
    for j in frames_used:
        fr = scene.frames[j]
        pts, _ = fr.load()
        xyz = pts @ fr.T_ego_lidar[:3, :3].T + fr.T_ego_lidar[:3, 3]
        box = next(b for b in fr.boxes if b.instance == MOVING_CAR)
        T = T_tgt_global @ fr.T_global_ego
        naive.append((xyz[points_in_box(xyz, box)]) @ T[:3, :3].T + T[:3, 3])
    naive = np.concatenate(naive)
    spread_ours = np.ptp(agg.xyz[car][:, :2], axis=0).max()
    spread_naive = np.ptp(naive[:, :2], axis=0).max()
    assert spread_ours <= max(target_box.size[:2]) + 0.01  # one car length
    assert spread_naive > 15.0  # the trajectory
    naive_voxels = {tuple(v) for v in voxel_index(naive)[0]}

    def centres(cells):
        return (np.array(sorted(cells), float) + 0.5) * 0.4 + np.array([-40.0, -40.0, -1.0])

    # every voxel of the re-placed car lies at the target box (grown by a voxel diagonal) ...
    assert points_in_box(centres(ours), target_box, margin=0.7).all()
    # ... while most voxels of the naive aggregation lie along the trajectory, off the car
    assert points_in_box(centres(naive_voxels), target_box, margin=0.7).mean() < 0.5


def test_voxel_between_sensor_and_return_is_free_and_seen(scene):
    gt = generate_sample(scene, TARGET, GenerationConfig(window=0))
    pts, _ = scene.frames[TARGET].load()
    T = scene.frames[TARGET].T_ego_lidar
    xyz = pts @ T[:3, :3].T + T[:3, 3]
    dist = np.linalg.norm(xyz - T[:3, 3], axis=1)
    far = (dist > 8.0) & (dist < 35.0) & (np.abs(xyz[:, :2]) < 39).all(1)
    midpoints = (xyz[far] + T[:3, 3]) / 2
    idx, inside = voxel_index(midpoints)
    idx = idx[inside]
    seen = gt.mask_lidar[tuple(idx.T)]
    free = gt.semantics[tuple(idx.T)] == 17
    assert idx.shape[0] > 5000
    assert seen.all()  # every voxel a beam crossed is observed
    assert free.mean() > 0.97  # and (except where another return lies in it) free
    # an explicit one: the first such ray's midpoint voxel
    first = int(np.nonzero(free)[0][0])
    assert gt.semantics[tuple(idx[first])] == 17 and gt.mask_lidar[tuple(idx[first])] == 1
    # the voxels of the returns themselves are occupied and seen
    ends, ok = voxel_index(xyz[far])
    assert (gt.semantics[tuple(ends[ok].T)] != 17).all() and gt.mask_lidar[tuple(ends[ok].T)].all()
    assert not gt.mask_camera.any()  # no cameras in this source


def test_ground_alignment_removes_the_stratified_road(scene, aggregated):
    # nuScenes ego poses have no z: without alignment the slope's road lands on 6 heights
    def road_levels(agg):
        road = voxel_labels(agg.xyz, agg.labels) == 11
        per_z = road.sum(axis=(0, 1)) / road.sum()
        return int((per_z > 0.05).sum())

    assert not scene.poses_have_height()
    assert road_levels(aggregated) <= 3  # measured 2 (z index 1-2: -0.6 .. 0.2 m)
    assert road_levels(aggregate(scene, TARGET, window=None, ground_align=False)) >= 5  # measured 6
