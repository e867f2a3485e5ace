"""The contract between models, the training loop and the evaluation scripts.

A model is an ``nn.Module`` built from plain typed arguments (never a config object) that
implements :class:`OccupancyModel`. ``train.py`` only calls ``forward``; ``eval_iou.py``
calls ``predict_occupancy``; ``eval_depth.py`` and ``eval_novel_depth.py`` call
``render_depth``. Parameters under ``encoder.backbone`` get the backbone learning-rate
multiplier.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from jaxtyping import Float, UInt8
from torch import Tensor, nn

from selfsup.data.frames import Frames


@dataclass
class ModelOutput:
    """What one training forward pass returns.

    Attributes:
        loss: the weighted total loss, a scalar with gradient.
        terms: unweighted loss terms and other scalars for logging (detached).
        images: optional images for TensorBoard, name -> ``[3, H, W]`` in [0, 1].
    """

    loss: Float[Tensor, ""]
    terms: dict[str, Tensor] = field(default_factory=dict)
    images: dict[str, Tensor] = field(default_factory=dict)


class OccupancyModel(nn.Module, ABC):
    """Base class of every occupancy model (see the module docstring)."""

    @abstractmethod
    def forward(self, batch: Frames) -> ModelOutput:
        """The training losses of one batch."""

    def predict_occupancy(self, batch: Frames) -> UInt8[Tensor, "B X Y Z"]:  # pragma: no cover
        """Occ3D labels (0-16, 17 free) of the current frame (t = 0), ego frame, [x, y, z]."""
        raise NotImplementedError(f"{type(self).__name__} does not predict occupancy")

    def render_depth(
        self,
        batch: Frames,
        K: Float[Tensor, "B V 3 3"],
        T_ego_cam: Float[Tensor, "B V 4 4"],
        height: int,
        width: int,
    ) -> Float[Tensor, "B V H W"]:  # pragma: no cover - interface
        """Render camera depth (z, metres) of the current frame's scene at any camera pose.

        ``T_ego_cam`` maps each target camera into the ego frame of the *current* frame
        (t = 0); pass the current cameras for depth evaluation and neighbouring frames'
        cameras for novel depth synthesis. 0 where the ray hits nothing.
        """
        raise NotImplementedError(f"{type(self).__name__} does not render depth")
