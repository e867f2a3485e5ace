"""eval_iou.py end to end on the bundled nuScenes devkit root, with hand-made npz files."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import eval_iou
from eval.occ3d import Occ3DMetric
from eval.rayiou import RayIoUMetric

SCENES = {"scene-0061": "ca9a282c9e77460f8360f564131a8af5", "scene-0003": "fd8420396768425eabec9bdddf7e64b6"}
REPO = Path(__file__).resolve().parents[2]
ROOT = REPO / "data" / "samples" / "nuscenes"


def _write(path: Path, **arrays):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)


def _make_dirs(tmp_path: Path):
    rng = np.random.default_rng(0)
    gt_dir, pred_dir = tmp_path / "gts", tmp_path / "pred"
    for scene, token in SCENES.items():
        sem = np.full((200, 200, 16), 17, np.uint8)
        sem[:, :, 1] = 11
        sem[110:120, 95:105, 2:5] = 4
        # a closed yard (walls at +-10 m and a roof) keeps every ray short, so the test is fast
        sem[75, :, :] = sem[125, :, :] = sem[:, 75, :] = sem[:, 125, :] = 15
        sem[:, :, 15] = 16
        mask = np.zeros_like(sem)
        mask[60:140, 60:140] = 1
        _write(gt_dir / scene / token / "labels.npz", semantics=sem, mask_lidar=mask, mask_camera=mask)
        pred = sem.copy()
        pred[rng.random(sem.shape) < 0.05] = 17
        pred[110:120, 95:105, 2:5] = 10
        _write(pred_dir / scene / token / "labels.npz", semantics=pred)
    return gt_dir, pred_dir


def _args(gt_dir, pred_dir, out, *extra):
    return ["--occ3d", "--pred-dir", str(pred_dir), "--data-root", str(ROOT), "--version", "v1.0-mini",
            "--gt-dir", str(gt_dir), "--json-out", str(out), *extra]


needs_root = pytest.mark.skipif(not (ROOT / "v1.0-mini").is_dir(), reason="bundled devkit root missing")


@needs_root
def test_end_to_end_matches_direct_metrics(tmp_path, capsys):
    gt_dir, pred_dir = _make_dirs(tmp_path)
    out = tmp_path / "res.json"
    result = eval_iou.main(_args(gt_dir, pred_dir, out, "--use-mask"))
    assert "MEAN" in capsys.readouterr().out
    written = json.loads(out.read_text())
    for key in ("mIoU", "IoU", "RayIoU", "RayIoU@1", "RayIoU@2", "RayIoU@4", "IoU_per_class", "RayIoU_per_class"):
        assert key in written
    assert written["num_samples"] == 2
    # the same numbers straight from the metric classes
    origins = eval_iou.NuScenesOrigins(ROOT, "v1.0-mini")
    miou, ray = Occ3DMetric(), RayIoUMetric()
    for scene, token in sorted(SCENES.items()):
        gt = np.load(gt_dir / scene / token / "labels.npz")
        pred = np.load(pred_dir / scene / token / "labels.npz")["semantics"]
        miou.update(pred, gt["semantics"], gt["mask_camera"].astype(bool))
        ray.update(pred, gt["semantics"], origins(token, scene))
    assert result["mIoU"] == miou.compute()["mIoU"]
    assert result["RayIoU"] == ray.compute()["RayIoU"]
    assert result["IoU_per_class"]["truck"] == 0.0  # predicted, never in GT


@needs_root
def test_origins_of_single_keyframe_scene_is_lidar_mount():
    origins = eval_iou.NuScenesOrigins(ROOT, "v1.0-mini")("ca9a282c9e77460f8360f564131a8af5", "scene-0061")
    assert origins.shape == (1, 3)
    assert 0.5 < origins[0, 0] < 1.5 and 1.5 < origins[0, 2] < 2.2  # LIDAR_TOP on the roof


@needs_root
def test_bad_inputs_name_the_file(tmp_path):
    gt_dir, pred_dir = _make_dirs(tmp_path)
    out = tmp_path / "r.json"
    bad = pred_dir / "scene-0003" / SCENES["scene-0003"] / "labels.npz"
    bad.unlink()
    with pytest.raises(FileNotFoundError, match="prediction file not found.*scene-0003"):
        eval_iou.main(_args(gt_dir, pred_dir, out))
    _write(bad, semantics=np.zeros((200, 200, 8), np.uint8))
    with pytest.raises(ValueError, match=r"labels.npz.*shape \(200, 200, 8\)"):
        eval_iou.main(_args(gt_dir, pred_dir, out))
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable npz"):
        eval_iou.main(_args(gt_dir, pred_dir, out))
    _write(bad, semantics=np.full((200, 200, 16), 17, np.uint8))
    gt_file = gt_dir / "scene-0061" / SCENES["scene-0061"] / "labels.npz"
    _write(gt_file, semantics=np.full((200, 200, 16), 17, np.uint8))
    with pytest.raises(ValueError, match="no key.*mask_camera"):
        eval_iou.main(_args(gt_dir, pred_dir, out, "--use-mask"))
    unknown = gt_dir / "scene-0061" / ("0" * 32) / "labels.npz"
    _write(unknown, semantics=np.full((200, 200, 16), 17, np.uint8))
    _write(pred_dir / "scene-0061" / ("0" * 32) / "labels.npz", semantics=np.full((200, 200, 16), 17, np.uint8))
    with pytest.raises(KeyError, match="0{32} not found"):
        eval_iou.main(_args(gt_dir, pred_dir, out))
    assert not out.exists()
    with pytest.raises(FileNotFoundError, match="cfg.py"):
        eval_iou.main(["--occ3d", "--py-config", "cfg.py", "--resume-from", "x.pth"])


def test_shard_covers_every_item_once():
    for n in range(0, 12):
        for world in (1, 2, 3, 5):
            parts = [eval_iou.shard(list(range(n)), r, world) for r in range(world)]
            assert sum(parts, []) == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


@needs_root
def test_two_processes_give_the_same_json(tmp_path):
    gt_dir, pred_dir = _make_dirs(tmp_path)
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    eval_iou.main(_args(gt_dir, pred_dir, one, "--use-mask"))
    accelerate = Path(sys.executable).parent / "accelerate"
    cmd = [str(accelerate), "launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", str(REPO / "eval_iou.py"),
           *_args(gt_dir, pred_dir, two, "--use-mask")]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one_json, two_json = json.loads(one.read_text()), json.loads(two.read_text())
    assert one_json.pop("num_processes") == 1
    assert two_json.pop("num_processes") == 2  # really two ranks (relaunched over gloo on CPU)
    assert two_json == one_json
