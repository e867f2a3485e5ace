"""DDADFrames on the bundled TRI DGP test scene (real DDAD calibration and poses)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch

from selfsup.data.ddad import DDAD_CAMERAS, DDADFrames
from selfsup.data.frames import collate_frames

HW = (76, 121)  # 1216x1936 scaled by 1/16


@pytest.fixture(scope="module")
def root(samples_root) -> Path:
    return samples_root / "ddad" / "test_scene"


@pytest.fixture(scope="module")
def all_frames(root) -> list:
    """The 3 samples of scene_02, neighbours clamped (loaded once: JPEG decoding dominates)."""
    ds = DDADFrames(str(root), image_hw=HW, allow_missing_neighbours=True)
    assert len(ds) == 3
    return [ds[i] for i in range(len(ds))]


def test_default_indexes_only_fully_neighboured_samples(root):
    ds = DDADFrames(str(root), image_hw=HW, load_lidar=False)
    assert len(ds) == 1
    f = ds[0]
    assert f.frame_offsets.tolist() == [0, -1, 1]
    assert f.images.shape == (3, 6, 3, *HW) and f.camera_names == DDAD_CAMERAS
    dt = (f.timestamps - f.timestamps[0]).tolist()
    assert dt[1] == pytest.approx(-0.99, abs=0.02) and dt[2] == pytest.approx(1.01, abs=0.02)
    assert f.tokens.startswith("scene_02/") and f.scene_names == "scene_02"
    assert f.valid_masks.all()


def test_allow_missing_neighbours_clamps(all_frames):
    first, last = all_frames[0], all_frames[2]
    assert first.frame_offsets.tolist() == [0, 0, 1]
    assert last.frame_offsets.tolist() == [0, -1, 0]
    assert torch.equal(first.images[1], first.images[0])


def test_ego_frame_is_x_forward_y_left_z_up(all_frames):
    f = all_frames[1]
    axis = f.T_ego_cam[0, :, :3, 2]
    assert axis[DDAD_CAMERAS.index("CAMERA_01"), 0] > 0.99  # front camera looks along +x
    assert axis[DDAD_CAMERAS.index("CAMERA_09"), 0] < -0.99  # rear camera along -x
    assert axis[DDAD_CAMERAS.index("CAMERA_05"), 1] > 0.7  # front-left camera, y left
    assert torch.all((f.T_ego_cam[0, :, 2, 3] > 1.4) & (f.T_ego_cam[0, :, 2, 3] < 1.7))  # 1.5 m up
    z = f.points_ego[0][:, 2]
    assert abs(torch.quantile(z, 0.02).item()) < 0.2  # lowest returns: the ground at z ~ 0
    # Ego z is up in the world as well.
    assert f.T_global_ego[0, 2, 2] > 0.99


def test_lidar_projects_into_every_camera(all_frames):
    for i in range(3):
        f = all_frames[i]
        pts = f.points_ego[0][::4].double()  # every 4th point is plenty
        for v, cam in enumerate(f.camera_names):
            T = torch.linalg.inv(f.T_ego_cam[0, v].double())
            p = pts @ T[:3, :3].T + T[:3, 3]
            uvw = p @ f.K[0, v].double().T
            uv = uvw[:, :2] / uvw[:, 2:]
            inside = (p[:, 2] > 1) & (uv[:, 0] >= 0) & (uv[:, 0] < HW[1]) & (uv[:, 1] >= 0) & (uv[:, 1] < HW[0])
            assert inside.float().mean() > 0.05, cam
            assert 5 < p[inside, 2].median() < 60, cam


def test_neighbour_poses_are_consistent(all_frames):
    """The same static world seen from the previous frame: T_ego0_cam of the previous
    frame's front camera lies behind the current one along the driving direction."""
    f = all_frames[1]
    T = f.T_ego0_cam()
    x_prev, x_cur = T[1, 0, 0, 3], T[0, 0, 0, 3]
    assert x_prev < x_cur and (x_cur - x_prev) < 5.0


def test_collate(all_frames):
    b = collate_frames([all_frames[0], all_frames[1]])
    assert b.images.shape == (2, 3, 6, 3, *HW) and b.frame_offsets.tolist() == [[0, 0, 1], [0, -1, 1]]


def test_errors(root, tmp_path):
    with pytest.raises(KeyError, match="CAMERA_07"):
        DDADFrames(str(root), scene="scene_01")
    with pytest.raises(FileNotFoundError, match="scene_99"):
        DDADFrames(str(root), scene="scene_99")
    with pytest.raises(ValueError, match="allow_missing_neighbours"):
        DDADFrames(str(root), neighbours=(-2, 2))
    copy = tmp_path / "test_scene"
    shutil.copytree(root / "scene_02", copy / "scene_02")
    ds = DDADFrames(str(copy), image_hw=HW, load_lidar=False)
    victim = sorted((copy / "scene_02" / "rgb" / "CAMERA_05").glob("*.jpg"))[1]
    victim.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(victim.name)):
        ds[0]


def test_bundled_ego_masks_are_the_scripts_polygons_and_load_per_camera(root, tmp_path):
    """``data/samples/ddad/ego_masks`` is what ``scripts/make_ddad_ego_masks.py`` draws, and
    ``DDADFrames(ego_mask_dir=...)`` reads it per camera: CAMERA_01 sees no car body,
    CAMERA_07 / CAMERA_08 (roof and body panels) about a quarter of the image."""
    import numpy as np
    from PIL import Image

    from scripts.make_ddad_ego_masks import main as make_masks

    bundled = root.parent / "ego_masks"
    make_masks(["--out", str(tmp_path)])
    for cam in DDAD_CAMERAS:
        drawn = np.asarray(Image.open(tmp_path / f"{cam}_mask.png"))
        assert np.array_equal(drawn, np.asarray(Image.open(bundled / f"{cam}_mask.png"))), cam
    ds = DDADFrames(str(root), image_hw=HW, load_lidar=False, ego_mask_dir=str(bundled))
    body = {cam: 1.0 - float(m.float().mean()) for cam, m in zip(DDAD_CAMERAS, ds[0].valid_masks)}
    assert body["CAMERA_01"] == 0.0
    assert 0.2 < body["CAMERA_07"] < 0.35 and 0.2 < body["CAMERA_08"] < 0.35
    assert 0.05 < body["CAMERA_05"] < 0.15 and 0.05 < body["CAMERA_06"] < 0.15 and 0.1 < body["CAMERA_09"] < 0.25
    # The body is at the bottom of the side and rear images: their last row is all car.
    for cam in ("CAMERA_05", "CAMERA_07", "CAMERA_08", "CAMERA_09"):
        assert not ds[0].valid_masks[DDAD_CAMERAS.index(cam), -1].any(), cam
