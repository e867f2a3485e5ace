# SDF tri-plane (SelfOcc style), self-supervised only, on the bundled real DDAD scene.
# `make demo` runs config/sdf_ddad_tiny_keypoints.py: this config with a taller field box and
# depth from keypoints triangulated in the images (its comments give the numbers); this one is
# the photometric-only run that every measurement below refers to.
# Trains on CPU in minutes: the middle frame of scene_02 with its previous
# and next frames (1.0 s apart, about 1.3 m of ego motion each way) as photometric sources,
# 6 cameras at 96 x 176 pixels (1216 x 1936 scaled by 1/11, top rows cropped).
# No LiDAR or other depth enters the loss; the LiDAR is used only by the evaluation.
# The recording car's own body (painted and glossy panels, roof: 8-28 % of five of the six images,
# none of CAMERA_01) is kept out of the loss by hand-traced masks (data/samples/ddad/ego_masks,
# scripts/make_ddad_ego_masks.py), as self-supervised DDAD methods do. The panels are glossy
# and mirror the moving scene, so auto-masking does not remove them and the loss fitted
# geometry to the reflections: with the masks the median-scaled AbsRel went from 0.229 / 0.222
# / 0.224 to 0.207 / 0.207 / 0.209 (seeds 0 / 1 / 2, one thread each), CAMERA_07's from 0.267
# to 0.174. Also treating samples that land on the car in a *source* image as unseen scored
# 0.210 / 0.218 (seeds 0 / 1) and is not done. Seeds 3 and 4 with the masks: 0.219 / 0.214
# (five-seed mean 0.211; fresh-clone `make demo`, two threads: 0.210). Tried with the masks,
# seed 0, not kept: 256 samples 0.224; background "horizon" 0.216, "far" 0.225; no hessian
# 0.215; train_frames "random" 0.223; sharpness_ramp (0.5, 20, 400) from init_variance -0.07
# 0.236; the photometric depth search as a target (weight 0.05) 0.220, IoU 15.7 %; with the
# source-side masking: (160, 160, 8) grid 0.220, 1500 steps 0.218, 256 samples 0.208.
# Later with the masks, seed 0 unless noted (median-scaled, raw in brackets; this config 0.207 (0.190)), none
# kept: free-space weight 0: 0.209 (0.196); free space only on rays whose in-box opacity is >= 0.5
# (model.free_space_min_opacity): 0.222; the distortion loss (loss_weights.distortion, log distance,
# background included) 0.01: 0.222 (0.187), 0.1: 0.232; (160, 160, 8) grid 0.212, seed 1 0.229 (this
# config 0.207); rays_hw (20, 40): 0.208 (0.178); photometric_patch=3 alone 0.250 (0.188), through each
# sample's tangent plane (photometric_patch_warp="plane", 2.5x the step time) 0.252 (0.186); the patch
# term beside the ray-grid one (loss_weights.patch_photometric, 1.6x the step time) 0.5: 0.212 (0.173),
# seed 1 0.204 (0.170; this config 0.207 (0.193)), seed 2 0.230 (0.186; this config 0.209 (0.182)): mean
# 0.215 against 0.208; 0.25: 0.208 (0.172), 1.0: 0.211 (0.175), plane-warped 0.218 (0.174), with background
# "horizon" 0.210 (0.166; 0.61x), seed 1 0.218 (0.171), and "far" 0.215 (0.169; 0.58x). On seed 0 the
# patch term lowers raw AbsRel on every camera but CAMERA_06, yet
# CAMERA_08's median scale goes to 1.3-1.5 (its LiDAR median, 24.6 m, sits in a gap between near
# ground and far trees), which undoes it. The step-800 checkpoint scores as step 1000 (0.2066).
# Latest, same protocol (this config: 0.207 / 0.207 / 0.209 / 0.219 / 0.214 for seeds 0-4, mean 0.211, raw mean
# 0.189), none kept: a field box reaching 13.4 m high instead of the Occ3D box's 5.4 m (config/sdf_ddad_tiny_tall.py: representation.field_box =
# BoxWarp with the Occ3D box inside, upper z 13.4 and shell_cells ((0, 0), (0, 0), (0, 8)): 8 cells of 1 m above it;
# model.field_resolution (100, 100, 24); occupancy still read on the Occ3D grid; 1.33x the step time), so that tree
# crowns above 5.4 m get a surface instead of stopping at the box's top: 0.203 / 0.232 / 0.208 / 0.202 / 0.210 for
# seeds 0-4, the same mean 0.211 (raw 0.181 / 0.203 / 0.194 / 0.178 / 0.184, mean 0.188). It draws the crowns at
# their distance (seed 0: CAMERA_09 0.252 -> 0.196), but a crown left transparent now stops 40-60 m away instead of
# at 5.4 m high (seed 1: CAMERA_07's central tree, 0.162 -> 0.269), and CAMERA_08's median scale reaches 1.26-1.30
# (raw 0.19-0.20, scaled 0.29-0.32). Its ratio to its own initial model (0.321: the top exits lie further) is
# 0.63-0.72. Variants, seed 0 unless noted: 4 shell cells of 2 m 0.205; free-space term off 0.220, seed 1 0.204;
# background "horizon" 0.203 (raw 0.178), seed 1 0.224; TPV resolution (80, 80, 12) 0.225; also +-60 m in x and y
# (8 shell cells of 2.5 m, 2x the step time) 0.208 (raw 0.176, 40-80 m band 0.280 against 0.31-0.33). On this
# config: rgb weight 0 0.231; init_variance 0.05 0.230; lr 2e-2 0.223; prior weight 1e-4 0.210 (IoU 19.7 %), 0
# 0.216 (IoU 16.8 %). The depth maps of its seeds 0-3 average to 0.199 (seeds 0 and 1: 0.202; 2 and 3: 0.208): most
# of the error is shared by the runs.
# Measured after that, seeds 0 / 1 (this config: 0.207 / 0.207, raw 0.190 / 0.193), none kept: coarse-to-fine
# image blur for the objectives (model.image_blur=(4.0, 500): Gaussian sigma 4 px shrinking to 0 at step 500)
# 0.235 / 0.245, the 0-10 m band 0.27-0.30; coarse-to-fine hash levels (model.hash_schedule=(2, 60), Neuralangelo)
# 0.222 / 0.204; rgb weight 0.3: 0.221 / 0.212, 0.05: 0.237 / 0.231 (0: 0.231); plane embeddings initialised at
# std 0.01 instead of 0.1 (representation.embed_std) 0.211 / 0.214 (raw 0.184 / 0.185); 2^18 hash entries per
# level 0.212 / 0.213 (raw 0.185 / 0.186); seed 0 only: MLP width 64 0.214 (raw 0.185), 32 plane channels 0.224;
# config/sdf_ddad_tiny_tall.py with background "far", seeds 0-4: 0.207 / 0.212 / 0.212 / 0.202 / 0.212 (mean 0.209,
# raw 0.182; this config's: 0.211, raw 0.189), 0.54-0.57x its own initial model (about 0.37).
# No change measured on both seeds 0 and 1 has beaten this config on both (several have better raw AbsRel); those
# two seeds helped choose it, its seeds 3 and 4 (0.219, 0.214) did not. CAMERA_08 decides most of it: on seed 0 with
# embed_std 0.01 its median scale is 1.29 (raw 0.204, median-scaled 0.334; this config: 1.10, 0.231 -> 0.256).
# Its LiDAR depths are sparse between 20 and 34 m (the 45-60 % quantiles), where the median falls, so the
# median scale follows a few hundred points: there, a tenth of its points beyond 35 m (the tree line, half of them
# above the horizon) are rendered nearer than 18 m (this config: 22 m), and the rendered median drops from 22.4 m
# to 19.1 m. Only 7 % of its points leave through the box's top.
# The comparisons below predate the masks.
#
# Departures from SelfOcc's nuScenes setting (config/sdf_nuscenes.py lists that one's own):
# - one scene, one scored frame, trained on itself (test-time optimisation), 96 x 176 images;
# - ResNet-18 + FPN (32 channels) with random weights, FROZEN (train_encoder=False: no
#   pretrained encoder exists offline, and training a random one for a few hundred steps did
#   not pay for its backward pass); the TPV planes (80 x 80 x 8 cells, 16 channels, with a
#   learned per-cell embedding) and a 2 x 32 MLP decoder learn the scene;
# - field decoded on a 100 x 100 x 16 grid (0.8 x 0.8 x 0.4 m; SelfOcc: the 0.4 m grid),
#   128 samples per ray (SelfOcc 256), a 16 x 32 jittered ray grid per camera (SelfOcc 48 x 100
#   cellular): 0.27 s per step on 2 quiet CPU cores (scripts/benchmark.py sdf);
# - a multi-resolution hash grid (8 levels, 2^16 entries per level, 2 features; Instant-NGP,
#   read at the decode grid's vertices) feeds the MLP beside the TPV features: not in
#   SelfOcc; it was the one change that improved depth (600 steps: median AbsRel 0.254 -> 0.212);
# - a weak pull of the decoded SDF grid towards the prior ("prior" 3e-4, mean squared residual in
#   m^2; not in SelfOcc): without it the far ground rises and 26 % of the observed voxels are
#   occupied (IoU 16 %, median AbsRel 0.204); 3e-4: 10.5 %, IoU 21.4 %, 0.211; 1e-3: 4.5 %,
#   IoU 18.6 %, 0.235 (1000 steps each);
# - initial NeuS sharpness s = exp(10 v) = 2.7 / m (v = 0.1, as SelfOcc), learned upwards;
# - SDF prior: the ground plane z = 0 (SelfOcc has no analytic prior); the decoder output is
#   scaled by sdf_scale = 10 m so surfaces move by metres; leftover transmittance stops at the
#   ray's exit from the Occ3D box with a learned background colour (background="box_exit"),
#   so sky and distant structure need no surface inside the field (SelfOcc renders none);
# - a free-space term (weight 0.1; not in SelfOcc): samples a ray passes before it stops must
#   have positive SDF, which empties the air between the cameras and the surfaces;
# - 1000 steps of AdamW at lr 1e-2 (SelfOcc 1e-4), a 5-step warm-up, cosine decay; photometric
#   minimum over the two sources (monodepth2; SelfOcc's nuScenes configs average them); no
#   cosine anneal; 1400 steps measured no better than 1000 (0.205 vs 0.204 without the pull);
# - tried and not kept (1000 steps, one seed): log-spaced samples (model.renderer.spacing="log"):
#   median AbsRel 0.213 (0-10 m band 0.160 vs 0.141); 192 x 352 training images: 0.241 median-
#   scaled, 0.195 raw, IoU 24.2 %;
# - tried and not kept, later (1000 steps, one thread; median-scaled / raw AbsRel, seeds 0 and 1
#   where two are given; this config scored 0.211 / 0.198, 0.213 / 0.197 and 0.218 / 0.187 in the
#   same way, and 0.229 / 0.213 after the speed-ups that changed its float rounding): the two
#   cameras beside each camera as photometric sources, model.spatial_sources=2: 0.228 / 0.195;
#   with model.background="horizon": 0.214 / 0.172 and 0.236 / 0.189 (raw better, median not);
#   "horizon" alone 0.218 / 0.179; "learned": 0.222 / 0.187; rays from a random frame each step
#   (model.train_frames="random") 0.221 / 0.192; a field box to +-80 m and 13.4 m
#   (representation.field_box, render.grid.BoxWarp) 0.270 / 0.237 (rays see through near
#   objects to far surfaces); 4 x 4 pixel patches (model.ray_sampling="patch") 0.246 / 0.229 and
#   0.253 / 0.205; photometric "mean" 0.234 and 0.249; 192 x 352 images 0.228 and 0.227; EMA 0.99
#   0.229 and 0.221; lr 5e-3 0.224; 4x rays for 500 steps 0.215. Averaging the depth maps of
#   two seeds' runs gives 0.201 (four runs: 0.193; runs of the code of that time);
# - tried and not kept, latest (same protocol, seeds 0 and 1): every sample matched by its own
#   3 x 3 patch (model.photometric_patch=3): raw AbsRel better in every run (0.188 / 0.188;
#   10-20 m band 0.14 / 0.12 raw) but median-scaled worse (0.250 / 0.256: far points come out
#   too near, and CAMERA_08's median scale reaches 1.4), 0.58 vs 0.42 s per step on one thread;
#   with model.background="far" (side and top exits stop at `far`) 0.239 / 0.259 (raw 0.187 /
#   0.182), dilation 2: 0.287 / 0.239; "far" alone 0.249 / 0.213 (raw 0.243 / 0.184; 40-80 m
#   band 0.24 / 0.27 instead of about 0.32); the field decoded on SelfOcc's 0.4 m grid
#   (model.field_resolution=(200,200,16)): 0.210 / 0.221 (raw 0.185 / 0.206) against this
#   config's 0.229 / 0.222 / 0.224 for seeds 0 / 1 / 2, at 1.7 s instead of 0.42 s per step on
#   one thread (500 steps of it: 0.241);
# - tried and not kept, last (same protocol; this config: 0.229 / 0.222, raw 0.212 / 0.202):
#   the rendered depth as the median of the weights (model.depth_estimator="median", no
#   retraining) 0.236 / 0.229; hash levels up to 81 cells (representation.hash_levels=5)
#   0.223 / 0.231; hessian weight 0.05: 0.235 / 0.312; no hessian (0.0): 0.223 / 0.222 (raw
#   0.193 / 0.191, IoU 20.1 / 20.4 % vs 21.8 / 22.4 %); rays from all three frames every step
#   (model.train_frames="all", twice the step time) 0.220 / 0.228; "horizon" 0.224 / 0.230
#   (raw 0.189 / 0.189); "horizon" with no hessian 0.218 / 0.224 (raw 0.183 / 0.186); "horizon" with
#   photometric_patch=3 0.243 (seed 0); "horizon", no hessian and a (160, 160, 8) decode grid
#   (0.5 x 0.5 x 0.8 m cells, 1.17x the step time) 0.211 / 0.223 / 0.217 for seeds 0 / 1 / 2
#   (raw 0.180 / 0.187 / 0.186; 0.62-0.65x the initial model, whose own AbsRel is higher with
#   "horizon"), the best three-seed mean so far, but occupancy IoU fell to 20.1 / 17.7 / 17.4 %
#   (this config: 21.8 / 22.4 %; its ground-plane prior alone: 17.4 %); the (160, 160, 8) grid
#   alone 0.209 / 0.229 / 0.231 / 0.200 for seeds 0-3 (mean 0.217; IoU 22.5 / 20.9 / 20.1 /
#   19.9 %; this config's seed 3: 0.232, so its four-seed mean is 0.227): one run in four meets
#   <= 0.20, none the 0.65x ratio (0.652 at best); paired by seed the grid wins two and
#   loses two, so the 0.01 gain in the mean is not yet established; (200, 200, 8) 0.213 (seed 0, 1.7x the step time). Where
#   CAMERA_08 fails (its median scale is 1.27 with raw AbsRel 0.21): a 10 m sign is rendered
#   25-35 px wide at 192 x 352 over the trees 50 m behind it (a 0.5-0.8 m decode cell), and
#   the tops of those trees, seen through the box's top at 15-20 m, come out that near. The
#   depth maps of the seed-0 and seed-1 runs of this code average to 0.218 (the 0.201 above
#   came from runs of the earlier code): most of the error is shared by the runs, not
#   chance. The non-local photometric depth search alone
#   (model.search_candidates=64, 5 x 5 patches, confident at 70-90 % of the pixels) scores raw
#   AbsRel 0.20-0.34 per camera there, no better than the trained field;
# - evaluation at 192 x 352 (2x the training images) with SelfOcc's convention (LiDAR
#   points beyond 1 m, predictions never 0).
import fiddle as fdl

from config.common import DDAD_EGO_MASKS, DDAD_SAMPLE_ROOT, occ3d_grid, selfocc_optimizer, timm_fpn
from render.volume import NeuSRenderer
from selfsup.data.cache import CachedDataset
from selfsup.data.ddad import DDADFrames
from selfsup.models.sdf_occ import SDFOcc
from selfsup.representations.triplane_sdf import TriplaneSDF
from selfsup.training.experiment import EvalSettings, Experiment

data = fdl.Config(
    CachedDataset,
    dataset=fdl.Config(DDADFrames, root=DDAD_SAMPLE_ROOT, scene="scene_02", neighbours=(-1, 1), image_hw=(96, 176),
                       ego_mask_dir=DDAD_EGO_MASKS),
)

model = fdl.Config(
    SDFOcc,
    encoder=timm_fpn("resnet18", channels=32),
    representation=fdl.Config(
        TriplaneSDF, grid=occ3d_grid(), resolution=(80, 80, 8), feat_channels=32, plane_channels=16,
        hidden=32, num_classes=17, rgb=True,
        # Not in SelfOcc: scales the decoded SDF so few steps can move surfaces by metres (the
        # initial field is unchanged).
        sdf_scale=10.0,
        sdf_bias="ground",
        hash_levels=8,
        hash_log2_size=16,
    ),
    renderer=fdl.Config(NeuSRenderer, num_samples=128, init_variance=0.1, perturb=True),
    rays_hw=(16, 32),
    field_resolution=(100, 100, 16),
    train_encoder=False,
    near=0.5,  # metres
    far=60.0,  # metres
    background="box_exit",
    loss_weights=dict(photometric=1.0, rgb=0.1, eikonal=0.1, hessian=0.01, depth=0.0, semantic=0.0, free_space=0.1, search=0.0, prior=3e-4, distortion=0.0, patch_photometric=0.0, keypoint_depth=0.0),
)

config = fdl.Config(
    Experiment,
    name="sdf_ddad_tiny",
    model=model,
    train_data=data,
    train=selfocc_optimizer(steps=1000, lr=1e-2, warmup_steps=5, log_every=10, image_every=100, ckpt_every=200),
    eval=fdl.Config(EvalSettings, depth_hw=(192, 352), min_depth=1.0, max_depth=80.0),  # 2x the training images
)
