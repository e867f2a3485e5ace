"""The non-local photometric depth search on a synthetic textured wall with a known depth."""

from __future__ import annotations

import torch

from render.rays import jittered_pixel_grid, pixel_rays
from selfsup.losses.photometric import project_points, sample_image
from selfsup.losses.stereo import inverse_depth_candidates, photometric_depth_search


def _texture(uv_world: torch.Tensor) -> torch.Tensor:
    """Colour of the wall at its (y, z) coordinates: smooth random-phase stripes."""
    y, z = uv_world[..., 0], uv_world[..., 1]
    return torch.stack([0.5 + 0.4 * torch.sin(3.1 * y + 1.7 * z), 0.5 + 0.4 * torch.sin(2.3 * z - 1.1 * y + 1.0),
                        0.5 + 0.4 * torch.cos(4.0 * y * 0.7 + 0.3 * z)], dim=-1)


def _render_wall(K, T_ego_cam, hw, wall_x):
    """Image of the plane x = wall_x seen by a camera (ego: x forward)."""
    h, w = hw
    uv = jittered_pixel_grid(h, w, h, w, jitter=False)
    rays = pixel_rays(K[None], T_ego_cam[None], uv[None])
    t = (wall_x - rays.origins[0, :, 0]) / rays.directions[0, :, 0]
    hit = rays.origins[0] + rays.directions[0] * t[:, None]
    return _texture(hit[:, 1:]).T.reshape(3, h, w)


def test_search_finds_the_wall_depth_from_a_sideways_baseline():
    hw = (48, 64)
    K = torch.tensor([[60.0, 0, 32], [0, 60.0, 24], [0, 0, 1]])
    # OpenCV camera looking along ego +x: cam z = ego x, cam x = -ego y, cam y = -ego z.
    R = torch.tensor([[0.0, 0, 1], [-1, 0, 0], [0, -1, 0]])
    def pose(y):
        T = torch.eye(4)
        T[:3, :3] = R
        T[1, 3] = y
        return T
    T0, T1 = pose(0.0), pose(0.8)
    wall = 12.0
    target, source = _render_wall(K, T0, hw, wall), _render_wall(K, T1, hw, wall)
    uv = jittered_pixel_grid(*hw, 8, 10, jitter=False)
    rays = pixel_rays(K[None], T0[None], uv[None])
    cand = inverse_depth_candidates(2.0, 60.0, 64)
    found = photometric_depth_search(
        target[None], source[None, None], K[None], K[None, None], T1[None, None], rays.origins, rays.directions,
        uv[None], torch.full((1, uv.shape[0]), 100.0), cand, patch=5)
    depth = found.dist[0] * rays.depth_per_dist[0]
    ok = found.confident[0]
    assert ok.float().mean() > 0.5
    step = (cand[1:] / cand[:-1]).max()  # relative spacing of neighbouring candidates
    assert ((depth[ok] - wall).abs() / wall).max() <= float(step - 1) * 1.01
