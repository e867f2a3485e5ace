"""Voxel GT in Frames: the real Occ3D file in a temporary gts/ layout, for DDAD and nuScenes,
and clear errors for missing / malformed files."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from eval.rayiou import scene_lidar_origins_ego
from selfsup.data.ddad import DDADFrames
from selfsup.data.frames import collate_frames
from selfsup.data.nuscenes import NuScenesFrames
from selfsup.data.occ_gt import count_class_frequencies, load_occ_gt
from selfsup.occ_gt.paths import gt_label_path as occ_gt_path

# the project's copy of one real Occ3D file (data/samples/ATTRIBUTION.md)
REAL = Path(__file__).resolve().parents[2] / "data/samples/occ3d/29796060110c4163b07f06eff4af0753/labels.npz"


@pytest.fixture(scope="module")
def real_file(samples_root) -> Path:
    return REAL


def test_real_occ3d_file_loads(real_file):
    gt = load_occ_gt(real_file)
    assert gt["semantics"].shape == (200, 200, 16) and gt["semantics"].dtype == np.uint8
    assert gt["mask_camera"].dtype == bool and gt["mask_lidar"].dtype == bool
    occupied = (gt["semantics"] != 17).mean()
    assert 0.03 < occupied < 0.10  # the file has about 6 % occupied voxels


def test_malformed_files_raise_clear_errors(tmp_path, real_file):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_occ_gt(tmp_path / "nope.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(ValueError, match="not a readable npz"):
        load_occ_gt(tmp_path / "text.npz")
    gt = load_occ_gt(real_file)
    np.savez(tmp_path / "nokey.npz", semantics=gt["semantics"])
    with pytest.raises(ValueError, match=r"no key\(s\) \['mask_lidar', 'mask_camera'\]"):
        load_occ_gt(tmp_path / "nokey.npz")
    np.savez(tmp_path / "shape.npz", semantics=gt["semantics"][:100], mask_lidar=gt["mask_lidar"], mask_camera=gt["mask_camera"])
    with pytest.raises(ValueError, match=r"shape \(100, 200, 16\)"):
        load_occ_gt(tmp_path / "shape.npz")
    bad = gt["semantics"].copy()
    bad[0, 0, 0] = 40
    np.savez(tmp_path / "values.npz", semantics=bad, mask_lidar=gt["mask_lidar"], mask_camera=gt["mask_camera"])
    with pytest.raises(ValueError, match=r"values \[40\]"):
        load_occ_gt(tmp_path / "values.npz")


def test_ddad_frames_carry_voxel_gt(tmp_path, real_file, samples_root):
    root = samples_root / "ddad" / "test_scene"
    plain = DDADFrames(str(root), "scene_02", neighbours=(), image_hw=(38, 60))
    token = plain[1].tokens
    dst = occ_gt_path(tmp_path, "scene_02", token)
    assert dst == tmp_path / "scene_02" / token.split("/")[1] / "labels.npz"
    dst.parent.mkdir(parents=True)
    shutil.copy(real_file, dst)
    ds = DDADFrames(str(root), "scene_02", neighbours=(), image_hw=(38, 60), gt_dir=str(tmp_path))
    f = ds[1]
    gt = load_occ_gt(real_file)
    assert torch.equal(f.occ_semantics, torch.from_numpy(gt["semantics"]))
    assert torch.equal(f.occ_mask_camera, torch.from_numpy(gt["mask_camera"]))
    batch = collate_frames([f, f])
    assert batch.occ_semantics.shape == (2, 200, 200, 16) and batch.occ_mask_lidar.dtype == torch.bool
    assert collate_frames([plain[1]]).occ_semantics is None
    with pytest.raises(ValueError, match="occ_semantics is None"):
        collate_frames([f, plain[1]])
    with pytest.raises(FileNotFoundError, match=r"scene_02/\d+/labels.npz"):
        ds[0]  # no file for this sample
    # RayIoU origins from the dataset's own poses: the current sample's origin is its LiDAR mount.
    T_world_ego, T_ego_lidar, T_world_lidar, cur = ds.lidar_poses(1)
    origins = scene_lidar_origins_ego(T_world_ego, T_ego_lidar, T_world_lidar, cur)
    assert origins.shape == (3, 3) and cur == 1
    np.testing.assert_allclose(origins[1], T_ego_lidar[:3, 3], atol=1e-5)
    assert np.linalg.norm(origins[0] - origins[2]) > 1.0  # the car moved between the samples


def test_nuscenes_frames_carry_voxel_gt(tmp_path, real_file, samples_root):
    root = samples_root / "nuscenes"
    dst = occ_gt_path(tmp_path, "scene-0061", "ca9a282c9e77460f8360f564131a8af5")
    dst.parent.mkdir(parents=True)
    shutil.copy(real_file, dst)
    ds = NuScenesFrames(str(root), version="v1.0-mini", split="all", neighbours=(-1,), image_hw=(45, 80), gt_dir=str(tmp_path))
    i = ds.index_of("ca9a282c9e77460f8360f564131a8af5")
    f = ds[i]
    assert f.occ_semantics.shape == (200, 200, 16) and f.occ_mask_camera.any()
    T_global_ego, T_ego_lidar, T_global_lidar, cur = ds.lidar_poses(i)
    assert T_global_lidar.shape == (1, 4, 4) and cur == 0
    with pytest.raises(FileNotFoundError, match="scene-0003"):
        ds[1 - i]
    counts = count_class_frequencies(tmp_path)
    gt = load_occ_gt(real_file)
    np.testing.assert_array_equal(counts, np.bincount(gt["semantics"].ravel(), minlength=18))
    masked = count_class_frequencies(tmp_path, mask="mask_camera")
    assert masked.sum() == gt["mask_camera"].sum()


def test_class_frequencies_script(tmp_path, real_file, repo_root):
    import json
    import sys

    sys.path.insert(0, str(repo_root / "scripts"))
    import class_frequencies

    dst = occ_gt_path(tmp_path / "gt", "scene-x", "tok")
    dst.parent.mkdir(parents=True)
    shutil.copy(real_file, dst)
    out = class_frequencies.main(["--gt-dir", str(tmp_path / "gt"), "--json-out", str(tmp_path / "f.json")])
    saved = json.loads((tmp_path / "f.json").read_text())
    assert saved["counts"] == out["counts"] and saved["num_files"] == 1 and len(saved["weights"]) == 18
    assert sum(saved["counts"]) == 200 * 200 * 16
