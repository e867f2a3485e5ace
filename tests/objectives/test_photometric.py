"""The photometric objective with cross-camera (spatial) sources, on an analytic fixture:
a textured wall seen by a rig of cameras at one instant."""

from __future__ import annotations

import math

import pytest
import torch

from selfsup.data.frames import Frames
from selfsup.model_api import RenderedViews
from selfsup.objectives.photometric import camera_neighbours, photometric_objective

H, W, WALL_X = 48, 64, 12.0
K = torch.tensor([[50.0, 0.0, W / 2], [0.0, 50.0, H / 2], [0.0, 0.0, 1.0]])


def _texture(y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Colour (RGB in [0, 1]) of the wall x = WALL_X at ego (y, z), metres."""
    return torch.stack([0.5 + 0.4 * torch.sin(1.7 * y) * torch.cos(1.1 * z), 0.5 + 0.4 * torch.cos(0.9 * y + 0.6 * z),
                        0.5 + 0.3 * torch.sin(1.3 * z - 0.5 * y)])


def _camera(y: float, yaw: float) -> torch.Tensor:
    """OpenCV camera at ego (0, y, 0) looking along ego x turned by ``yaw`` about z -> ego."""
    c, s = math.cos(yaw), math.sin(yaw)
    forward, left, up = torch.tensor([c, s, 0.0]), torch.tensor([-s, c, 0.0]), torch.tensor([0.0, 0.0, 1.0])
    T = torch.eye(4)
    T[:3, :3] = torch.stack([-left, -up, forward], dim=1)  # camera x right, y down, z forward
    T[:3, 3] = torch.tensor([0.0, y, 0.0])
    return T


def _rays(T_ego_cam: torch.Tensor, uv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ego origins and unit directions of the pixels ``uv [R 2]``."""
    d_cam = torch.cat([(uv - K[:2, 2]) / K[0, 0], torch.ones(len(uv), 1)], dim=1)
    d = d_cam @ T_ego_cam[:3, :3].T
    return T_ego_cam[:3, 3].expand_as(d), d / d.norm(dim=-1, keepdim=True)


def _image(T_ego_cam: torch.Tensor) -> torch.Tensor:
    v, u = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    o, d = _rays(T_ego_cam, torch.stack([u.flatten(), v.flatten()], dim=1))
    hit = o + d * ((WALL_X - o[:, :1]) / d[:, :1])
    return _texture(hit[:, 1], hit[:, 2]).reshape(3, H, W)


def _rig(yaws=(0.0, 0.35, -0.35), ys=(0.0, 0.8, -0.8)) -> Frames:
    """One frame (T = 1) of three cameras: front, front-left, front-right."""
    T_ego_cam = torch.stack([_camera(y, a) for y, a in zip(ys, yaws)])
    V = len(yaws)
    return Frames(
        images=torch.stack([_image(T) for T in T_ego_cam])[None, None], K=K.expand(1, 1, V, 3, 3).clone(),
        T_ego_cam=T_ego_cam[None, None], T_global_ego=torch.eye(4)[None, None],
        timestamps=torch.zeros(1, 1, dtype=torch.float64), frame_offsets=torch.zeros(1, 1, dtype=torch.long),
        valid_masks=torch.ones(1, V, H, W, dtype=torch.bool),
    )


def _views(frames: Frames, scale: float) -> RenderedViews:
    """One sample per ray of every camera at ``scale`` x the true distance to the wall."""
    rows, cols = 12, 16
    v, u = torch.meshgrid((torch.arange(rows) + 0.5) * H / rows, (torch.arange(cols) + 0.5) * W / cols, indexing="ij")
    uv = torch.stack([u.flatten(), v.flatten()], dim=1)
    points = []
    for T in frames.T_ego_cam[0, 0]:
        o, d = _rays(T, uv)
        points.append(o + d * ((WALL_X - o[:, :1]) / d[:, :1]) * scale)
    points = torch.stack(points)[None, :, :, None]  # [1 V R 1 3]
    V, R = points.shape[1:3]
    return RenderedViews(
        depth=torch.ones(1, V, R), opacity=torch.ones(1, V, R), pixels=uv.expand(1, V, R, 2), image_hw=(H, W),
        grid_hw=(rows, cols), sample_points=points, sample_weights=torch.ones(1, V, R, 1),
    )


def test_camera_neighbours_are_the_cameras_beside_each_camera():
    rig = torch.stack([_camera(0.0, a) for a in (0.0, 1.0, 2.2, math.pi, -2.2, -1.0)])[None]
    assert camera_neighbours(rig, 2)[0].sort(dim=-1).values.tolist() == [[1, 5], [0, 2], [1, 3], [2, 4], [3, 5], [0, 4]]
    with pytest.raises(ValueError, match="1 <= k <= 5"):
        camera_neighbours(rig, 6)


def test_spatial_sources_score_the_true_wall_and_reject_a_wrong_one():
    frames = _rig()
    mask = torch.ones(1, 3, 12 * 16, dtype=torch.bool)
    # One frame and no spatial source: nothing to compare with.
    assert photometric_objective(_views(frames, 1.0), frames, mask) is None
    right = photometric_objective(_views(frames, 1.0), frames, mask, spatial_sources=2)
    wrong = photometric_objective(_views(frames, 0.6), frames, mask, spatial_sources=2)
    assert right < 0.01
    assert wrong > 5 * right and wrong > 0.03


def test_spatial_sources_join_the_temporal_ones():
    """With a second frame whose only source is that frame's own camera, the loss of the
    true wall stays near zero once the other cameras are added (the minimum over sources)."""
    rig = _rig()
    moved = torch.eye(4)
    moved[0, 3] = 1.0  # the ego drove 1 m forward
    frames = Frames(
        images=torch.cat([rig.images, torch.stack([_image(moved @ T) for T in rig.T_ego_cam[0, 0]])[None, None]], dim=1),
        K=rig.K.expand(1, 2, 3, 3, 3).clone(), T_ego_cam=rig.T_ego_cam.expand(1, 2, 3, 4, 4).clone(),
        T_global_ego=torch.stack([torch.eye(4), moved])[None], timestamps=torch.tensor([[0.0, 0.1]], dtype=torch.float64),
        frame_offsets=torch.tensor([[0, 1]]), valid_masks=rig.valid_masks,
    )
    mask = torch.ones(1, 3, 12 * 16, dtype=torch.bool)
    temporal = photometric_objective(_views(frames, 1.0), frames, mask)
    both = photometric_objective(_views(frames, 1.0), frames, mask, spatial_sources=2)
    wrong = photometric_objective(_views(frames, 0.6), frames, mask, spatial_sources=2)
    assert temporal < 0.01 and both < 0.01
    assert wrong > 5 * both
