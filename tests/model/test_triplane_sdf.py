"""TriplaneSDF: TPV lifting on an analytic camera setup, plane sampling, decoding."""

from __future__ import annotations

import math

import pytest
import torch
from jaxtyping import TypeCheckError

from selfsup.grid import VoxelGrid
from selfsup.representations.triplane_sdf import TPVPlanes, TriplaneSDF

GRID = VoxelGrid((-40.0, -40.0, -1.0), (40.0, 40.0, 5.4), 0.4)


def _camera_looking_along(yaw: float, height: float = 1.5) -> torch.Tensor:
    """T_ego_cam of a camera at (0, 0, height) whose optical axis is horizontal at ``yaw``."""
    forward = torch.tensor([math.cos(yaw), math.sin(yaw), 0.0])
    down = torch.tensor([0.0, 0.0, -1.0])
    right = torch.linalg.cross(down, forward)  # x_cam = y_cam x z_cam
    T = torch.eye(4)
    T[:3, 0], T[:3, 1], T[:3, 2] = right, down, forward
    T[2, 3] = height
    return T


def _two_cameras(fov_deg: float, yaws: tuple[float, float], hw=(32, 48)):
    h, w = hw
    f = (w / 2) / math.tan(math.radians(fov_deg) / 2)
    K = torch.tensor([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1.0]]).expand(1, 2, 3, 3)
    T = torch.stack([_camera_looking_along(y) for y in yaws])[None]
    return K, T


def _tiny(**kw) -> TriplaneSDF:
    args = dict(grid=GRID, resolution=(16, 16, 4), feat_channels=3, plane_channels=8, hidden=16, num_classes=17)
    args.update(kw)
    return TriplaneSDF(**args)


def _cell(value: float, lo: float, hi: float, n: int) -> int:
    return int((value - lo) / (hi - lo) * n)


def test_lifting_gives_each_cell_the_feature_of_the_cameras_that_see_it():
    rep = _tiny()
    K, T = _two_cameras(60.0, (0.0, math.pi))  # front and back cameras, no overlap
    # Constant feature maps: 1 for the front camera, 3 for the back one, on two levels.
    feats = [torch.stack([torch.full((3, 4, 6), 1.0), torch.full((3, 4, 6), 3.0)])[None],
             torch.stack([torch.full((3, 2, 3), 1.0), torch.full((3, 2, 3), 3.0)])[None]]
    cells = rep.lift(feats, (8, 16), K, T, (32, 48))
    xy = cells["xy"][0, 0]
    assert xy.shape == (16, 16)
    ix_front, ix_back, iy0 = _cell(22.0, -40, 40, 16), _cell(-22.0, -40, 40, 16), _cell(1.0, -40, 40, 16)
    assert xy[ix_front, iy0] == pytest.approx(1.0)
    assert xy[ix_back, iy0] == pytest.approx(3.0)
    assert xy[_cell(1.0, -40, 40, 16), _cell(30.0, -40, 40, 16)] == 0  # to the side: unseen
    assert set(torch.unique(xy).tolist()) <= {0.0, 1.0, 3.0}
    # Side planes: the yz plane collapses x, so its centre column averages both cameras'
    # pillar points weighted by how many of them each camera sees.
    yz = cells["yz"][0, 0]
    assert ((yz >= 0) & (yz <= 3.0 + 1e-6)).all()
    assert cells["xz"].shape == (1, 3, 16, 4)


def test_lifting_averages_overlapping_cameras():
    rep = _tiny()
    K, T = _two_cameras(120.0, (0.0, math.pi / 2))  # front and left, overlapping at 45 degrees
    feats = [torch.stack([torch.full((3, 4, 6), 1.0), torch.full((3, 4, 6), 3.0)])[None]]
    xy = rep.lift(feats, (8,), K, T, (32, 48))["xy"][0, 0]
    assert xy[_cell(20.0, -40, 40, 16), _cell(20.0, -40, 40, 16)] == pytest.approx(2.0)
    assert xy[_cell(20.0, -40, 40, 16), _cell(-20.0, -40, 40, 16)] == pytest.approx(1.0)
    assert xy[_cell(-20.0, -40, 40, 16), _cell(20.0, -40, 40, 16)] == pytest.approx(3.0)


def test_sample_planes_reads_the_right_axes():
    rep = _tiny(resolution=(10, 8, 4))
    centres = [GRID.lower[a] + (GRID.upper[a] - GRID.lower[a]) * (torch.arange(n) + 0.5) / n
               for a, n in enumerate((10, 8, 4))]
    C = 8
    xy = torch.zeros(1, C, 10, 8)
    xy[0, 0] = centres[0][:, None].expand(10, 8)  # channel 0 = x
    xy[0, 1] = centres[1][None, :].expand(10, 8)  # channel 1 = y
    xz = torch.zeros(1, C, 10, 4)
    xz[0, 2] = centres[2][None, :].expand(10, 4)  # channel 2 = z
    yz = torch.zeros(1, C, 8, 4)
    yz[0, 3] = centres[1][:, None].expand(8, 4)  # channel 3 = y again
    points = torch.tensor([[[3.3, -7.1, 2.2], [-20.0, 15.0, 0.5]]])  # between cell centres
    feat = rep.sample_planes(TPVPlanes(xy, xz, yz), points)
    assert torch.allclose(feat[0, :, :4], torch.cat([points[0], points[0, :, 1:2]], dim=-1), atol=1e-4)


def test_query_shapes_and_outside_is_empty():
    rep = _tiny()
    K, T = _two_cameras(90.0, (0.0, math.pi))
    feats = [torch.randn(1, 2, 3, 4, 6)]
    planes = rep.build(feats, (8,), K, T, (32, 48))
    assert planes.xy.shape == (1, 8, 16, 16) and planes.yz.shape == (1, 8, 16, 4)
    xyz = torch.tensor([[[1.0, 2.0, 0.5], [60.0, 0.0, 1.0], [0.0, 0.0, 7.0], [0.0, 0.0, -1.5]]])
    sdf, rgb, logits = rep.query(planes, xyz)
    assert sdf.shape == (1, 4) and rgb.shape == (1, 4, 3) and logits.shape == (1, 4, 17)
    assert ((rgb >= 0) & (rgb <= 1)).all()
    assert (sdf[0, 1:] == rep.outside_sdf).all()
    bare = _tiny(rgb=False, num_classes=0)
    sdf, rgb, logits = bare.query(bare.build(feats, (8,), K, T, (32, 48)), xyz)
    assert sdf.shape == (1, 4) and rgb is None and logits is None


def test_sdf_bias_is_ground_plus_cylinder_when_the_decoder_is_silent():
    rep = _tiny(bias_radius=25.0, ground_z=0.0)
    with torch.no_grad():
        rep.decoder[-1].weight.zero_()
        rep.decoder[-1].bias.zero_()
    planes = TPVPlanes(torch.randn(1, 8, 16, 16), torch.randn(1, 8, 16, 4), torch.randn(1, 8, 16, 4))
    xyz = torch.tensor([[[5.0, 0.0, 2.0], [5.0, 0.0, -0.5], [30.0, 0.0, 2.0], [0.0, 20.0, 4.0]]])
    sdf, _, _ = rep.query(planes, xyz)
    assert torch.allclose(sdf[0], torch.tensor([2.0, -0.5, -5.0, 4.0]))
    with pytest.raises((ValueError, TypeCheckError)):
        _tiny(sdf_bias="sphere")


def test_sdf_scale_keeps_the_initial_field_and_scales_the_last_layer_step():
    planes = TPVPlanes(torch.randn(1, 8, 16, 16), torch.randn(1, 8, 16, 4), torch.randn(1, 8, 16, 4))
    xyz = torch.rand(1, 32, 3) * torch.tensor([60.0, 60.0, 5.0]) - torch.tensor([30.0, 30.0, 0.5])
    torch.manual_seed(0)
    plain = _tiny()
    torch.manual_seed(0)
    scaled = _tiny(sdf_scale=10.0)
    assert torch.allclose(plain.query(planes, xyz)[0], scaled.query(planes, xyz)[0], atol=1e-5)
    # The same change of the SDF output bias moves the surface 10 times as far.
    with torch.no_grad():
        plain.decoder[-1].bias[0] += 0.1
        scaled.decoder[-1].bias[0] += 0.1
    shift = scaled.query(planes, xyz)[0] - plain.query(planes, xyz)[0]
    assert torch.allclose(shift, torch.full_like(shift, 0.9), atol=1e-4)
    with pytest.raises(ValueError, match="sdf_scale"):
        _tiny(sdf_scale=0.0)


def test_gradients_reach_features_and_planes():
    rep = _tiny()
    K, T = _two_cameras(90.0, (0.0, math.pi))
    feats = [torch.randn(1, 2, 3, 4, 6, requires_grad=True)]
    planes = rep.build(feats, (8,), K, T, (32, 48))
    xyz = torch.rand(1, 64, 3) * torch.tensor([60.0, 60.0, 5.0]) - torch.tensor([30.0, 30.0, 0.5])
    sdf, rgb, logits = rep.query(planes, xyz)
    (sdf.sum() + rgb.sum() + logits.sum()).backward()
    assert feats[0].grad.abs().sum() > 0
    assert rep.embed["xy"].grad.abs().sum() > 0 and rep.project["yz"].weight.grad.abs().sum() > 0


def test_decode_grid_with_hash_features_equals_query_at_cell_centres():
    # decode_grid reads the hash grid through its cached sparse matrix; query gathers per point.
    rep = _tiny(hash_levels=3, hash_log2_size=10, hash_base_resolution=4)
    with torch.no_grad():
        rep.hash.params.copy_(torch.randn_like(rep.hash.params))
    K, T = _two_cameras(90.0, (0.0, math.pi))
    planes = rep.build([torch.randn(2, 2, 3, 4, 6)], (8,), K.expand(2, -1, -1, -1), T.expand(2, -1, -1, -1), (32, 48))
    shape = (10, 8, 4)
    sdf, rest = rep.decode_grid(planes, shape)
    xyz = rep.cell_centres(shape).reshape(1, -1, 3).expand(2, -1, -1)
    want_sdf, want_rgb, _ = rep.query(planes, xyz)
    assert torch.allclose(sdf.reshape(2, -1), want_sdf, atol=1e-4)
    assert torch.allclose(rest[:, :3].flatten(2).transpose(1, 2), want_rgb, atol=1e-5)
    sdf.sum().backward()
    assert rep.hash.params.grad.abs().sum() > 0


def _warp(**kw):
    from render.grid import BoxWarp

    args = dict(inner_lower=GRID.lower, inner_upper=GRID.upper, inner_cells=(10, 8, 4), lower=(-80.0, -40.0, -1.0),
                upper=(80.0, 72.0, 13.4), shell_cells=((4, 2), (0, 4), (0, 3)))
    args.update(kw)
    return BoxWarp(**args)


def test_box_warp_maps_the_inner_box_to_its_cells_and_inverts():
    warp = _warp()
    assert warp.shape == (16, 12, 7)
    corners = torch.tensor([[-80.0, -40.0, -1.0], [-40.0, 40.0, 5.4], [40.0, 72.0, 13.4]])
    # Knots on cell boundaries: x: 4 cells below (10 m each), 10 inside (8 m), 2 above (20 m).
    want = torch.tensor([[-1.0, -1.0, -1.0], [-1 + 2 * 4 / 16, -1 + 2 * 8 / 12, -1 + 2 * 4 / 7], [-1 + 2 * 14 / 16, 1.0, 1.0]])
    torch.testing.assert_close(warp.to_unit(corners), want)
    pts = torch.rand(500, 3) * torch.tensor([200.0, 140.0, 20.0]) - torch.tensor([100.0, 50.0, 3.0])
    torch.testing.assert_close(warp.from_unit(warp.to_unit(pts)), pts, atol=1e-4, rtol=0)
    # Outside the box the unit coordinate passes +-1 (the field reads "outside" there).
    assert bool((warp.to_unit(torch.tensor([[-81.0, 0.0, 0.0]])).abs() > 1).any())
    centres = warp.axis_centres(0, 16)
    torch.testing.assert_close(centres[:5], torch.tensor([-75.0, -65.0, -55.0, -45.0, -36.0]))
    # No shell: the plain affine map of the box.
    plain = _warp(lower=None, upper=None, shell_cells=((0, 0),) * 3, inner_cells=None)
    lo, hi = torch.tensor(GRID.lower), torch.tensor(GRID.upper)
    torch.testing.assert_close(plain.to_unit(pts), 2 * (pts - lo) / (hi - lo) - 1)
    with pytest.raises(ValueError, match="shell cells exactly where"):
        _warp(shell_cells=((0, 2), (0, 4), (0, 3)))
    with pytest.raises(ValueError, match="lower <= inner_lower"):
        _warp(lower=(-30.0, -40.0, -1.0))


def test_warped_field_decodes_like_query_and_is_empty_outside_the_outer_box():
    warp = _warp()
    rep = _tiny(field_box=warp, hash_levels=2, hash_log2_size=10, hash_base_resolution=4)
    K, T = _two_cameras(90.0, (0.0, math.pi))
    planes = rep.build([torch.randn(1, 2, 3, 4, 6)], (8,), K, T, (32, 48))
    sdf, _ = rep.decode_grid(planes, warp.shape)
    xyz = rep.cell_centres(warp.shape)
    # Cells are 10 m in the lower x shell and 8 m inside the Occ3D box.
    torch.testing.assert_close(xyz[1:5, 0, 0, 0] - xyz[:4, 0, 0, 0], torch.tensor([10.0, 10.0, 10.0, 9.0]))
    want, _, _ = rep.query(planes, xyz.reshape(1, -1, 3))
    assert torch.allclose(sdf.reshape(1, -1), want, atol=1e-4)
    with torch.no_grad():
        beyond, _, _ = rep.query(planes, torch.tensor([[[60.0, 0.0, 2.0], [0.0, 0.0, 20.0]]]))
    assert float(beyond[0, 0]) != rep.outside_sdf and float(beyond[0, 1]) == rep.outside_sdf
    with pytest.raises(ValueError, match="inner box"):
        _tiny(field_box=_warp(inner_lower=(-40.0, -40.0, -2.0), lower=(-80.0, -40.0, -2.0)))


def test_embed_std_sets_the_spread_of_the_initial_cell_embeddings():
    torch.manual_seed(0)
    rep = TriplaneSDF(grid=GRID, feat_channels=8, plane_channels=8, hidden=16, resolution=(40, 40, 8), embed_std=0.02)
    stds = [float(rep.embed[name].detach().std()) for name in rep.embed]
    assert stds == pytest.approx([0.02] * 3, rel=0.05)
    flat = TriplaneSDF(grid=GRID, feat_channels=8, plane_channels=8, hidden=16, resolution=(8, 8, 4), embed_std=0.0)
    assert all(float(flat.embed[name].detach().abs().max()) == 0.0 for name in flat.embed)
    with pytest.raises(ValueError, match="embed_std"):
        TriplaneSDF(grid=GRID, feat_channels=8, plane_channels=8, hidden=16, resolution=(8, 8, 4), embed_std=-0.1)
