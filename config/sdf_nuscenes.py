# SDF tri-plane, self-supervised, full nuScenes at SelfOcc's published occupancy setting
# (huang-yh/SelfOcc config/nuscenes/nuscenes_occ.py at 565368f, read for its numbers).
# Point it at a download with
#   --set train_data.data_root=ROOT val_data.data_root=ROOT
#
# As SelfOcc:
# - ResNet-50 + FPN with 96 output channels; TPV of 257 x 257 x 25 cells with 96 channels over
#   the Occ3D box [-40, -40, -1, 40, 40, 5.4] m; MLP decoder of 2 hidden layers;
# - NeuS rendering, 256 uniform perturbed samples per ray, a 48 x 100 ray grid per camera
#   drawn as one randomly scaled and offset regular sub-grid per step ("cellular");
# - the field decoded on the 0.4 m grid (200 x 200 x 16) with eikonal / second-order terms on
#   it; NeuS cosine anneal ratio ramped 0 -> 1 over 5000 iterations;
# - losses: reprojection into the previous and next images 1.0 (0.85 SSIM + 0.15 L1, the two
#   sources AVERAGED, auto-masking), rendered RGB 0.1, eikonal 0.1, second-order 0.01,
#   rendered semantics 0.1 (when 2D pseudo labels are given);
# - AdamW lr 1e-4, weight decay 0.01, backbone lr x 0.1, 1000 warm-up iterations, 12 epochs
#   (28,130 train keyframes at 8 GPUs x batch 1 = 3516 iterations per epoch, 42,192 steps);
# - depth evaluation at 450 x 800 against LiDAR points beyond 1 m, predictions never 0.
#
# Deviations that remain (each is a capability this framework does not have yet, or a choice):
# - image lifting: a parameter-free average of projected image features per TPV cell plus a
#   convolution per plane, not TPVFormer's 4 layers of deformable cross-view attention
#   (6 heads, 48 / 48 / 8 cross-attention points);
# - FPN levels at strides 8, 16, 32 (SelfOcc: 4 levels from stride 4 with an extra conv);
# - images: 900 x 1600 resized to 450 x 800 (SelfOcc crops to 768 x 1600 and scales by 0.5
#   to 384 x 800);
# - rendering viewpoint: always the current frame's cameras (SelfOcc renders from a
#   neighbouring frame up to 30 m away 2/3 of the time, cur_prob 1/3);
# - photometric sources: the adjacent 12 Hz sweeps (neighbour_source="sweeps", offsets -1 / +1,
#   about 0.4 m apart at 5 m/s); SelfOcc draws the sweep whose distance is closest to a
#   Gaussian draw around 0.5 m (sigma 0.5);
# - lr schedule: cosine decay; SelfOcc decays by 0.1 once after 9 epochs (multi-step) and
#   warms up from 1e-6;
# - NeuS sharpness: one learnable s = exp(10 v) from v = 0.1; SelfOcc ramps its variance
#   parameter between beta_init 0.1 and beta_max 0.195 over 11 epochs;
# - colour head: RGB straight from the MLP (SelfOcc: 24 colour feature channels, SH degree 0).
import fiddle as fdl

from config.common import NUSCENES_ROOT, occ3d_grid, selfocc_optimizer
from render.volume import NeuSRenderer
from selfsup.data.nuscenes import NuScenesFrames
from selfsup.encoders import TimmFPN
from selfsup.models.sdf_occ import SDFOcc
from selfsup.representations.triplane_sdf import TriplaneSDF
from selfsup.training.experiment import EvalSettings, Experiment

STEPS = 12 * 3516  # 12 epochs of 28,130 keyframes at 8 GPUs x batch 1

train_data = fdl.Config(
    NuScenesFrames, data_root=NUSCENES_ROOT, version="v1.0-trainval", split="train", neighbours=(-1, 1),
    neighbour_source="sweeps", image_hw=(450, 800),
)
val_data = fdl.Config(
    NuScenesFrames, data_root=NUSCENES_ROOT, version="v1.0-trainval", split="val", neighbours=(-1, 1),
    neighbour_source="sweeps", image_hw=(450, 800),
)

config = fdl.Config(
    Experiment,
    name="sdf_nuscenes",
    model=fdl.Config(
        SDFOcc,
        encoder=fdl.Config(TimmFPN, name="resnet50", out_channels=96, out_indices=(2, 3, 4)),
        representation=fdl.Config(
            TriplaneSDF, grid=occ3d_grid(), resolution=(257, 257, 25), feat_channels=96, plane_channels=96,
            hidden=96, num_layers=2, num_classes=17, rgb=True,
        ),
        renderer=fdl.Config(NeuSRenderer, num_samples=256, init_variance=0.1, perturb=True),
        rays_hw=(48, 100),
        ray_sampling="strided",
        field_resolution=(200, 200, 16),
        cos_anneal_steps=5000,
        photometric_reduction="mean",
        near=0.5,
        far=60.0,
        loss_weights=dict(photometric=1.0, rgb=0.1, eikonal=0.1, hessian=0.01, depth=0.0, semantic=0.1),
    ),
    train_data=train_data,
    val_data=val_data,
    train=selfocc_optimizer(steps=STEPS, ema_decay=None, log_every=50, image_every=1000, ckpt_every=2000),
    eval=fdl.Config(EvalSettings, depth_hw=(450, 800), min_depth=1.0, max_depth=80.0),
)
