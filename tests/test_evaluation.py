"""The evaluation drivers' geometry: intrinsics scaling and LiDAR projection."""

from __future__ import annotations

import numpy as np
import torch

from selfsup.evaluation import project_lidar, scale_intrinsics
from selfsup.visualize import bev_occupancy, colorize_depth


def test_scale_intrinsics_keeps_continuous_pixel_coordinates():
    K = torch.tensor([[100.0, 0, 80], [0, 100.0, 48], [0, 0, 1]])
    K2 = scale_intrinsics(K, (96, 160), (48, 80))
    xyz = torch.tensor([0.3, -0.2, 4.0])
    uv1 = (K @ xyz)[:2] / 4.0
    uv2 = (K2 @ xyz)[:2] / 4.0
    assert torch.allclose(uv2, uv1 / 2)


def test_project_lidar_on_a_hand_made_camera():
    # camera at the ego origin looking along ego +x (OpenCV: z forward = ego x)
    T_ego_cam = torch.tensor([[0.0, 0, 1, 0], [-1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 0, 1]])
    K = torch.tensor([[10.0, 0, 8], [0, 10.0, 6], [0, 0, 1]])
    pts = torch.tensor([[5.0, 0, 0], [-5.0, 0, 0], [5.0, 100, 0], [10.0, 0.5, 0]])
    t = project_lidar(pts, K, T_ego_cam, (12, 16), 1e-3, 80.0)
    assert t.depth.tolist() == [5.0, 10.0]  # behind and outside are dropped
    assert (t.rows.tolist(), t.cols.tolist()) == ([6, 6], [8, 7])  # y left -> smaller u


def test_bev_and_depth_images():
    labels = np.full((4, 5, 3), 17, np.uint8)
    labels[3, 0, 0] = 11
    labels[3, 0, 2] = 16
    img = bev_occupancy(labels)
    assert img.shape == (4, 5, 3)
    assert (img[0, 4] == [0, 175, 0]).all()  # max x -> top row; column 0 is max y, so y = 0 is the last column
    assert img[1:, :].sum() == 0
    depth = colorize_depth(np.array([[0.0, 10.0]]))
    assert (depth[0, 0] == 0).all() and depth[0, 1].sum() > 0
