# 3D Gaussians + temporal flow (GaussianFlowOcc style) on the bundled real DDAD scene, small
# enough to train on a CPU in minutes: the middle frame of scene_02 with its previous and
# next frames, 6 cameras at 64 x 112 (1216 x 1936 scaled by 112 / 1936, top rows cropped),
# 512 Gaussians rendered at 32 x 56 per camera; 300 steps take about 3 minutes on 2 cores.
# Depth supervision: the LiDAR of the *neighbour* frames only (supervise_current_depth=False),
# projected into their cameras; so eval_depth.py, which scores the current frame's rendered
# depth against the current frame's LiDAR, measures how well the Gaussians explain views
# they were not fitted to. No semantic labels are bundled, so only depth trains the model
# and the classes in its voxel output are untrained (only occupied vs free means anything).
#   accelerate launch train.py --py-config config/gaussian_ddad_tiny.py --work-dir WORK
#   python eval_depth.py --py-config config/gaussian_ddad_tiny.py --resume-from WORK
import fiddle as fdl

from config.common import DDAD_SAMPLE_ROOT, occ3d_grid, timm_fpn
from selfsup.data.cache import CachedDataset
from selfsup.data.ddad import DDADFrames
from selfsup.models.gaussian_occ import GaussianOcc
from selfsup.representations.gaussians import GaussianDecoder, GaussianFlow
from selfsup.training.experiment import EvalSettings, Experiment, TrainSettings

data = fdl.Config(
    CachedDataset,
    dataset=fdl.Config(DDADFrames, root=DDAD_SAMPLE_ROOT, scene="scene_02", neighbours=(-1, 1), image_hw=(64, 112)),
)

model = fdl.Config(
    GaussianOcc,
    encoder=timm_fpn("resnet18", channels=64),
    decoder=fdl.Config(
        GaussianDecoder, num_gaussians=512, embed_dims=64, feat_channels=64, num_blocks=2, num_heads=4,
        num_inducing=32, scale_range=(0.2, 1.5), grid=occ3d_grid(),  # scale: std-dev in metres
    ),
    flow=fdl.Config(GaussianFlow, embed_dims=64, hidden_dims=64),
    loss_weights=dict(depth=0.05, semantic=2.0, rgb=0.0, flow_reg=0.01),  # GaussianFlowOcc weights
    depth_source="lidar",
    supervise_current_depth=False,
    render_hw=(32, 56),
    max_depth=40.0,  # metres; GaussianFlowOcc drops targets beyond 40 m
    grid=occ3d_grid(),
)

config = fdl.Config(
    Experiment,
    name="gaussian_ddad_tiny",
    model=model,
    train_data=data,
    train=fdl.Config(
        TrainSettings, steps=300, lr=2e-3, weight_decay=0.01, backbone_lr_mult=0.1, warmup_steps=10,
        grad_clip=5.0, log_every=10, image_every=100, ckpt_every=100,
    ),
    eval=fdl.Config(EvalSettings, depth_hw=(64, 112), min_depth=1e-3, max_depth=80.0),  # the input size
)
