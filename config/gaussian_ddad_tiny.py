# 3D Gaussians + temporal flow (GaussianFlowOcc style) on the bundled real DDAD scene as an
# honest NOVEL-VIEW test, small enough to train on a CPU in minutes. scene_02 has 3 samples
# 1.0 s apart (the ego drives ~1.3 m per second). Frame 1 (the middle one) is HELD OUT: its
# images and LiDAR are never loaded for training (exclude_frames). Training samples are
# frames 0 and 2, each with the other as its neighbour (a seeded random draw of 1 valid frame
# in -2..2); each frame's Gaussians are rendered into its own and the other frame's cameras
# and supervised by the LiDAR of those two frames (6 cameras at 64 x 112, 512 Gaussians
# rendered at 32 x 56). With temporal attention the sample of frame 2 attends to frame 0's
# Gaussians (no gradient), as GaussianFlowOcc does with its past frames.
# Scoring (val_data): the Gaussians of frame 0 and of frame 2 (decoded from their images
# only) are rendered at frame 1's cameras and compared with frame 1's LiDAR:
#   accelerate launch train.py --py-config config/gaussian_ddad_tiny.py --work-dir WORK
#   python eval_novel_depth.py --py-config config/gaussian_ddad_tiny.py --resume-from WORK --baselines
# which prints the model beside the copy-the-training-LiDAR baseline (frames 0 and 2's LiDAR
# z-buffered into frame 1's cameras) and the constant baseline (median training LiDAR depth).
# eval_depth.py on this config scores frames 0 and 2 themselves, i.e. fitting, not novel views.
# No semantic labels are bundled, so only depth trains the model and the classes in its voxel
# output are untrained (only occupied vs free means anything).
import fiddle as fdl

from config.common import DDAD_SAMPLE_ROOT, occ3d_grid, timm_fpn
from selfsup.data.cache import CachedDataset
from selfsup.data.ddad import DDADFrames
from selfsup.data.neighbours import RandomNeighbours, TargetFrames
from selfsup.models.gaussian_occ import GaussianOcc
from selfsup.representations.gaussians import GaussianDecoder, GaussianFlow
from selfsup.training.experiment import EvalSettings, Experiment, TrainSettings

HELD_OUT = 1  # the middle sample of scene_02: never seen in training, scored as novel views
data = fdl.Config(
    CachedDataset,
    dataset=fdl.Config(
        DDADFrames, root=DDAD_SAMPLE_ROOT, scene="scene_02", image_hw=(64, 112), current_frames=(0, 2),
        exclude_frames=(HELD_OUT,), neighbours=fdl.Config(RandomNeighbours, window=(-2, 2), num=1, seed=0),
    ),
)
val_data = fdl.Config(
    DDADFrames, root=DDAD_SAMPLE_ROOT, scene="scene_02", image_hw=(64, 112), current_frames=(0, 2),
    neighbours=fdl.Config(TargetFrames, frames=(HELD_OUT,)),
)

model = fdl.Config(
    GaussianOcc,
    encoder=timm_fpn("resnet18", channels=64),
    decoder=fdl.Config(
        GaussianDecoder, num_gaussians=512, embed_dims=64, feat_channels=64, num_blocks=2, num_heads=4,
        num_points=4, num_inducing=32, scale_range=(0.2, 1.5), grid=occ3d_grid(),  # scale: std-dev in metres
    ),
    flow=fdl.Config(GaussianFlow, embed_dims=64, hidden_dims=64),
    loss_weights=dict(depth=0.05, semantic=2.0, rgb=0.0, flow_reg=0.01),  # GaussianFlowOcc weights
    depth_source="lidar",
    supervise_current_depth=True,  # the training frames' own LiDAR too (frame 1 is the held-out one)
    render_hw=(32, 56),
    max_depth=40.0,  # metres; GaussianFlowOcc drops targets beyond 40 m
    grid=occ3d_grid(),
)

config = fdl.Config(
    Experiment,
    name="gaussian_ddad_tiny",
    model=model,
    train_data=data,
    val_data=val_data,
    train=fdl.Config(
        TrainSettings, steps=300, lr=2e-3, weight_decay=0.01, backbone_lr_mult=0.1, warmup_steps=10,
        grad_clip=5.0, log_every=10, image_every=100, ckpt_every=100,
    ),
    eval=fdl.Config(EvalSettings, depth_hw=(64, 112), min_depth=1e-3, max_depth=80.0),  # the input size
)
