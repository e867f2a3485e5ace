# SDF tri-plane, self-supervised, full nuScenes at SelfOcc's published setting:
# ResNet-50 + FPN, TPV of 257 x 257 x 25 over the Occ3D box, 256 NeuS samples per ray,
# a jittered 48 x 100 ray grid per camera, AdamW 1e-4, 12 epochs (28,130 train keyframes at
# 8 GPUs x batch 1 ~ 42k steps). Point it at a download with
#   --set train_data.data_root=ROOT val_data.data_root=ROOT
import fiddle as fdl

from config.common import NUSCENES_ROOT, occ3d_grid, selfocc_optimizer, timm_fpn
from render.volume import NeuSRenderer
from selfsup.data.nuscenes import NuScenesFrames
from selfsup.models.sdf_occ import SDFOcc
from selfsup.representations.triplane_sdf import TriplaneSDF
from selfsup.training.experiment import EvalSettings, Experiment

train_data = fdl.Config(
    NuScenesFrames, data_root=NUSCENES_ROOT, version="v1.0-trainval", split="train", neighbours=(-1, 1),
    image_hw=(450, 800),
)
val_data = fdl.Config(
    NuScenesFrames, data_root=NUSCENES_ROOT, version="v1.0-trainval", split="val", neighbours=(-1, 1),
    image_hw=(450, 800),
)

config = fdl.Config(
    Experiment,
    name="sdf_nuscenes",
    model=fdl.Config(
        SDFOcc,
        encoder=timm_fpn("resnet50", channels=256),
        representation=fdl.Config(
            TriplaneSDF, grid=occ3d_grid(), resolution=(257, 257, 25), feat_channels=256, plane_channels=128,
            hidden=128, num_classes=17, rgb=True,
        ),
        renderer=fdl.Config(NeuSRenderer, num_samples=256, init_variance=0.1, perturb=True),
        rays_hw=(48, 100),
        near=0.5,
        far=60.0,
        loss_weights=dict(photometric=1.0, rgb=0.1, eikonal=0.1, hessian=0.01, depth=0.0, semantic=0.0),
    ),
    train_data=train_data,
    val_data=val_data,
    train=selfocc_optimizer(steps=42_000, ema_decay=None, log_every=50, image_every=1000, ckpt_every=2000),
    eval=fdl.Config(EvalSettings, depth_hw=(450, 800)),
)
