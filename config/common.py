"""Shared config pieces, imported by the experiment configs."""

from __future__ import annotations

from pathlib import Path

import fiddle as fdl

from selfsup.encoders import TimmFPN
from selfsup.grid import VoxelGrid
from selfsup.training.experiment import TrainSettings

REPO = Path(__file__).resolve().parent.parent
DDAD_SAMPLE_ROOT = str(REPO / "data/samples/ddad/test_scene")
# Self-occlusion masks of the DDAD rig's cameras (scripts/make_ddad_ego_masks.py).
DDAD_EGO_MASKS = str(REPO / "data/samples/ddad/ego_masks")
# Sparse depth triangulated from the bundled DDAD images (SIFT matches between each frame and
# its neighbours, known poses; no LiDAR): `make demo` writes it, or
#   python scripts/generate_pseudo_depth.py --data-root data/samples/ddad/test_scene --scenes scene_02 \
#       --backend triangulation --ego-mask-dir data/samples/ddad/ego_masks --out-dir work_dirs/pseudo_depth/ddad_triangulation
DDAD_TRIANGULATED_DEPTH = str(REPO / "work_dirs/pseudo_depth/ddad_triangulation")
NUSCENES_SAMPLE_ROOT = str(REPO / "data/samples/nuscenes")
NUSCENES_EGO_MASKS = str(REPO / "data/samples/nuscenes_raw/ego_masks")
NUSCENES_ROOT = "data/nuscenes"  # full download; override with --set train_data.data_root=...


def occ3d_grid() -> fdl.Config:
    """Occ3D-nuScenes: [-40, -40, -1, 40, 40, 5.4] m at 0.4 m (200 x 200 x 16)."""
    return fdl.Config(VoxelGrid, lower=(-40.0, -40.0, -1.0), upper=(40.0, 40.0, 5.4), voxel_size=0.4)


def timm_fpn(name: str = "resnet50", channels: int = 256, pretrained_path: str | None = None) -> fdl.Config:
    """timm backbone + FPN at strides 8, 16, 32 (SelfOcc: ResNet-50, 256 channels)."""
    return fdl.Config(TimmFPN, name=name, out_channels=channels, out_indices=(2, 3, 4), pretrained_path=pretrained_path)


def selfocc_optimizer(steps: int, **overrides) -> fdl.Config:
    """SelfOcc's optimiser: AdamW lr 1e-4, wd 0.01, backbone x0.1, grad-norm clip 35,
    1000 warm-up iterations, cosine decay."""
    settings = dict(lr=1e-4, weight_decay=0.01, backbone_lr_mult=0.1, grad_clip=35.0, warmup_steps=1000, steps=steps)
    settings.update(overrides)
    return fdl.Config(TrainSettings, **settings)
