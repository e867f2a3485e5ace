"""Occ3D-format occupancy ground truth from LiDAR frames and 3D boxes.

``scripts/generate_occ_gt.py`` is the command line over this package:

- :mod:`~selfsup.occ_gt.sources`: readers (``lidarseg-frames``, ``nuscenes``, ``ddad``) into a
  :class:`~selfsup.occ_gt.sources.SceneRecord`;
- :mod:`~selfsup.occ_gt.boxes`: box poses, point-in-box tests, re-placement by box poses;
- :mod:`~selfsup.occ_gt.aggregate`: multi-frame aggregation (static points by ego poses,
  object points by their boxes, ego returns removed);
- :mod:`~selfsup.occ_gt.voxelize`: majority voxel labels, optional densification;
- :mod:`~selfsup.occ_gt.raycast`: ``mask_lidar`` / ``mask_camera`` by DDA voxel traversal;
- :mod:`~selfsup.occ_gt.generate`: one keyframe, and the parallel resumable run;
- :mod:`~selfsup.occ_gt.paths`: ``gt_label_path(gt_dir, scene, token)``, the one mapping
  from a sample to its file;
- :mod:`~selfsup.occ_gt.metrics`: ``geometric_iou`` inside ``mask_lidar``, GT statistics.
"""

from selfsup.occ_gt.generate import GenerationConfig, SampleGT, generate_sample, run_generation, write_sample
from selfsup.occ_gt.metrics import geometric_iou, label_statistics, load_gt
from selfsup.occ_gt.paths import gt_label_path, gt_sample_dir, sample_token_from_dirname, token_dirname
from selfsup.occ_gt.sources import read_source

__all__ = [
    "GenerationConfig",
    "SampleGT",
    "generate_sample",
    "geometric_iou",
    "gt_label_path",
    "gt_sample_dir",
    "label_statistics",
    "load_gt",
    "read_source",
    "run_generation",
    "sample_token_from_dirname",
    "token_dirname",
    "write_sample",
]
