"""NuScenesFrames on the bundled 2-keyframe devkit root (real calibration and poses)."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pyquaternion import Quaternion

from selfsup.data.frames import Frames, collate_frames
from selfsup.data.nuscenes import NuScenesFrames, open_devkit

HW = (90, 160)  # 900x1600 scaled by 0.1


@pytest.fixture(scope="module")
def root(samples_root) -> Path:
    return samples_root / "nuscenes"


@pytest.fixture(scope="module")
def dataset(root, samples_root) -> NuScenesFrames:
    return NuScenesFrames(str(root), version="v1.0-mini", split="all", image_hw=HW,
                          ego_mask_dir=str(samples_root / "nuscenes_raw" / "ego_masks"))


@pytest.fixture(scope="module")
def samples(dataset) -> list[Frames]:
    return [dataset[i] for i in range(len(dataset))]


def test_devkit_loads_the_bundled_root(root):
    nusc = open_devkit(str(root), "v1.0-mini")
    assert sorted(s["name"] for s in nusc.scene) == ["scene-0003", "scene-0061"]
    assert {s["token"] for s in nusc.sample} == {"ca9a282c9e77460f8360f564131a8af5", "fd8420396768425eabec9bdddf7e64b6"}
    for sd in nusc.sample_data:
        assert (root / sd["filename"]).is_file()


def test_sample_contract(samples, dataset):
    f = samples[0]
    assert f.tokens == "ca9a282c9e77460f8360f564131a8af5" and f.scene_names == "scene-0061"
    assert f.images.shape == (3, 6, 3, *HW) and f.images.dtype == torch.float32
    assert 0.0 <= f.images.min() and f.images.max() <= 1.0
    assert f.camera_names == dataset.cameras
    # Single-keyframe scenes: both neighbours clamp to the current frame.
    assert f.frame_offsets.tolist() == [0, 0, 0]
    assert torch.equal(f.images[1], f.images[0])
    assert f.timestamps[0].item() == pytest.approx(1532402927.647951, abs=1e-6)
    assert len(f.points_ego) == 3 and f.points_ego[0].shape[1] == 3 and f.points_ego[0].shape[0] > 30000
    # Only CAM_BACK sees the car body (~3 % of its pixels).
    valid = f.valid_masks.float().mean(dim=(1, 2))
    back = f.camera_names.index("CAM_BACK")
    assert 0.94 < valid[back] < 0.99
    assert torch.all(valid[[i for i in range(6) if i != back]] == 1)


def test_camera_axes_in_ego(samples, dataset):
    for f in samples:
        axis = {c: f.T_ego_cam[0, v, :3, 2] for v, c in enumerate(dataset.cameras)}
        assert axis["CAM_FRONT"][0] > 0.99  # optical axis along +x (forward)
        assert axis["CAM_BACK"][0] < -0.99
        assert axis["CAM_FRONT_LEFT"][1] > 0.7 and axis["CAM_FRONT_RIGHT"][1] < -0.7  # y left
        assert 1.4 < f.T_ego_cam[0, 0, 2, 3] < 1.7  # cameras ~1.5 m above the ego origin


def test_lidar_projects_into_every_camera(samples):
    for f in samples:
        pts = f.points_ego[0][::4].double()  # every 4th point is plenty
        for v, cam in enumerate(f.camera_names):
            T = torch.linalg.inv(f.T_ego_cam[0, v].double())
            p = pts @ T[:3, :3].T + T[:3, 3]
            uvw = p @ f.K[0, v].double().T
            uv = uvw[:, :2] / uvw[:, 2:]
            inside = (p[:, 2] > 1) & (uv[:, 0] >= 0) & (uv[:, 0] < HW[1]) & (uv[:, 1] >= 0) & (uv[:, 1] < HW[0])
            assert inside.float().mean() > 0.05, cam
            assert 4 < p[inside, 2].median() < 40, cam


def test_matches_devkit_point_to_image_chain(root, samples, dataset):
    """Our composed T_ego_cam / points_ego give the pixels of the devkit's own chain
    (lidar -> ego at lidar time -> global -> ego at camera time -> camera)."""
    nusc = open_devkit(str(root), "v1.0-mini")
    sample = nusc.get("sample", samples[0].tokens)

    def T_of(rec):
        T = np.eye(4)
        T[:3, :3] = Quaternion(rec["rotation"]).rotation_matrix
        T[:3, 3] = rec["translation"]
        return T

    lidar = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    xyz = np.fromfile(root / lidar["filename"], dtype=np.float32).reshape(-1, 5)[:, :3].astype(np.float64)
    T_global_lidar = T_of(nusc.get("ego_pose", lidar["ego_pose_token"])) @ T_of(nusc.get("calibrated_sensor", lidar["calibrated_sensor_token"]))
    for cam in ("CAM_FRONT", "CAM_FRONT_LEFT"):
        v = dataset.cameras.index(cam)
        sd = nusc.get("sample_data", sample["data"][cam])
        cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        T_global_cam = T_of(nusc.get("ego_pose", sd["ego_pose_token"])) @ T_of(cs)
        p = (np.linalg.inv(T_global_cam) @ T_global_lidar @ np.c_[xyz, np.ones(len(xyz))].T)[:3]
        keep = p[2] > 2
        uv_ref = (np.array(cs["camera_intrinsic"]) @ p[:, keep])[:2] / p[2, keep]
        f = samples[0]
        T = np.linalg.inv(f.T_ego_cam[0, v].double().numpy())
        q = T[:3, :3] @ f.points_ego[0].double().numpy().T + T[:3, 3:]
        K_full = np.array(cs["camera_intrinsic"])
        uv = (K_full @ q[:, keep])[:2] / q[2, keep]
        assert np.abs(uv - uv_ref).max() < 0.5  # float32 storage of poses and points
        # The camera-time ego pose differs from the LiDAR one (the car moves ~9 m/s).
        assert np.linalg.norm(T_global_cam[:3, 3] - (T_global_lidar @ np.linalg.inv(T_of(nusc.get("calibrated_sensor", lidar["calibrated_sensor_token"]))))[:3, 3]) > 0.1
        T_global_cam_ours = f.T_global_cam()[0, v].double().numpy()
        assert np.abs(T_global_cam_ours - T_global_cam)[:3, 3].max() < 1e-3


def test_infos_cache_gives_identical_samples(root, dataset, samples, tmp_path, repo_root):
    sys.path.insert(0, str(repo_root / "scripts"))
    try:
        import create_infos
    finally:
        sys.path.pop(0)
    out = tmp_path / "infos.pkl"
    create_infos.main(["--data-root", str(root), "--version", "v1.0-mini", "--split", "all", "--out", str(out)])
    assert out.is_file() and not list(tmp_path.glob("*.tmp"))
    cached = NuScenesFrames(str(root), version="v1.0-mini", split="all", image_hw=HW, infos_path=str(out),
                            ego_mask_dir=dataset.ego_mask_dir and str(dataset.ego_mask_dir))
    assert len(cached) == len(dataset)
    for i, ref in enumerate(samples):
        got = cached[i]
        for name in ("images", "K", "T_ego_cam", "T_global_ego", "timestamps", "frame_offsets", "valid_masks"):
            assert torch.equal(getattr(got, name), getattr(ref, name)), name
        assert all(torch.equal(a, b) for a, b in zip(got.points_ego, ref.points_ego))
        assert (got.tokens, got.scene_names) == (ref.tokens, ref.scene_names)
    with pytest.raises(ValueError, match="split"):
        NuScenesFrames(str(root), version="v1.0-mini", split="val", infos_path=str(out))
    with pytest.raises(ValueError, match="sweeps"):
        NuScenesFrames(str(root), version="v1.0-mini", split="all", infos_path=str(out), neighbour_source="sweeps")


def test_split_and_neighbour_options(root):
    val = NuScenesFrames(str(root), version="v1.0-mini", split="val", image_hw=HW, load_lidar=False)
    assert len(val) == 1 and val[0].scene_names == "scene-0003"
    assert all(p.shape == (0, 3) for p in val[0].points_ego)
    with pytest.raises(ValueError, match="mini_val"):
        NuScenesFrames(str(root), version="v1.0-mini", split="mini_val")
    with pytest.raises(ValueError, match="allow_missing_neighbours"):
        NuScenesFrames(str(root), version="v1.0-mini", split="all", allow_missing_neighbours=False)
    sweeps = NuScenesFrames(str(root), version="v1.0-mini", split="all", image_hw=HW, neighbours=(-2, 1),
                            neighbour_source="sweeps", load_lidar=False)
    assert sweeps[0].frame_offsets.tolist() == [0, 0, 0]  # the bundled root has no sweeps


def test_collate_two_samples(samples):
    batch = collate_frames(samples)
    assert batch.batched and batch.images.shape == (2, 3, 6, 3, *HW)
    assert batch.T_global_ego.shape == (2, 3, 4, 4) and batch.timestamps.dtype == torch.float64
    assert batch.tokens == [s.tokens for s in samples] and len(batch.points_ego) == 2


@pytest.fixture()
def root_copy(root, tmp_path) -> Path:
    dst = tmp_path / "nuscenes"
    shutil.copytree(root, dst)
    return dst


def test_missing_image_names_the_file(root_copy):
    ds = NuScenesFrames(str(root_copy), version="v1.0-mini", split="all", image_hw=HW)
    victim = next((root_copy / "samples" / "CAM_BACK").glob("n015-2018-07-24*.jpg"))
    victim.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(victim.name)):
        ds[0]


def test_missing_table_names_it(root_copy):
    (root_copy / "v1.0-mini" / "calibrated_sensor.json").unlink()
    with pytest.raises(FileNotFoundError, match="calibrated_sensor"):
        NuScenesFrames(str(root_copy), version="v1.0-mini", split="all")
    with pytest.raises(FileNotFoundError, match="v1.0-trainval"):
        NuScenesFrames(str(root_copy), version="v1.0-trainval", split="all")


def test_unknown_token_names_it(root_copy, dataset):
    with pytest.raises(KeyError, match="deadbeef"):
        dataset.index_of("deadbeef")
    path = root_copy / "v1.0-mini" / "scene.json"
    scenes = json.loads(path.read_text())
    scenes[0]["first_sample_token"] = "0123456789abcdef0123456789abcdef"
    path.write_text(json.dumps(scenes))
    with pytest.raises(KeyError, match="'sample'.*0123456789abcdef0123456789abcdef"):
        NuScenesFrames(str(root_copy), version="v1.0-mini", split="all")
