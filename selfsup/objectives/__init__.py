"""Shared, pure training objectives: ``fn(views, batch, mask) -> scalar | None``.

Every objective reads what it needs from :class:`selfsup.model_api.RenderedViews` (the
renders of one frame's cameras) and the batch (:class:`selfsup.data.frames.Frames`, the
targets); ``mask [B V R]`` marks the rays that may count (``Frames.valid_masks`` read at the
rays' pixels). An objective returns ``None`` when the batch has no target for it and raises
``ValueError`` when the views lack a field it needs. Weights live in the configs
(``loss_weights``), keyword parameters are bound with ``fdl.Partial`` / ``functools.partial``.
See ``selfsup.model_api`` for how models assemble them.
"""

from selfsup.objectives.depth import depth_objective, depth_target
from selfsup.objectives.photometric import photometric_objective, rgb_objective
from selfsup.objectives.semantic import semantic_objective, semantic_target

__all__ = [
    "depth_objective",
    "depth_target",
    "photometric_objective",
    "rgb_objective",
    "semantic_objective",
    "semantic_target",
]
