# BEVDet-Occ 3D (voxel volume + 3D encoder + 3D conv head), supervised by Occ3D-nuScenes voxel
# labels with the camera mask, at the published setting:
#   accelerate launch --num_processes 8 train.py --py-config config/bevdet_occ_r50_3d.py \
#       --set train_data.dataset.data_root=ROOT train_data.dataset.gt_dir=ROOT/gts \
#             val_data.data_root=ROOT val_data.gt_dir=ROOT/gts
#   python eval_iou.py --py-config config/bevdet_occ_r50_3d.py --resume-from WORK --occ3d --sem --use-mask
#
# Facts checked in Yzichen/FlashOCC, projects/configs/bevdet_occ/bevdet-occ-r50.py:
# - data, augmentation, ResNet-50 + CustomFPN (256 at stride 16) and optimiser as
#   config/flashocc_r50.py (AdamW 1e-4, wd 1e-2, clip 5, 200 warm-up iterations, 24 epochs, EMA);
# - LSSViewTransformer with 32 channels and z kept: grid z [-1, 5.4] at 0.4 m (16 cells);
# - CustomResNet3D: numC_input 32, num_layer [1, 2, 4], channels [32, 64, 128], strides
#   [1, 2, 2]; LSSFPN3D: 224 -> 32; BEVOCCHead3D in_dim 32, out_dim 32, use_mask, 18 classes;
# - published: 31.64 mIoU (with the camera mask, with a detection-pretrained checkpoint).
#
# What differs here: as config/flashocc_r50.py (no detection pretraining, cell-centre
# frustum rays, fixed EMA decay, augmentation folded into K), and the 4D-stereo variants
# (bevdet-occ-r50-4d-stereo*.py: temporal stereo depth and a 0.05 depth loss) are not
# reproduced: stereo depth is not implemented; temporal fusion (BEVDet4D concatenation,
# selfsup.representations.temporal) is available through BEVOcc(temporal=..., history_frames=...).
import copy

import fiddle as fdl

from config.common import occ3d_grid
from config.flashocc_r50 import config as flashocc
from selfsup.encoders.bev import VoxelEncoder3D
from selfsup.representations.lss import DepthBins, LSSLift
from selfsup.representations.voxel_decoders import Conv3DHead

config = copy.deepcopy(flashocc)  # never edit the imported config in place
config.name = "bevdet_occ_r50_3d"
config.model.lift = fdl.Config(LSSLift, in_channels=256, out_channels=32, grid=occ3d_grid(),
                               bins=fdl.Config(DepthBins, start=1.0, stop=45.0, step=0.5), collapse_z=False)
config.model.bev_encoder = fdl.Config(VoxelEncoder3D, in_channels=32, channels=(32, 64, 128), out_channels=32,
                                      num_layers=(1, 2, 4), strides=(1, 2, 2))
config.model.head = fdl.Config(Conv3DHead, in_channels=32, hidden=32, num_classes=18)
