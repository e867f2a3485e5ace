# BEV occupancy (FlashOcc-style LSS + BEV encoder + channel-to-height head), supervised by the
# voxel ground truth generated from the bundled real DDAD scene (scripts/generate_occ_gt.py,
# shipped under data/samples/occ_gt/ddad), trained on CPU in minutes:
#   accelerate launch train.py --py-config config/bev_tiny.py
#   python eval_iou.py --py-config config/bev_tiny.py --init --occ3d --sem            # initial model
#   python eval_iou.py --py-config config/bev_tiny.py --resume-from work_dirs/bev_tiny --occ3d --sem
# The 3 samples of scene_02 (6 cameras, 96 x 176 pixels) are the training set and, here, also
# the evaluation set: the run shows that the supervised branch fits real-geometry GT.
# Smaller than FlashOcc M1 everywhere except the grid (Occ3D 200 x 200 x 16 at 0.4 m, 88
# depth bins in [1, 45) m): ResNet-18 features at stride 8 (M1: ResNet-50 at stride 16) with
# 32 channels, 16 lifted channels (M1: 64), BEV encoder [16, 32, 64] -> 32 (M1: [128, 256,
# 512] -> 256), head width 32 (M1: 256) starting at p(free) = 0.95; no augmentation (the
# point is fitting); CE on every voxel (no camera mask) with class weights 1 / ln(f + 0.001)
# from this GT's own class counts (scripts/class_frequencies.py --gt-dir
# data/samples/occ_gt/ddad); AdamW lr 3e-3 (M1: 1e-4 over 21k steps).
import fiddle as fdl

from config.common import DDAD_SAMPLE_ROOT, REPO, occ3d_grid
from selfsup.data.cache import CachedDataset
from selfsup.data.ddad import DDADFrames
from selfsup.encoders import TimmFPN
from selfsup.encoders.bev import BEVEncoder2D
from selfsup.models.bev_occ import BEVOcc
from selfsup.objectives.voxel import voxel_ce_objective
from selfsup.representations.lss import DepthBins, LSSLift
from selfsup.representations.voxel_decoders import ChannelToHeightHead
from selfsup.training.experiment import EvalSettings, Experiment, TrainSettings

DDAD_GT_DIR = str(REPO / "data/samples/occ_gt/ddad")
# voxel counts of classes 0-16 and free over the 3 GT files (only 'others', 'car', free occur)
DDAD_CLASS_COUNTS = (75213, 0, 0, 0, 911, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1843876)

data = fdl.Config(
    CachedDataset,
    dataset=fdl.Config(DDADFrames, root=DDAD_SAMPLE_ROOT, scene="scene_02", neighbours=(), image_hw=(96, 176),
                       gt_dir=DDAD_GT_DIR),
)

model = fdl.Config(
    BEVOcc,
    encoder=fdl.Config(TimmFPN, name="resnet18", out_channels=32, out_indices=(2, 3), pretrained_path=None),
    lift=fdl.Config(LSSLift, in_channels=32, out_channels=16, grid=occ3d_grid(),
                    bins=fdl.Config(DepthBins, start=1.0, stop=45.0, step=0.5), collapse_z=True),
    bev_encoder=fdl.Config(BEVEncoder2D, in_channels=16, channels=(16, 32, 64), out_channels=32),
    head=fdl.Config(ChannelToHeightHead, in_channels=32, hidden=32, num_z=16, num_classes=18, free_prior=0.95),
    grid=occ3d_grid(),
    feature_level=0,  # stride 8
    objectives={"voxel": fdl.Partial(voxel_ce_objective, camera_mask=False, class_frequencies=DDAD_CLASS_COUNTS)},
    loss_weights=dict(voxel=1.0),
    train_grid_hw=(4, 8),  # only for the logged render statistics: no rendering objective here
    num_samples=16,
)

config = fdl.Config(
    Experiment,
    name="bev_tiny",
    model=model,
    train_data=data,
    train=fdl.Config(
        TrainSettings, steps=150, batch_size=1, lr=3e-3, weight_decay=0.01, backbone_lr_mult=1.0, warmup_steps=5,
        schedule="cosine", grad_clip=5.0, log_every=10, image_every=50, ckpt_every=50,
    ),
    eval=fdl.Config(EvalSettings, depth_hw=(96, 176), min_depth=1e-3, max_depth=80.0),
)
