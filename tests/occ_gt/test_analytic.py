"""Hand-made cases with analytic answers: box transforms, voxel traversal, masks, labels, IoU."""

import numpy as np
import pytest

from selfsup.grid import VoxelGrid
from selfsup.occ_gt.boxes import Box, assign_points_to_boxes, box_from_bottom_center_yaw, points_in_box, replace_with_box
from selfsup.occ_gt.metrics import geometric_iou
from selfsup.occ_gt.paths import gt_label_path, sample_token_from_dirname, token_dirname
from selfsup.occ_gt.raycast import camera_visibility, lidar_visibility, traverse
from selfsup.occ_gt.sources import Camera
from selfsup.occ_gt.voxelize import densify, voxel_labels

SMALL = VoxelGrid(lower=(0.0, 0.0, 0.0), upper=(4.0, 4.0, 2.0), voxel_size=0.4)  # 10 x 10 x 5


def test_bottom_center_yaw_box_corners_and_membership():
    # 4 m along local x, 2 m along local y, 1.5 m high, bottom centre (10, 5, -1), yaw 90 deg
    box = box_from_bottom_center_yaw(np.array([10.0, 5.0, -1.0]), np.array([4.0, 2.0, 1.5]), np.pi / 2, 4, "a")
    np.testing.assert_allclose(box.T_frame_box[:3, 3], [10.0, 5.0, -0.25])
    corners = box.corners()
    # yaw 90 deg: local x (4 m) runs along frame y, local y (2 m) along -x
    np.testing.assert_allclose(corners.min(0), [9.0, 3.0, -1.0], atol=1e-12)
    np.testing.assert_allclose(corners.max(0), [11.0, 7.0, 0.5], atol=1e-12)
    pts = np.array([[10.0, 6.9, 0.0], [10.0, 7.1, 0.0], [10.9, 5.0, -0.99], [11.1, 5.0, 0.0], [10.0, 5.0, 0.6]])
    assert points_in_box(pts, box).tolist() == [True, False, True, False, False]
    assert points_in_box(pts, box, margin=0.2).tolist() == [True, True, True, True, True]
    with pytest.raises(ValueError, match="size must be 3 positive"):
        box_from_bottom_center_yaw(np.zeros(3), np.array([1.0, 0.0, 1.0]), 0.0, 4, "b")


def test_replace_with_box_moves_points_rigidly_with_the_object():
    src = box_from_bottom_center_yaw(np.array([0.0, 0.0, 0.0]), np.array([4.0, 2.0, 1.5]), 0.0, 4, "car")
    dst = box_from_bottom_center_yaw(np.array([10.0, 3.0, 0.0]), np.array([4.0, 2.0, 1.5]), np.pi / 2, 4, "car")
    pts = np.array([[1.0, 0.5, 0.2], [-1.5, -0.5, 1.0], [0.0, 0.0, 0.75]])
    out = replace_with_box(pts, src, dst)
    # box centre (0, 0, 0.75) -> (10, 3, 0.75); rotated 90 deg: (dx, dy) -> (-dy, dx)
    expected = np.array([[10.0 - 0.5, 3.0 + 1.0, 0.2], [10.0 + 0.5, 3.0 - 1.5, 1.0], [10.0, 3.0, 0.75]])
    np.testing.assert_allclose(out, expected, atol=1e-12)
    assert points_in_box(out, dst).all()
    other = Box(dst.T_frame_box, dst.size, 4, "another")
    with pytest.raises(ValueError, match="instance 'car'"):
        replace_with_box(pts, src, other)


def test_assign_points_to_boxes_first_box_wins_and_margin():
    a = box_from_bottom_center_yaw(np.array([0.0, 0.0, 0.0]), np.array([2.0, 2.0, 2.0]), 0.0, 4, "a")
    b = box_from_bottom_center_yaw(np.array([1.0, 0.0, 0.0]), np.array([2.0, 2.0, 2.0]), 0.0, 7, "b")
    pts = np.array([[0.5, 0.0, 1.0], [1.8, 0.0, 1.0], [2.1, 0.0, 1.0], [5.0, 0.0, 1.0]])
    assert assign_points_to_boxes(pts, [a, b]).tolist() == [0, 1, -1, -1]
    assert assign_points_to_boxes(pts, [a, b], margin=0.2).tolist() == [0, 1, 1, -1]


def test_traverse_straight_and_diagonal_rays():
    shape = (10, 10, 5)
    # along +x from the centre of voxel (0, 0, 0) to the centre of voxel (5, 0, 0)
    v = traverse(shape, np.array([[0.5, 0.5, 0.5]]), np.array([[5.5, 0.5, 0.5]]))
    assert sorted(map(tuple, np.argwhere(v))) == [(i, 0, 0) for i in range(6)]
    v = traverse(shape, np.array([[0.5, 0.5, 0.5]]), np.array([[5.5, 0.5, 0.5]]), include_end=False)
    assert sorted(map(tuple, np.argwhere(v))) == [(i, 0, 0) for i in range(5)]
    # a generic 2-D diagonal crosses 1 + |dx| + |dy| voxels, each neighbouring the last
    v = traverse(shape, np.array([[0.3, 0.6, 2.5]]), np.array([[7.7, 4.2, 2.5]]))
    cells = np.argwhere(v)
    assert len(cells) == 1 + 7 + 4
    assert (cells[:, 2] == 2).all()
    # a ray from outside enters, and one leaving the grid stops marking at the boundary
    v = traverse(shape, np.array([[-3.5, 2.5, 1.5], [8.5, 2.5, 1.5]]), np.array([[1.5, 2.5, 1.5], [30.0, 2.5, 1.5]]))
    assert sorted(map(tuple, np.argwhere(v))) == [(0, 2, 1), (1, 2, 1), (8, 2, 1), (9, 2, 1)]
    # zero-length ray: its own voxel
    v = traverse(shape, np.array([[3.2, 3.2, 3.2]]), np.array([[3.2, 3.2, 3.2]]))
    assert sorted(map(tuple, np.argwhere(v))) == [(3, 3, 3)]


def test_lidar_mask_and_labels_of_one_return():
    # sensor at (0.2, 2.2, 1.0) m, one return at (3.0, 2.2, 1.0) m: voxels x = 0..7 of row
    # (y=5, z=2) are seen, the last one (x = 7) holds the point and is occupied
    origin, point = np.array([[0.2, 2.2, 1.0]]), np.array([[3.0, 2.2, 1.0]])
    mask = lidar_visibility(point, origin, SMALL)
    assert sorted(map(tuple, np.argwhere(mask))) == [(i, 5, 2) for i in range(8)]
    sem = voxel_labels(point, np.array([4], np.uint8), SMALL)
    assert sorted(map(tuple, np.argwhere(sem != 17))) == [(7, 5, 2)] and sem[7, 5, 2] == 4


def test_voxel_labels_majority_ties_and_unlabelled_rule():
    pts = np.array([[0.1, 0.1, 0.1]] * 3 + [[0.5, 0.1, 0.1]] * 2 + [[0.9, 0.1, 0.1]] * 2 + [[9.0, 0.1, 0.1]])
    lab = np.array([7, 7, 4, 9, 3, 255, 255, 11], np.uint8)
    sem = voxel_labels(pts, lab, SMALL, unlabelled_class=0)
    assert sem[0, 0, 0] == 7  # majority 2 of 3
    assert sem[1, 0, 0] == 3  # tie 3 vs 9: the smaller class
    assert sem[2, 0, 0] == 0  # only unlabelled points: `others`
    assert (sem != 17).sum() == 3  # the point at x = 9 m is outside the 4 m grid
    with pytest.raises(ValueError, match="0..16 or 255"):
        voxel_labels(pts[:1], np.array([17], np.uint8), SMALL)


def test_camera_mask_stops_at_the_first_occupied_voxel():
    # a wall at x index 6 (2.4-2.8 m); a camera at (0.2, 2.0, 1.0) m looking along +x
    occ = np.zeros(SMALL.shape, bool)
    occ[6, :, :] = True
    K = np.array([[10.0, 0.0, 5.0], [0.0, 10.0, 5.0], [0.0, 0.0, 1.0]])  # 10 x 10 px, 53 deg wide
    T = np.eye(4)
    T[:3, :3] = [[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]  # OpenCV z -> ego x
    T[:3, 3] = [0.2, 2.0, 1.0]
    mask = camera_visibility(occ, [Camera("c", K, T, (10, 10))], SMALL, stride=1)
    assert mask[6].any() and not mask[7:].any()  # wall seen, nothing behind it
    assert mask[:6, 5, 2].all()  # the free voxels on the optical axis up to the wall
    with pytest.raises(ValueError, match="stride"):
        camera_visibility(occ, [], SMALL, stride=0)


def test_densify_fills_unobserved_holes_only():
    sem = np.full((5, 5, 5), 17, np.uint8)
    sem[1:4, 1:4, 2] = 13
    sem[2, 2, 2] = 17  # a hole in a slab
    filled = densify(sem, np.zeros(sem.shape, bool), min_neighbours=4)
    assert filled[2, 2, 2] == 13
    observed = np.zeros(sem.shape, bool)
    observed[2, 2, 2] = True  # a beam went through it: stays free
    assert densify(sem, observed, min_neighbours=4)[2, 2, 2] == 17


def test_geometric_iou_inside_mask():
    sem = np.full((200, 200, 16), 17, np.uint8)
    sem[:10, :10, 0] = 11  # 100 occupied voxels
    mask = np.zeros_like(sem)
    mask[:20, :20, 0] = 1
    gt = dict(semantics=sem, mask_lidar=mask, mask_camera=mask)
    assert geometric_iou(sem, gt) == 100.0
    pred = np.full_like(sem, 17)
    pred[:5, :10, 0] = 4  # 50 of the 100, class does not matter
    pred[100, 100, 5] = 4  # outside the mask: ignored
    assert geometric_iou(pred, gt) == pytest.approx(50.0)
    assert geometric_iou(pred, gt, mask="none") == pytest.approx(100 * 50 / 101)
    with pytest.raises(ValueError, match="unknown mask"):
        geometric_iou(pred, gt, mask="mask_radar")
    with pytest.raises(ValueError, match="0..17"):
        geometric_iou(np.full_like(sem, 18), gt)


def test_token_directory_mapping():
    assert token_dirname("scene_02", "scene_02/15616458251018358") == "15616458251018358"
    assert token_dirname("scene-0061", "ca9a282c9e77460f8360f564131a8af5") == "ca9a282c9e77460f8360f564131a8af5"
    assert sample_token_from_dirname("scene_02", "15616458251018358", "ddad") == "scene_02/15616458251018358"
    assert gt_label_path("G", "scene_02", "scene_02/1").as_posix() == "G/scene_02/1/labels.npz"
    with pytest.raises(ValueError, match="does not map to one directory"):
        token_dirname("scene_02", "scene_01/15616458251018358")
    with pytest.raises(ValueError, match="does not map to one directory"):
        token_dirname("scene_02", "..")
