"""The photometric objective with cross-camera (spatial) sources and per-sample patch
matching, on an analytic fixture: a textured wall seen by a rig of cameras at one instant."""

from __future__ import annotations

import math

import pytest
import torch

from selfsup.data.frames import Frames
from selfsup.model_api import RenderedViews
from selfsup.losses.photometric import patch_error, photometric_error, sample_image, unfold_patches
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


def _two_frames(forward: float) -> Frames:
    """The rig at t = 0 and after the ego drove ``forward`` metres along x."""
    rig = _rig()
    moved = torch.eye(4)
    moved[0, 3] = forward
    return Frames(
        images=torch.cat([rig.images, torch.stack([_image(moved @ T) for T in rig.T_ego_cam[0, 0]])[None, None]], dim=1),
        K=rig.K.expand(1, 2, 3, 3, 3).clone(), T_ego_cam=rig.T_ego_cam.expand(1, 2, 3, 4, 4).clone(),
        T_global_ego=torch.stack([torch.eye(4), moved])[None], timestamps=torch.tensor([[0.0, 0.1]], dtype=torch.float64),
        frame_offsets=torch.tensor([[0, 1]]), valid_masks=rig.valid_masks,
    )


@pytest.mark.parametrize("patch", [0, 3])
def test_a_source_that_did_not_move_masks_every_pixel(patch):
    """Auto-masking: with the ego standing still the unwarped source matches the target
    exactly, so no pixel counts, whatever depth is rendered (monodepth2, eq. 5)."""
    frames = _two_frames(0.0)
    mask = torch.ones(1, 3, 12 * 16, dtype=torch.bool)
    assert float(photometric_objective(_views(frames, 0.6), frames, mask, patch=patch)) == 0.0
    moving = _two_frames(1.0)
    assert float(photometric_objective(_views(moving, 0.6), moving, mask, patch=patch)) > 0.01


@pytest.mark.parametrize("patch", [0, 3])
def test_spatial_sources_join_the_temporal_ones(patch):
    """With a second frame whose only source is that frame's own camera, the loss of the
    true wall stays near zero once the other cameras are added (the minimum over sources)."""
    frames = _two_frames(1.0)  # the ego drove 1 m forward
    mask = torch.ones(1, 3, 12 * 16, dtype=torch.bool)
    temporal = photometric_objective(_views(frames, 1.0), frames, mask, patch=patch)
    both = photometric_objective(_views(frames, 1.0), frames, mask, spatial_sources=2, patch=patch)
    wrong = photometric_objective(_views(frames, 0.6), frames, mask, spatial_sources=2, patch=patch)
    assert temporal < 0.01 and both < 0.01
    assert wrong > 5 * both


def test_unfolded_patches_read_at_a_pixel_are_its_neighbourhood():
    image = torch.rand(1, 3, 9, 11)
    patches = unfold_patches(image, 3, dilation=2)  # [1 27 9 11]
    # Interior pixel (row 4, col 5): the pixels 2 apart around it, channel-major.
    expected = image[0, :, 2:7:2, 3:8:2].reshape(27)
    assert torch.equal(patches[0, :, 4, 5], expected)
    # A bilinear read at the pixel centre is the same patch.
    read, inside = sample_image(patches, torch.tensor([[[5.5, 4.5]]]))
    assert inside.all() and torch.allclose(read[0, 0], expected)
    # At the border the image's edge is replicated.
    assert torch.equal(patches[0, 0, 0, 0], image[0, 0, 0, 0]) and torch.equal(patches[0, 8, 0, 0], image[0, 0, 2, 2])
    with pytest.raises(ValueError, match="odd"):
        unfold_patches(image, 2)


def test_patch_error_is_monodepth2s_error_at_the_patch_centre():
    """One 3 x 3 window's SSIM plus the centre's L1 is monodepth2's per-pixel error there."""
    a, b = torch.rand(1, 3, 8, 10), torch.rand(1, 3, 8, 10)
    rows, cols = torch.meshgrid(torch.arange(1, 7), torch.arange(1, 9), indexing="ij")
    pa = unfold_patches(a, 3)[0, :, rows.flatten(), cols.flatten()].reshape(1, 3, 9, -1)  # [1 3 K R]
    pb = unfold_patches(b, 3)[0, :, rows.flatten(), cols.flatten()].reshape(1, 3, 9, -1)
    ours = patch_error(pa[..., None], pb)[0, :, 0]
    reference = photometric_error(a, b)[0, rows.flatten(), cols.flatten()]
    assert torch.allclose(ours, reference, atol=1e-5)
    assert patch_error(pa[..., None], pa).abs().max() < 1e-6


def _two_sample_views(frames: Frames, wrong: float) -> RenderedViews:
    """Two samples per ray, at the true wall distance and at ``wrong`` x it, equal weights."""
    right, off = _views(frames, 1.0), _views(frames, wrong)
    V, R = right.sample_points.shape[1:3]
    weights = torch.full((1, V, R, 2), 0.5, requires_grad=True)
    return RenderedViews(
        depth=right.depth, opacity=right.opacity, pixels=right.pixels, image_hw=right.image_hw, grid_hw=right.grid_hw,
        sample_points=torch.cat([right.sample_points, off.sample_points], dim=3), sample_weights=weights,
    )


@pytest.mark.parametrize("patch", [0, 3])
def test_patch_matching_scores_the_true_wall_and_pulls_weight_to_it(patch):
    frames = _rig()
    mask = torch.ones(1, 3, 12 * 16, dtype=torch.bool)
    right = photometric_objective(_views(frames, 1.0), frames, mask, spatial_sources=2, patch=patch)
    wrong = photometric_objective(_views(frames, 0.6), frames, mask, spatial_sources=2, patch=patch)
    assert right < 0.01 and wrong > 5 * right
    views = _two_sample_views(frames, 0.6)
    photometric_objective(views, frames, mask, spatial_sources=2, patch=patch).backward()
    grad = views.sample_weights.grad[0]  # [V R 2]: lowering the loss raises the true sample's weight
    counted = grad.abs().sum(-1) > 0  # rays that no source sees well enough do not count
    assert counted.float().mean() > 0.5
    assert (grad[..., 0] < grad[..., 1])[counted].float().mean() > 0.9


def test_plane_patch_points_lie_on_the_plane_and_on_the_offset_pixels_rays():
    from render.geometry import project_points
    from selfsup.objectives.photometric import plane_patch_points

    T = _camera(0.3, 0.2)
    T[:3, 3] = torch.tensor([0.0, 0.3, 1.5])  # 1.5 m above the ground z = 0
    uv = torch.tensor([[20.5, 40.5], [40.5, 44.5]])  # below the horizon: the rays hit the ground
    o, d = _rays(T, uv)
    hit = o + d * (-o[:, 2:] / d[:, 2:])  # on z = 0
    offsets = torch.tensor([[-1.0, -1.0], [0.0, 0.0], [2.0, 1.0]])
    normal = torch.tensor([0.0, 0.0, 3.0])  # any length
    pts = plane_patch_points(hit[None, :, None], normal.expand(1, 2, 1, 3), uv[None], K[None], T[None], offsets)
    assert pts.shape == (1, 2, 1, 3, 3)
    torch.testing.assert_close(pts[..., 2], torch.zeros(1, 2, 1, 3), atol=1e-4, rtol=0)  # on the ground
    uv_back, _, _ = project_points(pts.reshape(1, -1, 3), K[None], T[None])
    torch.testing.assert_close(uv_back.reshape(2, 3, 2), uv[:, None] + offsets, atol=1e-3, rtol=0)
    # No normal (or a plane the pixels' rays graze): the patch stays at the sample's depth.
    flat = plane_patch_points(hit[None, :, None], torch.zeros(1, 2, 1, 3), uv[None], K[None], T[None], offsets)
    _, z, _ = project_points(flat.reshape(1, -1, 3), K[None], T[None])
    _, z0, _ = project_points(hit[None], K[None], T[None])
    torch.testing.assert_close(z.reshape(2, 3), z0.reshape(2, 1).expand(2, 3))


def test_plane_warped_patches_match_a_wall_seen_at_an_angle_better_than_fronto_parallel_ones():
    # The side cameras see the wall x = WALL_X at 20 degrees from head-on, and their
    # neighbours see it from 0.8 m and 20 degrees away: a fronto-parallel patch does not
    # fit, the wall's own plane does.
    frames = _rig()
    mask = torch.ones(1, 3, 12 * 16, dtype=torch.bool)
    views = _views(frames, 1.0)
    views.extras["sample_normals"] = torch.tensor([-1.0, 0.0, 0.0]).expand_as(views.sample_points).clone()
    fronto = photometric_objective(views, frames, mask, spatial_sources=2, patch=3, patch_dilation=2)
    plane = photometric_objective(views, frames, mask, spatial_sources=2, patch=3, patch_dilation=2, patch_warp="plane")
    assert plane < 0.6 * fronto
    wrong = _views(frames, 0.6)
    wrong.extras["sample_normals"] = views.extras["sample_normals"]
    assert photometric_objective(wrong, frames, mask, spatial_sources=2, patch=3, patch_warp="plane") > 5 * plane
    with pytest.raises(ValueError, match="sample_normals"):
        photometric_objective(_views(frames, 1.0), frames, mask, spatial_sources=2, patch=3, patch_warp="plane")
