# FlashOcc M1 (BEV + channel-to-height), supervised by Occ3D-nuScenes voxel labels with the
# camera mask, at the published setting:
#   accelerate launch --num_processes 8 train.py --py-config config/flashocc_r50.py \
#       --set train_data.dataset.data_root=ROOT train_data.dataset.gt_dir=ROOT/gts \
#             val_data.data_root=ROOT val_data.gt_dir=ROOT/gts
#   python eval_iou.py --py-config config/flashocc_r50.py --resume-from WORK --occ3d --sem --use-mask
#
# Facts checked in Yzichen/FlashOCC, projects/configs/flashocc/flashocc-r50.py (and
# projects/mmdet3d_plugin/models/dense_heads/bev_occ_head.py):
# - input 256 x 704 from 900 x 1600 (resize 0.44, bottom 256 rows kept: crop_h (0, 0));
#   image augmentation resize (-0.06, 0.11), rotation (-5.4, 5.4) degrees, horizontal flip;
#   BEV augmentation flips x / y with probability 0.5 each, no rotation, no scale;
# - ResNet-50, out_indices (2, 3) (strides 16, 32) + CustomFPN to 256 channels, one output at
#   stride 16; LSSViewTransformer: depth [1, 45) m step 0.5 (88 bins), 64 channels, grid
#   [-40, 40] x [-40, 40] at 0.4 m, z collapsed (one 6.4 m cell), downsample 16, no depth
#   supervision (BEVDetOCC, not BEVDepth);
# - CustomResNet [128, 256, 512] + FPN_LSS to 256; BEVOCCHead2D in_dim 256, out_dim 256,
#   Dz 16, use_predicter, use_mask=True, 18 classes, plain CE (class_balance False);
# - AdamW lr 1e-4, weight decay 1e-2, grad-norm clip 5, linear warm-up 200 iterations from
#   0.001 x lr, step policy at epoch 24 of 24 (i.e. constant lr), MEGVII EMA hook;
#   samples_per_gpu 4 (8 GPUs: 880 iterations per epoch, EMA init_updates 10560 = 12 epochs);
# - published: 32.08 mIoU (with the camera mask, with a detection-pretrained checkpoint).
#
# What differs here, deliberately or because our pieces differ:
# - No detection pretraining (load_from bevdet-r50-cbgs.pth): the backbone starts from random
#   weights unless encoder.pretrained_path points at a local ResNet-50 file.
# - Frustum rays through feature-cell centres ((j + 0.5) 16 pixels) instead of
#   linspace(0, W - 1, w); augmentation folded into K instead of post-rot matrices.
# - EMA at a fixed decay 0.999 instead of the MEGVII ramp; BatchNorm not synchronised.
# - Steps: 24 epochs x ceil(28,130 / (8 GPUs x 4)) = 24 x 880 = 21,120.
# - The timm FPN adds a top-down 3x3 output conv at stride 16 (CustomFPN: the same lateral +
#   top-down sum with one 3x3 output conv).
import fiddle as fdl

from config.common import NUSCENES_ROOT, occ3d_grid
from selfsup.data.augment import AugmentedFrames, BEVAugConfig, ImageAugConfig
from selfsup.data.nuscenes import NuScenesFrames
from selfsup.encoders import TimmFPN
from selfsup.encoders.bev import BEVEncoder2D
from selfsup.models.bev_occ import BEVOcc
from selfsup.objectives.voxel import voxel_ce_objective
from selfsup.representations.lss import DepthBins, LSSLift
from selfsup.representations.voxel_decoders import ChannelToHeightHead
from selfsup.training.experiment import EvalSettings, Experiment, TrainSettings

IMAGE_HW = (256, 704)  # 900 x 1600 scaled by 0.44 -> 396 x 704, top 140 rows cropped
GT_DIR = NUSCENES_ROOT + "/gts"  # Occ3D-nuScenes labels: {scene}/{token}/labels.npz

train_data = fdl.Config(
    AugmentedFrames,
    dataset=fdl.Config(
        NuScenesFrames, data_root=NUSCENES_ROOT, version="v1.0-trainval", split="train", neighbours=(),
        image_hw=IMAGE_HW, load_lidar=False, gt_dir=GT_DIR,
    ),
    image=fdl.Config(ImageAugConfig, resize=(-0.06, 0.11), rotate_deg=(-5.4, 5.4), flip=True, crop_h=(0.0, 0.0)),
    bev=fdl.Config(BEVAugConfig, rotate_deg=(0.0, 0.0), flip_x=0.5, flip_y=0.5),
    grid=occ3d_grid(),
)
val_data = fdl.Config(
    NuScenesFrames, data_root=NUSCENES_ROOT, version="v1.0-trainval", split="val", neighbours=(), image_hw=IMAGE_HW,
    gt_dir=GT_DIR,
)

model = fdl.Config(
    BEVOcc,
    encoder=fdl.Config(TimmFPN, name="resnet50", out_channels=256, out_indices=(3, 4), pretrained_path=None),
    lift=fdl.Config(LSSLift, in_channels=256, out_channels=64, grid=occ3d_grid(),
                    bins=fdl.Config(DepthBins, start=1.0, stop=45.0, step=0.5), collapse_z=True),
    bev_encoder=fdl.Config(BEVEncoder2D, in_channels=64, channels=(128, 256, 512), out_channels=256),
    head=fdl.Config(ChannelToHeightHead, in_channels=256, hidden=256, num_z=16, num_classes=18),
    grid=occ3d_grid(),
    feature_level=0,  # stride 16
    objectives={"voxel": fdl.Partial(voxel_ce_objective, camera_mask=True, class_frequencies=None)},
    loss_weights=dict(voxel=1.0, lss_depth=0.0),
)

config = fdl.Config(
    Experiment,
    name="flashocc_r50",
    model=model,
    train_data=train_data,
    val_data=val_data,
    train=fdl.Config(
        TrainSettings, steps=21_120, batch_size=4, lr=1e-4, weight_decay=0.01, backbone_lr_mult=1.0,
        warmup_steps=200, warmup_start_ratio=0.001, schedule="constant", grad_clip=5.0, ema_decay=0.999,
        log_every=50, image_every=1000, ckpt_every=880,
    ),
    eval=fdl.Config(EvalSettings, depth_hw=IMAGE_HW, min_depth=1e-3, max_depth=80.0),
)
