"""LSS lifting, voxel pooling, LiDAR depth targets, backward projection, BEV encoders and
the shared voxel decoders, on small analytic cameras."""

from __future__ import annotations

import math

import pytest
import torch

from selfsup.encoders.bev import BEVEncoder2D, VoxelEncoder3D
from selfsup.grid import VoxelGrid
from selfsup.losses.photometric import project_points
from selfsup.representations.lss import (
    FLASHOCC_DEPTH_BINS,
    BackwardLift,
    DepthBins,
    LSSLift,
    depth_bin_bce,
    frustum_points,
    lidar_depth_targets,
    sample_multiview,
    splat_features,
)
from selfsup.representations.voxel_decoders import ChannelToHeightHead, Conv3DHead, logits_to_labels

SMALL = VoxelGrid(lower=(-4.0, -4.0, -1.0), upper=(4.0, 4.0, 1.4), voxel_size=0.4)  # 20 x 20 x 6


def front_camera(height: float = 0.2, yaw: float = 0.0) -> torch.Tensor:
    """OpenCV camera looking along ego +x (rotated by ``yaw`` about z), at z = height."""
    R = torch.tensor([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # columns: cam x, y, z in ego
    c, s = math.cos(yaw), math.sin(yaw)
    Rz = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    T = torch.eye(4)
    T[:3, :3] = Rz @ R
    T[2, 3] = height
    return T


K8 = torch.tensor([[8.0, 0.0, 4.0], [0.0, 8.0, 4.0], [0.0, 0.0, 1.0]])  # 8 x 8 image


def test_flashocc_depth_bins():
    assert FLASHOCC_DEPTH_BINS.count == 88
    v = FLASHOCC_DEPTH_BINS.values()
    assert float(v[0]) == 1.0 and float(v[-1]) == 44.5
    idx = FLASHOCC_DEPTH_BINS.index(torch.tensor([0.0, 0.99, 1.0, 1.49, 1.5, 44.99, 45.0]))
    assert idx.tolist() == [-1, -1, 0, 0, 1, 87, -1]
    with pytest.raises(ValueError):
        DepthBins(5.0, 1.0, 0.5)


def test_frustum_points_project_back_to_cell_centres():
    K = K8.clone()
    K[0, 1] = 0.3  # a skewed, non-diagonal K (augmented images) must work too
    T = front_camera(yaw=0.4)
    depths = torch.tensor([2.0, 5.0])
    pts = frustum_points(K[None, None], T[None, None], (2, 4), 2, depths)  # [1 1 2 2 4 3]
    uv, z, _ = project_points(pts.reshape(1, -1, 3), K[None], T[None])
    cols = (torch.arange(4) + 0.5) * 2
    rows = (torch.arange(2) + 0.5) * 2
    expect_u = cols.view(1, 1, 4).expand(2, 2, 4).reshape(-1)
    expect_v = rows.view(1, 2, 1).expand(2, 2, 4).reshape(-1)
    torch.testing.assert_close(uv[0, :, 0], expect_u, atol=1e-4, rtol=0)
    torch.testing.assert_close(uv[0, :, 1], expect_v, atol=1e-4, rtol=0)
    torch.testing.assert_close(z[0], depths.view(2, 1).expand(2, 8).reshape(-1), atol=1e-5, rtol=0)


def test_splat_puts_one_hot_depth_in_the_right_cell():
    # One feature cell (stride 8) whose ray goes straight ahead from (0, 0.1, 0.3); all
    # mass in the 3.1 m bin, so the point (3.1, 0.1, 0.3) is in voxel (17, 10, 3).
    bins = DepthBins(1.1, 4.1, 0.5)  # 6 bins, 1.1 ... 3.6
    probs = torch.zeros(1, 1, bins.count, 1, 1)
    probs[0, 0, 4] = 1.0  # depth 3.1 m
    ctx = torch.tensor([2.0, -1.0]).view(1, 1, 2, 1, 1)
    T = front_camera(height=0.3)
    T[1, 3] = 0.1
    pts = frustum_points(K8[None, None], T[None, None], (1, 1), 8, bins.values())
    vol = splat_features(probs, ctx, pts, SMALL, collapse_z=False)  # [1 2 20 20 6]
    ix, iy, iz = 17, 10, 3
    assert vol.shape == (1, 2, 20, 20, 6)
    torch.testing.assert_close(vol[0, :, ix, iy, iz], torch.tensor([2.0, -1.0]))
    assert float(vol.abs().sum()) == pytest.approx(3.0)
    bev = splat_features(probs, ctx, pts, SMALL, collapse_z=True)
    torch.testing.assert_close(bev, vol.sum(-1))


def test_splat_conserves_mass_inside_and_drops_outside_and_has_gradients():
    torch.manual_seed(0)
    B, V, D, h, w, C = 2, 2, 8, 3, 4, 3
    bins = DepthBins(1.0, 9.0, 1.0)
    probs = torch.rand(B, V, D, h, w, requires_grad=True)
    ctx = torch.rand(B, V, C, h, w, requires_grad=True)
    T = torch.stack([front_camera(), front_camera(yaw=math.pi)])[None].expand(B, V, 4, 4)
    K = torch.tensor([[4.0, 0, 8], [0, 4.0, 6], [0, 0, 1]]).expand(B, V, 3, 3)
    pts = frustum_points(K, T, (h, w), 4, bins.values())
    out = splat_features(probs, ctx, pts, SMALL, collapse_z=False)
    lower, upper = torch.tensor(SMALL.lower), torch.tensor(SMALL.upper)
    inside = ((pts >= lower) & (pts < upper)).all(-1)  # [B V D h w]
    expected = (probs[..., None] * ctx.permute(0, 1, 3, 4, 2)[:, :, None] * inside[..., None]).sum((1, 2, 3, 4))  # [B C]
    torch.testing.assert_close(out.sum((2, 3, 4)), expected)
    assert 0 < int(inside.sum()) < inside.numel()  # the test exercises both cases
    out.sum().backward()
    assert probs.grad.abs().sum() > 0 and ctx.grad.abs().sum() > 0


def test_lss_lift_shapes_and_softmax():
    lift = LSSLift(in_channels=5, out_channels=3, grid=SMALL, bins=DepthBins(1.0, 5.0, 0.5), collapse_z=True)
    feats = torch.randn(1, 2, 5, 2, 2)
    T = torch.stack([front_camera(), front_camera(yaw=1.0)])[None]
    bev, depth = lift(feats, 4, K8.expand(1, 2, 3, 3), T)
    assert bev.shape == (1, 3, 20, 20) and depth.shape == (1, 2, 8, 2, 2)
    torch.testing.assert_close(depth.sum(2), torch.ones(1, 2, 2, 2))


def test_lidar_depth_targets_min_pool_per_cell():
    T = front_camera(height=0.0)
    # Two points in the same stride-4 cell (top-left quarter of the 8x8 image) at 5 m and 7 m,
    # one behind the camera, one in the bottom-right cell at 3 m.
    pts = torch.tensor([[5.0, 1.0, 1.0], [7.0, 1.4, 1.4], [-3.0, 0.0, 0.0], [3.0, -0.5, -0.5]])
    depth = lidar_depth_targets(pts, K8[None], T[None], (8, 8), 4)
    assert depth.shape == (1, 2, 2)
    assert depth[0].tolist() == [[5.0, 0.0], [0.0, 3.0]]


def test_depth_bin_bce_prefers_the_true_bin():
    bins = DepthBins(1.0, 5.0, 1.0)  # 4 bins
    target = torch.tensor([[[2.5, 0.0]]])  # bin 1, and an empty cell
    good = torch.full((1, 4, 1, 2), 0.01)
    good[0, 1] = 0.97
    uniform = torch.full((1, 4, 1, 2), 0.25)
    assert float(depth_bin_bce(good, target, bins)) < 0.1 < float(depth_bin_bce(uniform, target, bins))
    assert float(depth_bin_bce(uniform, torch.zeros(1, 1, 2), bins)) == 0.0


def test_sample_multiview_and_backward_lift_read_the_seeing_camera():
    # Camera 0 looks forward, camera 1 backward; constant features 1 and 3.
    feats = torch.stack([torch.full((2, 2, 2), 1.0), torch.full((2, 2, 2), 3.0)])[None]  # [1 2 2 2 2]
    T = torch.stack([front_camera(), front_camera(yaw=math.pi)])[None]
    K = K8.expand(1, 2, 3, 3)
    pts = torch.tensor([[[3.0, 0.0, 0.0], [-3.0, 0.0, 0.0], [0.0, 3.0, 0.0]]])
    mean, count = sample_multiview(pts, feats, 4, K, T, (8, 8))
    assert count[0, 0].tolist() == [1.0, 1.0, 0.0]
    torch.testing.assert_close(mean[0, 0], torch.tensor([1.0, 3.0, 0.0]))
    lift = BackwardLift(2, 2, SMALL, collapse_z=True, z_samples=2)
    with torch.no_grad():
        lift.proj.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
        lift.proj.bias.zero_()
    with torch.no_grad():
        bev = lift(feats, 4, K, T, (8, 8))
    ix_front, ix_back, iy = int((3.0 + 4) / 0.4), int((-3.0 + 4) / 0.4), 10
    assert float(bev[0, 0, ix_front, iy]) == pytest.approx(1.0)
    assert float(bev[0, 0, ix_back, iy]) == pytest.approx(3.0)
    vol = BackwardLift(2, 4, SMALL, collapse_z=False)(feats, 4, K, T, (8, 8))
    assert vol.shape == (1, 4, 20, 20, 6)


def test_encoders_and_shared_heads_keep_the_occ3d_layout():
    enc2 = BEVEncoder2D(in_channels=4, channels=(8, 16, 32), out_channels=8)
    bev = enc2(torch.randn(1, 4, 20, 20))
    assert bev.shape == (1, 8, 20, 20)
    logits = ChannelToHeightHead(8, 8, num_z=6)(bev)
    assert logits.shape == (1, 20, 20, 6, 18)
    enc3 = VoxelEncoder3D(in_channels=4, channels=(4, 8, 16), out_channels=4)
    vol = enc3(torch.randn(1, 4, 20, 20, 6))
    assert vol.shape == (1, 4, 20, 20, 6)
    logits3 = Conv3DHead(4, 8)(vol)
    assert logits3.shape == (1, 20, 20, 6, 18)
    labels = logits_to_labels(logits3)
    assert labels.dtype == torch.uint8 and int(labels.max()) <= 17


def test_channel_to_height_head_height_layout():
    # A head whose last layer only emits class 3 at height 2 (bias) shows the (Z, K) view order.
    head = ChannelToHeightHead(2, 2, num_z=4, num_classes=5)
    with torch.no_grad():
        for p in head.mlp[-1].parameters():
            p.zero_()
        head.mlp[-1].bias.view(4, 5)[2, 3] = 10.0
    labels = logits_to_labels(head(torch.randn(1, 2, 3, 3)))
    assert (labels[..., 2] == 3).all() and (labels[..., [0, 1, 3]] == 0).all()
