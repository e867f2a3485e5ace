"""Gaussian model integration: GaussianFlowOcc-layout pseudo labels on the bundled nuScenes
root, a few training steps through the real loop (LiDAR on DDAD, pseudo labels on
nuScenes), eval_depth.py on the checkpoint, and eval_iou.py checkpoint mode against the
predictions-directory mode."""

from __future__ import annotations

import json
import math
from pathlib import Path

import fiddle as fdl
import numpy as np
import pytest
import torch

import eval_depth
import eval_iou
from selfsup.data.frames import collate_frames
from selfsup.data.nuscenes import NuScenesFrames
from selfsup.training.checkpoint import read_meta, resolve_checkpoint
from selfsup.training.config import apply_overrides, load_config
from selfsup.training.loop import train

REPO = Path(__file__).resolve().parents[2]
ROOT = REPO / "data/samples/nuscenes"
DDAD_CONFIG = REPO / "config/gaussian_ddad_tiny.py"
NUSC_CONFIG = REPO / "config/gaussian_nuscenes.py"
SCENES = {"scene-0061": "ca9a282c9e77460f8360f564131a8af5", "scene-0003": "fd8420396768425eabec9bdddf7e64b6"}
HW = (32, 64)  # 900 x 1600 scaled by 0.04 -> 36 x 64, top 4 rows cropped

# Camera orders inside GaussianFlowOcc's files (see selfsup/data/nuscenes.py), written out
# here rather than imported so a change there shows up as a failure.
DEPTH_FILE_ORDER = ("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT")
SEM_FILE_ORDER = ("CAM_FRONT", "CAM_FRONT_LEFT", "CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT", "CAM_FRONT_RIGHT")

TINY_MODEL = [
    "model.encoder.name='resnet18'",
    "model.encoder.out_channels=16",
    "model.decoder.num_gaussians=96",
    "model.decoder.embed_dims=16",
    "model.decoder.feat_channels=16",
    "model.decoder.num_blocks=1",
    "model.decoder.num_heads=2",
    "model.decoder.num_points=2",
    "model.decoder.num_inducing=8",
    "model.flow.embed_dims=16",
    "model.flow.hidden_dims=16",
    "model.flow.num_layers=2",
]


def nuscenes_overrides(*extra: str) -> list[str]:
    out = list(TINY_MODEL) + ["model.render_hw=(16,32)"]
    for part in ("train_data", "val_data"):
        out += [f"{part}.data_root='{ROOT}'", f"{part}.version='v1.0-mini'", f"{part}.split='all'",
                f"{part}.image_hw={HW}"]
    # The bundled root has one keyframe per scene: no random neighbour draw is possible there.
    out += ["train_data.neighbours=(-1,1)"]
    return out + list(extra)


@pytest.fixture(scope="module")
def pseudo_dirs(tmp_path_factory) -> tuple[Path, Path]:
    """GaussianFlowOcc-layout files for both bundled keyframes.

    Depth of file camera c, source row r: 5 (c + 1) + 0.5 (r // 100) metres (exact in
    float16, all within the 40 m range), so the camera order and the source row band of
    every output pixel can be read back. Semantics of file camera c: class c + 1, except the
    left half of file camera 0 (0 = unlabelled) and all of file camera 3 (-1 = no detection
    in the image).
    """
    base = tmp_path_factory.mktemp("pseudo")
    bands = 0.5 * (np.arange(900)[:, None] // 100)
    depth = np.stack([np.broadcast_to(5 * (c + 1) + bands, (900, 1600)) for c in range(6)]).astype(np.float16)
    sem = np.stack([np.full((900, 1600), c + 1, np.int8) for c in range(6)])
    sem[0, :, :800] = 0
    sem[3] = -1
    for scene, token in SCENES.items():
        for name, arr in (("depth", depth), ("sem", sem)):
            (base / name / scene).mkdir(parents=True, exist_ok=True)
            np.save(base / name / scene / f"{token}.npy", arr)
    return base / "depth", base / "sem"


def pseudo_dataset(depth_dir, sem_dir, **kw) -> NuScenesFrames:
    return NuScenesFrames(str(ROOT), version="v1.0-mini", split="all", image_hw=HW, load_lidar=False,
                          pseudo_depth_dir=None if depth_dir is None else str(depth_dir),
                          pseudo_semantic_dir=None if sem_dir is None else str(sem_dir), **kw)


def test_pseudo_labels_follow_camera_order_and_the_image_crop(pseudo_dirs):
    ds = pseudo_dataset(*pseudo_dirs)
    f = ds[0]
    assert f.depth_maps.shape == (3, 6, *HW) and f.depth_maps.dtype == torch.float32
    assert f.semantic_maps.shape == (3, 6, *HW) and f.semantic_maps.dtype == torch.int16
    for v, cam in enumerate(ds.cameras):
        d = f.depth_maps[0, v]
        c = DEPTH_FILE_ORDER.index(cam)
        band = (d[:, 0] - 5 * (c + 1)) / 0.5
        assert torch.all(band == band.round()) and torch.all((band >= 0) & (band <= 8))  # exact file values
        # Output row i samples the resized row i + 4 (top crop), i.e. source row
        # (i + 4 + 0.5) / 0.04 - 0.5: rows 112 (band 1; 12 without the crop) to 887 (band 8).
        expected = ((torch.arange(HW[0]) + 4.5) / 0.04 - 0.5) / 100
        assert torch.all((band - expected).abs() <= 1.0)
        assert band[0] == 1 and band[-1] == 8
        assert torch.all(d == d[:, :1])  # constant along rows: nothing blended
    labels = {cam: f.semantic_maps[0, v] for v, cam in enumerate(ds.cameras)}
    assert torch.all(labels["CAM_FRONT_LEFT"] == 2) and torch.all(labels["CAM_FRONT_RIGHT"] == 6)
    assert torch.all(labels["CAM_BACK_LEFT"] == 3) and torch.all(labels["CAM_BACK_RIGHT"] == 5)
    assert torch.all(labels["CAM_BACK"] == 255)  # -1 in the file: no detection
    front = labels["CAM_FRONT"]
    assert torch.all(front[:, : HW[1] // 2 - 1] == 255) and torch.all(front[:, HW[1] // 2 + 1 :] == 1)


def test_pseudo_labels_collate_and_move(pseudo_dirs):
    with_maps = pseudo_dataset(*pseudo_dirs)
    batch = collate_frames([with_maps[0], with_maps[1]]).to("cpu")
    assert batch.depth_maps.shape == (2, 3, 6, *HW) and batch.semantic_maps.shape == (2, 3, 6, *HW)
    plain = pseudo_dataset(None, None)[1]
    assert plain.depth_maps is None and collate_frames([plain]).semantic_maps is None
    with pytest.raises(ValueError, match="depth_maps is None for samples"):
        collate_frames([with_maps[0], plain])


def test_missing_or_malformed_pseudo_files_are_named(pseudo_dirs, tmp_path):
    depth_dir, _ = pseudo_dirs
    with pytest.raises(FileNotFoundError, match="ca9a282c9e77460f8360f564131a8af5.npy"):
        pseudo_dataset(tmp_path / "nothing", None)[0]
    bad = tmp_path / "bad" / "scene-0061"
    bad.mkdir(parents=True)
    np.save(bad / "ca9a282c9e77460f8360f564131a8af5.npy", np.zeros((6, 450, 800), np.float16))
    with pytest.raises(ValueError, match=r"bad/scene-0061/ca9a282c9e77460f8360f564131a8af5.npy.*expected \(6, 900, 1600\)"):
        pseudo_dataset(tmp_path / "bad", None)[0]
    with pytest.raises(ValueError, match="dtype"):
        pseudo_dataset(None, depth_dir)[0]  # float depth where int8 labels belong
    with pytest.raises(ValueError, match="per keyframe only"):
        NuScenesFrames(str(ROOT), version="v1.0-mini", split="all", neighbour_source="sweeps",
                       pseudo_depth_dir=str(depth_dir))


def test_pseudo_labels_beyond_max_depth_are_dropped(pseudo_dirs):
    """With every pseudo depth beyond 40 m no depth target and no semantic label is left
    (the same batch within 40 m trains both terms: test_nuscenes_config_trains_on_pseudo_labels)."""
    cfg = apply_overrides(load_config(NUSC_CONFIG), nuscenes_overrides())
    model = fdl.build(cfg.model)
    batch = collate_frames([pseudo_dataset(*pseudo_dirs)[0]])
    assert batch.semantic_maps.ne(255).any() and batch.depth_maps.max() < 40
    batch.depth_maps = batch.depth_maps + 40.0
    with torch.no_grad():
        out = model(batch)
    assert out.terms["loss/depth"] == 0 and out.terms["loss/semantic"] == 0


def test_ddad_tiny_trains_writes_a_checkpoint_and_evaluates(tmp_path, capsys):
    overrides = [
        "train_data.dataset.image_hw=(32,56)", *TINY_MODEL, "model.render_hw=(16,28)",
        "train.steps=2", "train.warmup_steps=1", "train.log_every=1", "train.image_every=2",
        "eval.depth_hw=(16,28)",
    ]
    cfg = apply_overrides(load_config(DDAD_CONFIG), overrides)
    assert cfg.model.depth_source == "lidar" and cfg.model.supervise_current_depth is True
    summary = train(cfg, tmp_path / "work")
    assert summary["steps"] == 2
    assert all(math.isfinite(r["loss"]) and r["loss/depth"] > 0 for r in summary["history"])
    ckpt = resolve_checkpoint(tmp_path / "work")
    assert read_meta(ckpt)["step"] == 2
    res = eval_depth.main(["--py-config", str(DDAD_CONFIG), "--set", *overrides, "--resume-from", str(tmp_path / "work")])
    assert 0 < res["model"]["overall"]["raw"]["all"]["abs_rel"] < 10


def test_nuscenes_config_trains_on_pseudo_labels(pseudo_dirs, tmp_path):
    depth_dir, sem_dir = pseudo_dirs
    cfg = apply_overrides(load_config(NUSC_CONFIG), nuscenes_overrides(
        f"train_data.pseudo_depth_dir='{depth_dir}'", f"train_data.pseudo_semantic_dir='{sem_dir}'",
        "train.steps=1", "train.batch_size=1", "train.warmup_steps=1", "train.ema_decay=None",
    ))
    assert cfg.model.depth_source == "pseudo"
    summary = train(cfg, tmp_path / "work")
    assert all(math.isfinite(r["loss"]) and r["loss/semantic"] > 0 and r["loss/depth"] > 0 for r in summary["history"])
    assert resolve_checkpoint(tmp_path / "work").is_dir()


def write_gt(gt_dir: Path) -> None:
    """A closed 'yard' (walls at +-10 m, a roof at z index 15) so every RayIoU ray is short."""
    for scene, token in SCENES.items():
        sem = np.full((200, 200, 16), 17, np.uint8)
        sem[:, :, 1] = 11
        sem[110:120, 95:105, 2:5] = 4
        sem[75, :, :] = sem[125, :, :] = sem[:, 75, :] = sem[:, 125, :] = 15
        sem[:, :, 15] = 16
        mask = np.zeros_like(sem)
        mask[60:140, 60:140] = 1
        path = gt_dir / scene / token / "labels.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, semantics=sem, mask_lidar=mask, mask_camera=mask)


def test_eval_iou_checkpoint_mode_matches_predictions_mode(tmp_path):
    gt_dir, pred_dir = tmp_path / "gts", tmp_path / "pred"
    write_gt(gt_dir)
    common = ["--occ3d", "--use-mask", "--backend", "torch", "--gt-dir", str(gt_dir)]
    ckpt_json, dir_json = tmp_path / "ckpt.json", tmp_path / "dir.json"
    from_model = eval_iou.main([
        *common, "--py-config", str(NUSC_CONFIG), "--set", *nuscenes_overrides(), "--init", "--sem",
        "--save-occ-path", str(pred_dir), "--json-out", str(ckpt_json),
    ])
    saved = sorted(p.relative_to(pred_dir).parts[:2] for p in pred_dir.glob("*/*/labels.npz"))
    assert saved == sorted(SCENES.items())
    labels = np.load(pred_dir / "scene-0061" / SCENES["scene-0061"] / "labels.npz")["semantics"]
    assert labels.shape == (200, 200, 16) and labels.dtype == np.uint8
    assert (labels != 17).any() and (labels == 17).any() and (labels[:, :, 11:] == 17).all()
    from_dir = eval_iou.main([
        *common, "--pred-dir", str(pred_dir), "--data-root", str(ROOT), "--version", "v1.0-mini",
        "--json-out", str(dir_json),
    ])
    keys = ("mIoU", "mIoU_D", "IoU", "RayIoU", "RayIoU@1", "RayIoU@2", "RayIoU@4", "num_samples")
    assert {k: from_model[k] for k in keys} == {k: from_dir[k] for k in keys}
    assert from_model["num_samples"] == 2 and from_model["IoU"] > 0
    assert json.loads(ckpt_json.read_text())["IoU_per_class"] == json.loads(dir_json.read_text())["IoU_per_class"]
