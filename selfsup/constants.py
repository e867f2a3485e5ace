"""The project's constants, one definition each.

The Occ3D protocol constants are defined in ``eval.occ3d`` (``eval/`` imports nothing from
``selfsup``, so they live at the bottom layer) and re-exported here under the names the
models use; the rest are defined here.
"""

from eval.occ3d import DYNAMIC_CLASSES, FREE_LABEL, NUM_CLASSES, OCC3D_GRID_SHAPE, OCC3D_LOWER, OCC3D_UPPER, OCC3D_VOXEL_SIZE

OCC3D_FREE = FREE_LABEL  # label of free voxels (17)
OCC3D_NUM_CLASSES = NUM_CLASSES  # 18 labels: 0-16 semantic + free
NUM_SEMANTIC_CLASSES = FREE_LABEL  # 17 semantic classes 0-16 (logit channels of a model)
SEMANTIC_UNLABELLED = 255  # value of 2D semantic maps (``Frames.semantic_maps``) at unlabelled pixels

__all__ = [
    "DYNAMIC_CLASSES",
    "NUM_SEMANTIC_CLASSES",
    "OCC3D_FREE",
    "OCC3D_GRID_SHAPE",
    "OCC3D_LOWER",
    "OCC3D_NUM_CLASSES",
    "OCC3D_UPPER",
    "OCC3D_VOXEL_SIZE",
    "SEMANTIC_UNLABELLED",
]
