"""eval_iou.py checkpoint mode on a non-nuScenes dataset: the bundled DDAD scene with the
shipped generated GT, RayIoU origins from the dataset's own LiDAR poses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import eval_iou
from eval.rayiou import select_origins
from selfsup.data.ddad import DDADFrames
from selfsup.occ_gt.paths import gt_label_path

REPO = Path(__file__).resolve().parents[2]
GT = REPO / "data/samples/occ_gt/ddad"
TINY = ["train_data.dataset.image_hw=(32, 56)", "train_data.dataset.cameras=('CAMERA_01', 'CAMERA_05')"]


def test_dataset_origins_equal_the_generated_sidecars(samples_root):
    ds = DDADFrames(str(samples_root / "ddad/test_scene"), "scene_02", neighbours=(), load_lidar=False,
                    image_hw=(32, 56), cameras=("CAMERA_01",))
    origins = eval_iou.DatasetOrigins(ds)
    for i in range(len(ds)):
        f = ds[i]
        sidecar = gt_label_path(GT, f.scene_names, f.tokens).parent / "lidar_origins.npy"
        np.testing.assert_allclose(origins(i), select_origins(np.load(sidecar)), atol=1e-4)


@pytest.mark.slow
def test_checkpoint_mode_on_ddad_with_init(tmp_path):
    out = tmp_path / "init.json"
    result = eval_iou.main(["--occ3d", "--py-config", str(REPO / "config/bev_tiny.py"), "--init", "--sem",
                            "--set", *TINY, "--json-out", str(out), "--save-occ-path", str(tmp_path / "pred")])
    assert result["num_samples"] == 3
    saved = json.loads(out.read_text())
    assert saved["num_samples"] == 3 and 0.0 <= saved["IoU"] <= 100.0
    preds = sorted((tmp_path / "pred" / "scene_02").glob("*/labels.npz"))
    assert [p.parent.name for p in preds] == sorted(p.parent.name for p in (GT / "scene_02").glob("*/labels.npz"))
    # the saved predictions re-score through the predictions-directory mode (sidecar origins)
    again = eval_iou.main(["--occ3d", "--pred-dir", str(tmp_path / "pred"), "--gt-dir", str(GT)])
    assert again["mIoU"] == pytest.approx(result["mIoU"], nan_ok=True)
    assert again["RayIoU"] == pytest.approx(result["RayIoU"], nan_ok=True)
