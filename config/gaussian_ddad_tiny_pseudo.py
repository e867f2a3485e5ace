# The tiny Gaussian run on the bundled DDAD scene, supervised by generated pseudo labels
# (selfsup PNG format, read by DDADFrames(pseudo_depth_dir=..., pseudo_semantic_dir=...)):
# rendered depth against pseudo depth of every frame (current and neighbours) and rendered
# semantics against the pseudo classes, GaussianFlowOcc's losses and weights.
# Generate the labels first (a few seconds on CPU):
#   python scripts/generate_pseudo_depth.py --data-root data/samples/ddad/test_scene --scenes scene_02 \
#       --backend lidar --accumulate 1 --out-dir work_dirs/pseudo/ddad_depth
#   python scripts/generate_pseudo_semantics.py --data-root data/samples/ddad/test_scene --scenes scene_02 \
#       --backend segmenter --checkpoint CKPT --out-scale 0.25 --out-dir work_dirs/pseudo/ddad_semantic
# (CKPT: a local Mask2Former / OneFormer folder, or --backend grounded_sam with Grounding DINO + SAM
# folders; no weights ship with this repository, so on this CPU machine the semantics came from a
# tiny random Mask2Former, `python -m selfsup.pseudo.random_checkpoints mask2former CKPT`, and
# mean nothing: the run shows the labels reaching the loss, not a trained segmenter.)
# Pseudo depth here is the LiDAR accumulated over the previous / current / next frames
# (ego-motion compensated): denser than one sweep, wrong on moving objects. Note that the
# base config holds frame 1 out for novel-view scoring; pseudo depth of frames 0 and 2
# accumulated with --accumulate 1 contains frame 1's LiDAR, so novel-view numbers of this
# variant are not held-out ones (generate with --accumulate 0 for that).
#   accelerate launch train.py --py-config config/gaussian_ddad_tiny_pseudo.py --work-dir WORK
import copy

from config.common import REPO
from config.gaussian_ddad_tiny import config as base

PSEUDO_DEPTH_DIR = str(REPO / "work_dirs/pseudo/ddad_depth")
PSEUDO_SEMANTIC_DIR = str(REPO / "work_dirs/pseudo/ddad_semantic")

config = copy.deepcopy(base)
config.name = "gaussian_ddad_tiny_pseudo"
config.train_data.dataset.pseudo_depth_dir = PSEUDO_DEPTH_DIR
config.train_data.dataset.pseudo_semantic_dir = PSEUDO_SEMANTIC_DIR
config.model.depth_source = "pseudo"  # selfsup.objectives.depth_objective(source="pseudo"); semantics: semantic_objective
