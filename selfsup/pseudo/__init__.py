"""Pseudo depth / semantic label generation (``scripts/generate_pseudo_*.py``) and their PNG format.

Modules: :mod:`~selfsup.pseudo.storage` (format, manifest, reader used by the datasets),
:mod:`~selfsup.pseudo.sources` (dataset iteration), :mod:`~selfsup.pseudo.runner`
(sharding, resume, progress, summary), backends :mod:`~selfsup.pseudo.lidar` (LiDAR depth,
nuScenes lidarseg), :mod:`~selfsup.pseudo.depth_anything`, :mod:`~selfsup.pseudo.grounded_sam`,
:mod:`~selfsup.pseudo.segmenter` (Mask2Former / OneFormer).
"""
