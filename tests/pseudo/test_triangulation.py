"""Sparse depth triangulated from the images: exact on synthetic geometry, accurate against
the real DDAD LiDAR, and carried through storage and the dataset without losing points."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from selfsup.data.image import ResizeCrop
from selfsup.losses.depth import sparse_depth_grid, sparse_map_grid
from selfsup.pseudo import storage
from selfsup.pseudo.triangulation import KeypointDepth, triangulate_pair
from tests.pseudo.conftest import DDAD, REPO, run_cli


def _pose(yaw: float, t) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    T = np.eye(4)
    T[:3, :3] = [[c, 0, s], [0, 1, 0], [-s, 0, c]]  # about the camera y axis
    T[:3, 3] = t
    return T


def test_triangulate_pair_recovers_depths_of_synthetic_points():
    rng = np.random.default_rng(0)
    K = np.array([[800.0, 0, 640.5], [0, 800.0, 360.5], [0, 0, 1]])
    xyz0 = np.c_[rng.uniform(-8, 8, 50), rng.uniform(-3, 3, 50), rng.uniform(4, 80, 50)]  # camera-0 frame
    T_cam1_cam0 = _pose(0.05, [-1.3, 0.1, -0.4])
    xyz1 = xyz0 @ T_cam1_cam0[:3, :3].T + T_cam1_cam0[:3, 3]
    uv0 = (xyz0 @ K.T)[:, :2] / xyz0[:, 2:]
    uv1 = (xyz1 @ K.T)[:, :2] / xyz1[:, 2:]
    z0, z1, reproj, angle = triangulate_pair(uv0, uv1, K, K, T_cam1_cam0)
    np.testing.assert_allclose(z0, xyz0[:, 2], rtol=1e-9)
    np.testing.assert_allclose(z1, xyz1[:, 2], rtol=1e-9)
    assert reproj.max() < 1e-6
    rays0 = xyz0 @ T_cam1_cam0[:3, :3].T
    expected = np.degrees(np.arccos(np.einsum("ni,ni->n", rays0, xyz1)
                                    / np.linalg.norm(rays0, axis=1) / np.linalg.norm(xyz1, axis=1)))
    np.testing.assert_allclose(angle, expected, atol=1e-6)
    # a match shifted off its epipolar line reprojects badly
    moved = uv1.copy()
    moved[:, 1] += 5.0
    assert np.median(triangulate_pair(uv0, moved, K, K, T_cam1_cam0)[2]) > 1.0


def test_keypoint_map_keeps_the_nearest_keypoint_per_pixel():
    kd = KeypointDepth(uv=np.array([[2.2, 1.7], [2.9, 1.1], [0.5, 0.5], [9.0, 9.0]]),
                       depth=np.array([7.0, 5.0, 3.0, 1.0]), views=np.ones(4, np.int64))
    m = kd.to_map((3, 4))
    assert m[1, 2] == 5.0 and m[0, 0] == 3.0
    assert (m > 0).sum() == 2  # the keypoint outside the image is dropped


def test_sparse_depth_transform_maps_every_point_like_the_image():
    t = ResizeCrop.plan((1216, 1936), image_hw=(96, 176))
    src = np.zeros((1216, 1936), np.float32)
    src[1000, 968] = 12.0  # -> ((968.5 * 176/1936), (1000.5 * 110.5/1216) - top)
    src[1001, 969] = 9.0  # the same output pixel, nearer: kept
    src[3, 3] = 40.0  # in the cropped top rows: dropped
    out = storage.sparse_depth_transform(src, t)
    sx, sy = t.resized_hw[1] / 1936, t.resized_hw[0] / 1216
    u, v = int(np.floor(968.5 * sx - t.left)), int(np.floor(1000.5 * sy - t.top))
    assert out.shape == (96, 176) and out[v, u] == 9.0 and (out > 0).sum() == 1
    # the same points through the image transform's nearest resampling would be lost
    from PIL import Image

    assert (np.asarray(t.mask(Image.fromarray(src))) > 0).sum() == 0
    with pytest.raises(ValueError, match="expected"):
        storage.sparse_depth_transform(src[:10], t)


def test_sparse_map_grid_matches_the_lidar_cell_rule():
    depth = torch.zeros(2, 12, 16)
    depth[0, 1, 1], depth[0, 2, 2], depth[0, 11, 15], depth[1, 5, 9] = 4.0, 3.0, 8.0, 6.0
    g = sparse_map_grid(depth, 3, 4)  # cells of 4 x 4 pixels
    assert g.shape == (2, 3, 4)
    assert g[0, 0, 0] == 3.0 and g[0, 2, 3] == 8.0 and g[1, 1, 2] == 6.0
    assert (g > 0).sum() == 3
    # the same points as 3-D points through sparse_depth_grid land in the same cells
    K = torch.tensor([[10.0, 0, 8.0], [0, 10.0, 6.0], [0, 0, 1]])
    v, u = torch.nonzero(depth[0], as_tuple=True)
    z = depth[0, v, u]
    xyz_cam = torch.stack([(u + 0.5 - 8.0) / 10.0 * z, (v + 0.5 - 6.0) / 10.0 * z, z], -1)
    ref = sparse_depth_grid(xyz_cam, K[None], torch.eye(4)[None], (12, 16), 3, 4)
    torch.testing.assert_close(ref[0], g[0])


@pytest.fixture(scope="module")
def triangulated(tmp_path_factory):
    """The generator on the bundled DDAD scene (half-resolution SIFT): folder and summary."""
    out = tmp_path_factory.mktemp("tri") / "tri"
    summary = run_cli("depth", "--data-root", DDAD, "--scenes", "scene_02", "--backend", "triangulation",
                      "--out-dir", out, "--sift-scale", "0.5", "--ego-mask-dir", REPO / "data/samples/ddad/ego_masks")
    return out, summary


@pytest.mark.slow
def test_triangulated_ddad_depth_agrees_with_the_lidar(triangulated):
    """The keypoints of the middle frame against its LiDAR, which the triangulation never reads."""
    out, summary = triangulated
    assert summary["written"] == 3 and storage.read_manifest(out)["sparse"] is True
    from selfsup.data.ddad import DDADFrames

    full = DDADFrames(str(DDAD), "scene_02", neighbours=(-1, 1), pseudo_depth_dir=str(out))
    small = DDADFrames(str(DDAD), "scene_02", neighbours=(-1, 1), image_hw=(96, 176), pseudo_depth_dir=str(out))
    sample = full[0]
    errors, counts = [], []
    for v in range(6):
        d = sample.depth_maps[0, v]
        rows, cols = torch.nonzero(d > 0, as_tuple=True)
        counts.append(len(rows))
        lidar = sparse_depth_grid(sample.points_ego[0], sample.K[0, v : v + 1], sample.T_ego_cam[0, v : v + 1],
                                  tuple(d.shape), d.shape[0], d.shape[1], 1.0)[0]
        # the LiDAR return nearest in depth within 2 pixels (it is sparser than the keypoints)
        pad = torch.nn.functional.pad(lidar, (2, 2, 2, 2))
        near = torch.stack([pad[rows + i, cols + j] for i in range(5) for j in range(5)], -1)
        near = torch.where(near > 0, near, torch.full_like(near, float("inf")))
        best = near.gather(-1, (near - d[rows, cols, None]).abs().argmin(-1, keepdim=True))[:, 0]
        ok = torch.isfinite(best)
        errors.append(((d[rows, cols] - best).abs() / best)[ok])
    err = torch.cat(errors)
    assert min(counts) >= 200, counts
    assert err.numel() > 500 and err.median() < 0.03 and (err < 0.1).float().mean() > 0.85, (err.median(), err.numel())
    # the dataset keeps the points when shrinking the maps to the training size
    assert (small[0].depth_maps[0] > 0).sum() > 0.3 * sum(counts)  # several keypoints may share a pixel


@pytest.mark.slow
def test_demo_config_trains_on_the_triangulated_depth(triangulated, tmp_path):
    """config/sdf_ddad_tiny_keypoints.py (the demo's), shrunk, two steps on the generated folder."""
    import fiddle as fdl

    from selfsup.training.config import apply_overrides, load_config

    out, _ = triangulated
    cfg = apply_overrides(load_config(REPO / "config/sdf_ddad_tiny_keypoints.py"), [
        f"train_data.dataset.pseudo_depth_dir={out}", "train_data.dataset.image_hw=(48,88)",
        "model.representation.hash_levels=0", "model.renderer.num_samples=16", "model.rays_hw=(4,8)",
        "model.keypoint_rays=8"])
    exp = fdl.build(cfg)
    from selfsup.data.frames import collate_frames

    batch = collate_frames([exp.train_data[0]])
    assert batch.depth_maps is not None and (batch.depth_maps[:, 0] > 0).any()
    exp.model.train()
    for _ in range(2):
        terms = exp.model(batch).terms
        assert torch.isfinite(terms["loss/keypoint_depth"]) and terms["loss/keypoint_depth"] > 0
