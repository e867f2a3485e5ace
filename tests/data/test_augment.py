"""Augmentation keeps geometry consistent: an augmented real DDAD sample still projects its
LiDAR onto the same image content, and its voxel labels onto the same voxels."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from dataclasses import replace

from selfsup.data.augment import (
    AugmentedFrames,
    BEVAugConfig,
    ImageAugConfig,
    bev_matrix,
    image_affine,
    transform_ego,
    warp_image_maps,
)
from selfsup.data.ddad import DDADFrames
from selfsup.grid import OCC3D_GRID
from selfsup.losses.photometric import project_points, sample_image
from selfsup.representations.lss import voxel_indices

# the project's copy of one real Occ3D file (data/samples/ATTRIBUTION.md)
REAL = Path(__file__).resolve().parents[2] / "data/samples/occ3d/29796060110c4163b07f06eff4af0753/labels.npz"


@pytest.fixture(scope="module")
def sample(samples_root):
    ds = DDADFrames(str(samples_root / "ddad" / "test_scene"), "scene_02", neighbours=(-1,), image_hw=(95, 152))
    return ds[0]


def lidar_colours(frames, v: int):
    """Colour of camera v's image at each current-frame LiDAR point, and which points are seen."""
    pts = frames.points_ego[0][None]
    uv, _, front = project_points(pts, frames.K[0, v][None], frames.T_ego_cam[0, v][None])
    colours, inside = sample_image(frames.images[0, v][None], uv)
    H, W = frames.images.shape[-2:]
    col, row = uv[0, :, 0].floor().long().clamp(0, W - 1), uv[0, :, 1].floor().long().clamp(0, H - 1)
    valid = front[0] & inside[0] & frames.valid_masks[v, row, col]
    return colours[0], valid


def test_image_affine_composition():
    A = image_affine((10, 20), 2.0, (3.0, 4.0), flip=True, rotate_deg=0.0)
    torch.testing.assert_close(A @ torch.tensor([1.0, 1.0, 1.0]), torch.tensor([20 - (2 - 3.0), 2 - 4.0, 1.0]))
    R = image_affine((10, 20), 1.0, (0.0, 0.0), flip=False, rotate_deg=90.0)
    torch.testing.assert_close(R @ torch.tensor([10.0, 5.0, 1.0]), torch.tensor([10.0, 5.0, 1.0]), atol=1e-5, rtol=0)


def test_augmented_sample_projects_lidar_onto_the_same_content(sample):
    torch.manual_seed(0)
    V = sample.images.shape[1]
    maps = torch.stack([image_affine(sample.images.shape[-2:], 1.08, (5.0, 7.0), flip=bool(v % 2), rotate_deg=4.0)
                        for v in range(V)])
    aug = warp_image_maps(sample, maps)
    aug = transform_ego(aug, bev_matrix(True, True, 0.0))
    diffs, baseline, seen = [], [], 0
    for v in range(V):
        c0, ok0 = lidar_colours(sample, v)
        c1, ok1 = lidar_colours(aug, v)
        both = ok0 & ok1
        seen += int(both.sum())
        diffs.append((c0[both] - c1[both]).abs().mean(-1))
        baseline.append((c0[both] - c0[both][torch.randperm(int(both.sum()))]).abs().mean(-1))
    diff, base = torch.cat(diffs).mean(), torch.cat(baseline).mean()
    assert seen > 2000
    # the same content up to bilinear resampling: far below the error of unrelated pixels
    assert float(diff) < 0.25 * float(base), (float(diff), float(base))
    # a wrong K (the flip left out of the intrinsics) must fail the same check
    wrong = replace(aug, K=sample.K)
    c_w, ok_w = lidar_colours(wrong, 1)
    c0, ok0 = lidar_colours(sample, 1)
    both = ok0 & ok_w
    assert float((c0[both] - c_w[both]).abs().mean()) > 0.5 * float(base)


def test_bev_augmentation_moves_labels_with_the_points(sample):
    gt = np.load(REAL)
    f = replace(sample, occ_semantics=torch.from_numpy(gt["semantics"]), occ_mask_camera=torch.from_numpy(gt["mask_camera"].astype(bool)),
                occ_mask_lidar=torch.from_numpy(gt["mask_lidar"].astype(bool)))
    for flip_x, flip_y, rot, min_agree in ((True, False, 0.0, 1.0), (True, True, 0.0, 1.0), (False, True, 22.5, 0.9)):
        aug = transform_ego(f, bev_matrix(flip_x, flip_y, rot))
        i0, in0 = voxel_indices(f.points_ego[0], OCC3D_GRID, collapse_z=False)
        i1, in1 = voxel_indices(aug.points_ego[0], OCC3D_GRID, collapse_z=False)
        both = in0 & in1
        agree = (f.occ_semantics.reshape(-1)[i0[both]] == aug.occ_semantics.reshape(-1)[i1[both]]).float().mean()
        assert float(agree) >= min_agree, (flip_x, flip_y, rot, float(agree))
        # the cameras moved with the ego frame: world poses are unchanged
        torch.testing.assert_close(aug.T_global_cam(), f.T_global_cam(), atol=1e-3, rtol=1e-4)
        # ego motion between the frames is conjugated by A
        A = bev_matrix(flip_x, flip_y, rot)
        T01 = torch.linalg.inv(f.T_global_ego[0]) @ f.T_global_ego[1]
        T01_aug = torch.linalg.inv(aug.T_global_ego[0]) @ aug.T_global_ego[1]
        torch.testing.assert_close(T01_aug, A @ T01 @ torch.linalg.inv(A), atol=1e-3, rtol=1e-4)
    with pytest.raises(ValueError, match="rigid"):
        transform_ego(f, torch.diag(torch.tensor([1.1, 1.1, 1.0, 1.0])))


def test_augmented_dataset_is_reproducible(samples_root):
    ds = DDADFrames(str(samples_root / "ddad" / "test_scene"), "scene_02", neighbours=(), image_hw=(38, 60))
    a = AugmentedFrames(ds, ImageAugConfig(), BEVAugConfig(rotate_deg=(-10.0, 10.0)), seed=3)
    b = AugmentedFrames(ds, ImageAugConfig(), BEVAugConfig(rotate_deg=(-10.0, 10.0)), seed=3)
    x, y = a[0], b[0]
    assert torch.equal(x.images, y.images) and torch.equal(x.K, y.K)
    assert not torch.equal(a[0].K, x.K)  # the second draw of the same index differs
