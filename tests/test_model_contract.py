"""The model contract over every config (timm style): each file in ``config/`` builds, at a
tiny size on the CPU, a model whose ``forward`` gives a finite loss whose gradient reaches
the encoder backbone, whose log keys belong to the shared vocabulary, whose
``predict_occupancy`` is uint8 ``[B, 200, 200, 16]`` with labels <= 17 and whose
``render_depth`` is finite, >= 0 and of the requested shape. A new config is covered the
day it is added; a new model or dataset class needs its tiny overrides below (the test
fails and says so until it has them). Select with ``pytest -k contract``.

The model and the data are the config's own (only sizes shrink). Where a config trains on
pseudo depth / semantics (``gaussian_nuscenes``), the bundled nuScenes root has no such
files, so the batch gets synthetic maps (10 m everywhere, driveable surface in the lower
half); reading the real files is tested in ``tests/model/test_gaussian_integration.py``.
"""

from __future__ import annotations

import math
from pathlib import Path

import fiddle as fdl
import pytest
import torch

from selfsup.camera import scale_intrinsics
from selfsup.data.cache import CachedDataset
from selfsup.data.ddad import DDADFrames
from selfsup.data.frames import collate_frames
from selfsup.data.nuscenes import NuScenesFrames
from selfsup.model_api import OccupancyModel, OccupancyPrediction, check_log_keys
from selfsup.data.augment import AugmentedFrames
from selfsup.models import GaussianOcc, SDFOcc
from selfsup.models.bev_occ import BEVOcc, default_objectives
from selfsup.training.config import load_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (REPO / "config").glob("*.py") if p.stem not in ("__init__", "common"))
NUSCENES_ROOT = REPO / "data/samples/nuscenes"

TINY_ENCODER = {"encoder.name": "resnet18", "encoder.out_channels": 16, "encoder.pretrained_path": None}
TINY_MODEL: dict[type, dict[str, object]] = {
    SDFOcc: {
        **TINY_ENCODER,
        "representation.feat_channels": 16, "representation.plane_channels": 8, "representation.hidden": 16,
        "representation.resolution": (16, 16, 4), "renderer.num_samples": 8, "rays_hw": (4, 6),
        "hessian_points": 32,
    },
    GaussianOcc: {
        **TINY_ENCODER,
        "decoder.num_gaussians": 64, "decoder.embed_dims": 16, "decoder.feat_channels": 16,
        "decoder.num_blocks": 1, "decoder.num_heads": 2, "decoder.num_points": 2, "decoder.num_inducing": 8,
        "flow.embed_dims": 16, "flow.hidden_dims": 16, "flow.num_layers": 2, "render_hw": (8, 16),
        "backend": "torch",
    },
    BEVOcc: {
        **TINY_ENCODER,
        "lift.in_channels": 16, "lift.out_channels": 4, "bev_encoder.in_channels": 4,
        "bev_encoder.channels": (4, 8, 8), "bev_encoder.out_channels": 4, "head.in_channels": 4, "head.hidden": 4,
        "train_grid_hw": (4, 6), "num_samples": 8,
        # the bundled nuScenes keyframes carry no voxel GT: LiDAR depth rendering keeps a
        # loss term (the voxel term counts where the sample has GT)
        "objectives": default_objectives(), "loss_weights": {"voxel": 1.0, "depth": 1.0},
    },
}  # fmt: skip
TINY_DATA: dict[type, dict[str, object]] = {
    DDADFrames: {"image_hw": (32, 56), "cameras": ("CAMERA_01", "CAMERA_05"), "pseudo_depth_dir": None,
                 "pseudo_semantic_dir": None},  # generated labels: tests/pseudo/test_training.py
    NuScenesFrames: {
        "data_root": str(NUSCENES_ROOT), "version": "v1.0-mini", "split": "all", "image_hw": (32, 64),
        "neighbours": (-1, 1), "load_lidar": True, "pseudo_depth_dir": None, "pseudo_semantic_dir": None,
        "gt_dir": None,  # the bundled root has no gts/ folder
    },
}  # fmt: skip
RENDER_HW = (8, 12)


def _set(cfg: fdl.Config, path: str, value) -> None:
    *parents, name = path.split(".")
    for p in parents:
        cfg = getattr(cfg, p)
    setattr(cfg, name, value)


def _tiny(cfg_path: Path):
    cfg = load_config(cfg_path)
    model_cls = fdl.get_callable(cfg.model)
    if model_cls not in TINY_MODEL:
        pytest.fail(f"{cfg_path.name}: add tiny overrides for {model_cls.__name__} to TINY_MODEL in {__file__}")
    for path, value in TINY_MODEL[model_cls].items():
        _set(cfg.model, path, value)
    data = cfg.train_data
    while fdl.get_callable(data) in (CachedDataset, AugmentedFrames):
        data = data.dataset
    data_cls = fdl.get_callable(data)
    if data_cls not in TINY_DATA:
        pytest.fail(f"{cfg_path.name}: add tiny overrides for {data_cls.__name__} to TINY_DATA in {__file__}")
    for path, value in TINY_DATA[data_cls].items():
        _set(data, path, value)
    return cfg, data


@pytest.mark.parametrize("cfg_path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_model_contract(cfg_path: Path):
    cfg, data_cfg = _tiny(cfg_path)
    torch.manual_seed(0)
    model = fdl.build(cfg.model)
    assert isinstance(model, OccupancyModel)
    batch = collate_frames([fdl.build(data_cfg)[0]])
    pseudo_source = getattr(model, "depth_source", None) == "pseudo"
    keypoints = model.loss_weights.get("keypoint_depth", 0.0) > 0  # sparse maps (triangulated keypoints)
    if (pseudo_source or keypoints) and batch.depth_maps is None:
        B, T, V, _, H, W = batch.images.shape
        batch.depth_maps = torch.full((B, T, V, H, W), 10.0)
        labels = torch.full((B, T, V, H, W), 255, dtype=torch.int16)
        labels[..., H // 2 :, :] = 11
        batch.semantic_maps = labels

    model.train()
    out = model(batch)
    assert out.loss.dim() == 0 and math.isfinite(float(out.loss.detach())), cfg_path.name
    check_log_keys(out.terms)
    assert any(k.startswith("loss/") for k in out.terms)
    assert all(math.isfinite(float(v)) for v in out.terms.values()), out.terms
    for name, image in out.images.items():
        assert image.dim() == 3 and image.shape[0] == 3 and 0 <= image.min() and image.max() <= 1, name
    out.loss.backward()
    backbone = [p for n, p in model.named_parameters() if n.startswith("encoder.backbone.")]
    assert backbone, "no encoder.backbone parameters"
    if any(p.requires_grad for p in backbone):  # a deliberately frozen encoder (SDFOcc train_encoder=False) has none
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in backbone), "no gradient reaches the backbone"
    else:
        trainable = [p for p in model.parameters() if p.requires_grad]
        assert trainable and any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable), "no gradient at all"

    model.eval()
    with torch.no_grad():
        pred = model.predict_occupancy(model.encode(batch))
    assert isinstance(pred, OccupancyPrediction)
    assert pred.labels.dtype == torch.uint8 and pred.labels.shape == (1, 200, 200, 16)
    assert int(pred.labels.max()) <= 17
    if pred.logits is not None:
        assert pred.logits.shape[:4] == (1, 200, 200, 16)

    h, w = RENDER_HW
    K = scale_intrinsics(batch.K[:, 0], tuple(batch.images.shape[-2:]), (h, w))
    depth = model.render_depth(batch, K, batch.T_ego_cam[:, 0], h, w)
    V = batch.images.shape[2]
    assert depth.shape == (1, V, h, w)
    assert torch.isfinite(depth).all() and (depth >= 0).all()
