"""Pixel rays, jittered ray grids and ray/box clipping on hand-made cameras and boxes."""

from __future__ import annotations

import math

import pytest
import torch

from render.rays import jittered_pixel_grid, pixel_rays, ray_aabb

# Camera frame (OpenCV: x right, y down, z forward) to ego (x forward, y left, z up).
R_EGO_CAM = torch.tensor([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def _camera(fx=200.0, fy=180.0, cx=64.0, cy=40.0):
    return torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def _pose(R, t):
    T = torch.eye(4)
    T[:3, :3] = R
    T[:3, 3] = torch.as_tensor(t)
    return T


def test_principal_point_ray_is_the_optical_axis():
    K = _camera()
    T = _pose(R_EGO_CAM, [1.5, 0.2, 1.7])
    rays = pixel_rays(K, T, torch.tensor([[64.0, 40.0]]))
    torch.testing.assert_close(rays.directions, torch.tensor([[1.0, 0.0, 0.0]]))
    torch.testing.assert_close(rays.origins, torch.tensor([[1.5, 0.2, 1.7]]))
    torch.testing.assert_close(rays.depth_per_dist, torch.tensor([1.0]))


def test_pixel_right_of_centre_points_right_in_ego():
    # u increases to the right in the image = -y (right) in ego; v down = -z in ego.
    K = _camera()
    rays = pixel_rays(K, _pose(R_EGO_CAM, [0, 0, 0]), torch.tensor([[64.0 + 200.0, 40.0 + 180.0]]))
    expected = torch.tensor([[1.0, -1.0, -1.0]]) / math.sqrt(3.0)
    torch.testing.assert_close(rays.directions, expected)
    torch.testing.assert_close(rays.depth_per_dist, torch.tensor([1.0 / math.sqrt(3.0)]))


def test_rays_reproject_to_their_pixels_at_depth_dist_times_depth_per_dist():
    torch.manual_seed(0)
    K = torch.stack([_camera(), _camera(150.0, 150.0, 60.0, 30.0)]).double()
    angle = 0.3
    Rz = torch.tensor(
        [[math.cos(angle), -math.sin(angle), 0.0], [math.sin(angle), math.cos(angle), 0.0], [0.0, 0.0, 1.0]]
    )
    T = torch.stack([_pose(R_EGO_CAM, [1.0, 0.0, 1.5]), _pose(Rz @ R_EGO_CAM, [0.5, 0.3, 1.6])]).double()
    uv = torch.rand(2, 17, 2, dtype=torch.float64) * torch.tensor([128.0, 80.0], dtype=torch.float64)
    rays = pixel_rays(K, T, uv)
    assert rays.directions.shape == (2, 17, 3)
    torch.testing.assert_close(rays.directions.norm(dim=-1), torch.ones(2, 17, dtype=torch.float64))

    dist = torch.rand(2, 17, dtype=torch.float64) * 30.0 + 1.0
    xyz_ego = rays.origins + rays.directions * dist[..., None]
    T_cam_ego = torch.linalg.inv(T)
    xyz_cam = (T_cam_ego[:, None, :3, :3] @ xyz_ego[..., None]).squeeze(-1) + T_cam_ego[:, None, :3, 3]
    torch.testing.assert_close(xyz_cam[..., 2], dist * rays.depth_per_dist)
    proj = (K[:, None] @ xyz_cam[..., None]).squeeze(-1)
    torch.testing.assert_close(proj[..., :2] / proj[..., 2:], uv)


def test_singular_intrinsics_raise():
    with pytest.raises(ValueError, match="singular"):
        pixel_rays(torch.zeros(3, 3), torch.eye(4), torch.zeros(1, 2))


def test_grid_without_jitter_at_full_resolution_is_the_pixel_centres():
    uv = jittered_pixel_grid(3, 4, 3, 4, jitter=False)
    assert uv.shape == (12, 2)
    grid = uv.reshape(3, 4, 2)
    torch.testing.assert_close(grid[..., 0], torch.arange(4.0).expand(3, 4) + 0.5)
    torch.testing.assert_close(grid[..., 1], torch.arange(3.0)[:, None].expand(3, 4) + 0.5)


def test_jittered_grid_has_one_point_per_cell_and_is_reproducible():
    height, width, rows, cols = 900, 1600, 48, 100
    uv = jittered_pixel_grid(height, width, rows, cols, generator=torch.Generator().manual_seed(3))
    again = jittered_pixel_grid(height, width, rows, cols, generator=torch.Generator().manual_seed(3))
    other = jittered_pixel_grid(height, width, rows, cols, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(uv, again)
    assert not torch.allclose(uv, other)
    grid = uv.reshape(rows, cols, 2)
    col = torch.floor(grid[..., 0] / (width / cols))
    row = torch.floor(grid[..., 1] / (height / rows))
    torch.testing.assert_close(col, torch.arange(cols, dtype=torch.float32).expand(rows, cols))
    torch.testing.assert_close(row, torch.arange(rows, dtype=torch.float32)[:, None].expand(rows, cols))


def test_grid_rejects_empty_sizes():
    with pytest.raises(ValueError, match="positive"):
        jittered_pixel_grid(10, 10, 0, 4)


BOX_MIN = torch.tensor([-1.0, -2.0, -0.5])
BOX_MAX = torch.tensor([3.0, 2.0, 0.5])


def test_ray_from_inside_the_box_starts_at_zero():
    t_near, t_far, hit = ray_aabb(torch.zeros(1, 3), torch.tensor([[1.0, 0.0, 0.0]]), BOX_MIN, BOX_MAX)
    assert hit.item()
    assert t_near.item() == 0.0
    assert t_far.item() == pytest.approx(3.0)


def test_ray_missing_or_behind_the_box():
    origins = torch.tensor([[-5.0, 5.0, 0.0], [5.0, 0.0, 0.0]])
    directions = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])  # passes beside; box behind
    t_near, t_far, hit = ray_aabb(origins, directions, BOX_MIN, BOX_MAX)
    assert not hit.any()
    assert torch.all(t_near == 0) and torch.all(t_far == 0)


def test_axis_parallel_rays_have_no_nans():
    origins = torch.tensor([[-5.0, 0.0, 0.0], [-5.0, 0.0, 1.0], [0.0, -5.0, 0.0], [0.0, 0.0, 5.0]])
    directions = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, -1.0]])
    t_near, t_far, hit = ray_aabb(origins, directions, BOX_MIN, BOX_MAX)
    assert torch.isfinite(t_near).all() and torch.isfinite(t_far).all()
    assert hit.tolist() == [True, False, True, True]
    torch.testing.assert_close(t_near[hit], torch.tensor([4.0, 3.0, 4.5]))
    torch.testing.assert_close(t_far[hit], torch.tensor([8.0, 7.0, 5.5]))


def test_slab_intervals_agree_with_dense_point_membership():
    g = torch.Generator().manual_seed(0)
    origins = (torch.rand(200, 3, generator=g, dtype=torch.float64) - 0.5) * 12.0
    directions = torch.randn(200, 3, generator=g, dtype=torch.float64)
    directions[:20, 0] = 0.0  # some axis-parallel components
    directions = directions / directions.norm(dim=-1, keepdim=True)
    t_near, t_far, hit = ray_aabb(origins, directions, BOX_MIN.double(), BOX_MAX.double())
    ts = torch.linspace(0.0, 30.0, 6001, dtype=torch.float64)
    pts = origins[:, None] + directions[:, None] * ts[:, None]
    inside = ((pts >= BOX_MIN.double()) & (pts <= BOX_MAX.double())).all(dim=-1)
    assert hit.any() and (~hit).any()
    step = ts[1] - ts[0]
    for i in range(200):
        if not hit[i]:
            assert not inside[i].any()
            continue
        t_in = ts[inside[i]]
        assert t_in.min() >= t_near[i] - 1e-9 and t_in.min() <= t_near[i] + step
        assert t_in.max() <= t_far[i] + 1e-9 and t_in.max() >= t_far[i] - step


def test_inverted_box_raises():
    with pytest.raises(ValueError, match="box_min"):
        ray_aabb(torch.zeros(1, 3), torch.ones(1, 3), BOX_MAX, BOX_MIN)


@pytest.mark.requires_cuda
def test_ray_aabb_matches_nerfacc_cuda_kernel():
    import nerfacc

    g = torch.Generator().manual_seed(0)
    origins = (torch.rand(500, 3, generator=g) - 0.5) * 12.0
    directions = torch.randn(500, 3, generator=g)
    directions = directions / directions.norm(dim=-1, keepdim=True)
    t_near, t_far, hit = ray_aabb(origins.cuda(), directions.cuda(), BOX_MIN.cuda(), BOX_MAX.cuda())
    aabb = torch.cat([BOX_MIN, BOX_MAX])[None].cuda()
    ref_near, ref_far, ref_hit = nerfacc.ray_aabb_intersect(origins.cuda(), directions.cuda(), aabb, near_plane=0.0)
    assert torch.equal(hit, ref_hit[:, 0])
    torch.testing.assert_close(t_near[hit], ref_near[hit, 0])
    torch.testing.assert_close(t_far[hit], ref_far[hit, 0])


def test_rays_in_box_and_intervals_render_a_density_slab():
    """The shared ray sampler feeds the density renderer: a camera at the origin looking
    along +x (OpenCV z = ego x) through a box x in [2, 10]; an opaque slab at x >= 6 inside
    it renders at 6 m for the centre ray, and rays that miss the box render nothing."""
    from render.rays import ray_intervals, rays_in_box
    from render.volume import render_density

    T_ego_cam = torch.tensor([[0.0, 0, 1, 0], [-1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 0, 1]])
    K = torch.tensor([[10.0, 0, 5], [0, 10, 5], [0, 0, 1]])
    uv = torch.tensor([[5.0, 5.0], [5.0, -500.0]])  # centre ray; a ray far above the box
    box_min, box_max = torch.tensor([2.0, -1, -1]), torch.tensor([10.0, 1, 1])
    rays, t_near, t_far = rays_in_box(K, T_ego_cam, uv, box_min, box_max, near=0.5, far=60.0)
    assert torch.allclose(t_near[0], torch.tensor(2.0)) and torch.allclose(t_far[0], torch.tensor(10.0))
    assert t_far[1] <= t_near[1]  # misses the box: empty interval
    starts, ends = ray_intervals(t_near, t_far, 64)
    mid = rays.origins[:, None] + rays.directions[:, None] * (0.5 * (starts + ends))[..., None]
    sigma = torch.where(mid[..., 0] >= 6.0, torch.full_like(starts, 1e4), torch.zeros_like(starts))
    out = render_density(sigma, starts, ends, torch.ones(2, 64, 1), backend="torch")
    assert abs(float(out.dist[0]) - 6.0) < 8.0 / 64 and float(out.opacity[0]) > 0.999
    assert float(out.opacity[1]) == 0.0
    with pytest.raises(ValueError, match="near"):
        rays_in_box(K, T_ego_cam, uv, box_min, box_max, near=5.0, far=1.0)


def test_patch_grid_tiles_neighbouring_pixels_one_patch_per_cell():
    from render.rays import patch_pixel_grid

    H, W, rows, cols, p = 96, 176, 16, 32, 4
    uv = patch_pixel_grid(H, W, rows, cols, p, generator=torch.Generator().manual_seed(0)).reshape(rows, cols, 2)
    tiles = uv.reshape(rows // p, p, cols // p, p, 2)
    # Inside a tile, neighbours are exactly one pixel apart along u (columns) and v (rows).
    torch.testing.assert_close(tiles[..., 1:, 0] - tiles[..., :-1, 0], torch.ones_like(tiles[..., 1:, 0]))
    torch.testing.assert_close(tiles[:, 1:, ..., 1] - tiles[:, :-1, ..., 1], torch.ones_like(tiles[:, 1:, ..., 1]))
    # Each tile lies inside its own cell of the (rows / p) x (cols / p) cut of the image.
    cell_h, cell_w = H / (rows // p), W / (cols // p)
    a = torch.arange(rows // p)[:, None, None, None]
    b = torch.arange(cols // p)[None, None, :, None]
    assert bool((tiles[..., 1] >= a * cell_h).all() and (tiles[..., 1] < (a + 1) * cell_h).all())
    assert bool((tiles[..., 0] >= b * cell_w).all() and (tiles[..., 0] < (b + 1) * cell_w).all())
    # Centred without jitter; a stride spreads the tile; patch 1 is one ray per cell.
    centred = patch_pixel_grid(H, W, rows, cols, p, jitter=False).reshape(rows // p, p, cols // p, p, 2)
    torch.testing.assert_close(centred[0, :, 0, 0, 1], torch.tensor([10.5, 11.5, 12.5, 13.5]))
    wide = patch_pixel_grid(H, W, rows, cols, p, stride=2.0, jitter=False).reshape(rows // p, p, cols // p, p, 2)
    torch.testing.assert_close(wide[0, 1:, 0, 0, 1] - wide[0, :-1, 0, 0, 1], torch.full((3,), 2.0))
    torch.testing.assert_close(patch_pixel_grid(H, W, 4, 8, 1, jitter=False), jittered_pixel_grid(H, W, 4, 8, jitter=False))
    with pytest.raises(ValueError, match="multiples"):
        patch_pixel_grid(H, W, 15, 32, 4)
    with pytest.raises(ValueError, match="does not fit"):
        patch_pixel_grid(H, W, 16, 32, 4, stride=8.0)
