"""The evaluation drivers' geometry: intrinsics scaling and LiDAR projection."""

from __future__ import annotations

import numpy as np
import torch

from selfsup.camera import scale_intrinsics
from selfsup.evaluation import project_lidar
from selfsup.visualize import bev_occupancy, colorize_depth


def test_scale_intrinsics_keeps_continuous_pixel_coordinates():
    K = torch.tensor([[100.0, 0, 80], [0, 100.0, 48], [0, 0, 1]])
    K2 = scale_intrinsics(K, (96, 160), (48, 80))
    xyz = torch.tensor([0.3, -0.2, 4.0])
    uv1 = (K @ xyz)[:2] / 4.0
    uv2 = (K2 @ xyz)[:2] / 4.0
    assert torch.allclose(uv2, uv1 / 2)


def test_project_lidar_on_a_hand_made_camera():
    # camera at the ego origin looking along ego +x (OpenCV: z forward = ego x)
    T_ego_cam = torch.tensor([[0.0, 0, 1, 0], [-1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 0, 1]])
    K = torch.tensor([[10.0, 0, 8], [0, 10.0, 6], [0, 0, 1]])
    pts = torch.tensor([[5.0, 0, 0], [-5.0, 0, 0], [5.0, 100, 0], [10.0, 0.5, 0]])
    t = project_lidar(pts, K, T_ego_cam, (12, 16), 1e-3, 80.0)
    assert t.depth.tolist() == [5.0, 10.0]  # behind and outside are dropped
    assert (t.rows.tolist(), t.cols.tolist()) == ([6, 6], [8, 7])  # y left -> smaller u


def test_bev_and_depth_images():
    labels = np.full((4, 5, 3), 17, np.uint8)
    labels[3, 0, 0] = 11
    labels[3, 0, 2] = 16
    img = bev_occupancy(labels)
    assert img.shape == (4, 5, 3)
    assert (img[0, 4] == [0, 175, 0]).all()  # max x -> top row; column 0 is max y, so y = 0 is the last column
    assert img[1:, :].sum() == 0
    depth = colorize_depth(np.array([[0.0, 10.0]]))
    assert (depth[0, 0] == 0).all() and depth[0, 1].sum() > 0


def test_depth_and_novel_depth_scripts_on_the_bundled_scene(tmp_path):
    """eval_depth.py and eval_novel_depth.py on the untrained tiny SDF model (real DDAD data)."""
    import json
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(repo))
    import eval_depth
    import eval_novel_depth

    tiny = ["--set", "train_data.dataset.image_hw=(48,88)", "model.encoder.out_channels=16",
            "model.representation.resolution=(24,24,4)", "model.representation.feat_channels=16",
            "model.representation.plane_channels=8", "model.representation.hidden=16",
            "model.renderer.num_samples=8", "eval.depth_hw=(24,44)"]
    common = ["--py-config", str(repo / "config/sdf_ddad_tiny.py"), *tiny, "--init"]
    out = eval_depth.main([*common, "--constant-baseline", "--json-out", str(tmp_path / "d.json")])
    saved = json.loads((tmp_path / "d.json").read_text())
    assert saved["num_samples"] == 1 and len(saved["model"]["per_camera"]) == 6
    assert out["model"]["overall"]["median"]["all"]["num_images"] == 6
    assert 0 < out["model"]["overall"]["raw"]["all"]["abs_rel"] < 10
    novel = eval_novel_depth.main([*common, "--json-out", str(tmp_path / "n.json")])
    # the previous and next frames are 1.0 s away; the car moves ~1.3 m: one bin of 12 images
    assert list(novel["raw"]["bins"]) == [2] and novel["raw"]["all"]["num_images"] == 12


def test_gaussianflowocc_depth_protocol_on_the_bundled_scene():
    """eval_depth.py --protocol gaussianflowocc[_exact] on the untrained tiny Gaussian model:
    accumulated depth, LiDAR <= 40 m, pooled per sample or over all points."""
    import sys
    from pathlib import Path

    import pytest

    repo = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(repo))
    import eval_depth

    tiny = ["--set", "train_data.dataset.image_hw=(48,88)", "model.decoder.num_gaussians=64",
            "eval.depth_hw=(24,44)"]  # fmt: skip
    common = ["--py-config", str(repo / "config/gaussian_ddad_tiny.py"), *tiny, "--init"]
    per_sample = eval_depth.main([*common, "--protocol", "gaussianflowocc"])["model"]["overall"]["raw"]["all"]
    exact = eval_depth.main([*common, "--protocol", "gaussianflowocc_exact"])["model"]["overall"]["raw"]["all"]
    assert per_sample["num_images"] == 2  # two samples (frames 0 and 2): all cameras of one pooled per update
    assert exact["num_images"] == 12 and exact["num_points"] > 1000
    assert 0 < exact["abs_rel"] < 10 and 0 < per_sample["abs_rel"] < 10
    sdf = ["--py-config", str(repo / "config/sdf_ddad_tiny.py"), "--set", "train_data.dataset.image_hw=(48,88)",
           "model.encoder.out_channels=16", "model.representation.resolution=(24,24,4)",
           "model.representation.feat_channels=16", "model.representation.plane_channels=8",
           "model.representation.hidden=16", "--init"]  # fmt: skip
    with pytest.raises(ValueError, match="accumulated depth"):
        eval_depth.main([*sdf, "--protocol", "gaussianflowocc"])


def test_zbuffer_keeps_the_nearest_point_per_pixel():
    from selfsup.evaluation import zbuffer_depth

    T_ego_cam = torch.tensor([[0.0, 0, 1, 0], [-1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 0, 1]])
    K = torch.tensor([[10.0, 0, 8], [0, 10.0, 6], [0, 0, 1]])
    pts = torch.tensor([[10.0, 0, 0], [5.0, 0, 0], [7.0, 0.0, 0.0], [-5.0, 0, 0]])  # same pixel x3, one behind
    img = zbuffer_depth(pts, K, T_ego_cam, (12, 16), 1e-3, 80.0)
    assert img[6, 8] == 5.0 and (img > 0).sum() == 1


def test_held_out_novel_view_protocol_with_baselines(tmp_path):
    """eval_novel_depth.py --baselines on the tiny Gaussian config: frames 0 and 2 are rendered
    at the held-out frame 1's cameras; the LiDAR-copy baseline only uses frames 0 and 2."""
    import json
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(repo))
    import eval_novel_depth

    args = ["--py-config", str(repo / "config/gaussian_ddad_tiny.py"), "--set", "val_data.image_hw=(32,56)",
            "model.decoder.num_gaussians=64", "eval.depth_hw=(16,28)", "--init", "--baselines",
            "--json-out", str(tmp_path / "n.json"), "--save-maps", str(tmp_path / "maps")]  # fmt: skip
    out = eval_novel_depth.main(args)
    assert out["novel_depth"]["raw"]["all"]["num_images"] == 12  # 2 samples x 6 cameras of frame 1
    base = out["baselines"]
    assert 0.5 < base["coverage"] <= 1.0
    copy, const = base["lidar_copy"]["raw"]["all"], base["constant"]["raw"]["all"]
    assert copy["abs_rel"] < const["abs_rel"]  # copying neighbouring LiDAR is a strong baseline
    assert json.loads((tmp_path / "n.json").read_text())["baselines"]["constant_depth_m"] > 1.0
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == ["novel_depth_0.png", "novel_depth_1.png"]


def test_neighbour_lidar_copied_into_the_scored_cameras_on_the_real_ddad_frame(samples_root):
    """The previous and next frames' LiDAR, moved by the real poses into the middle frame's
    cameras, agrees with that frame's own LiDAR far better than a constant, and scoring the
    copied maps goes through evaluate_depth's precomputed-map path."""
    import pytest

    from selfsup.data.ddad import DDADFrames
    from selfsup.data.frames import collate_frames
    from selfsup.evaluation import evaluate_depth, neighbour_lidar_depth

    ds = DDADFrames(str(samples_root / "ddad" / "test_scene"), image_hw=(48, 88))
    hw = (48, 88)
    copied = neighbour_lidar_depth(collate_frames([ds[0]]), hw, 1.0, 80.0)
    assert copied.shape == (6, *hw) and torch.isnan(copied).any() and torch.isfinite(copied).any()
    res = evaluate_depth(None, ds, hw, 1.0, 80.0, predicted_maps=[copied])
    assert 0.3 < res["coverage"] < 1.0  # LiDAR copies cover most, not all, of the scored points
    const = evaluate_depth(None, ds, hw, 1.0, 80.0, constant_depth=20.0)
    same = evaluate_depth(None, ds, hw, 1.0, 80.0, predicted_maps=[torch.full((6, *hw), 20.0)])
    assert same["overall"] == const["overall"] and const["coverage"] == 1.0
    copy_rel = res["overall"]["median"]["all"]["abs_rel"]
    assert copy_rel < 0.2 and copy_rel < 0.5 * const["overall"]["median"]["all"]["abs_rel"]
    from selfsup.evaluation import fill_nearest

    dense = fill_nearest(copied)
    assert torch.isfinite(dense).all() and torch.equal(dense[torch.isfinite(copied)], copied[torch.isfinite(copied)])
    filled = evaluate_depth(None, ds, hw, 1.0, 80.0, predicted_maps=[dense])
    assert filled["coverage"] == 1.0 and filled["overall"]["median"]["all"]["abs_rel"] < const["overall"]["median"]["all"]["abs_rel"]
    with pytest.raises(ValueError, match="shape"):
        evaluate_depth(None, ds, hw, predicted_maps=[copied[:3]])
    with pytest.raises(ValueError, match="model is None"):
        evaluate_depth(None, ds, hw)
    lone = DDADFrames(str(samples_root / "ddad" / "test_scene"), image_hw=hw, neighbours=())
    with pytest.raises(ValueError, match="no neighbour frame"):
        neighbour_lidar_depth(collate_frames([lone[0]]), hw)
