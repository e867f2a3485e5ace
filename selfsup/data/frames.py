"""The sample contract shared by every dataset, model and evaluation script.

Dimension letters (README glossary): B batch, T frames (index 0 = the current frame,
then the temporal neighbours in the order the dataset was configured with), V cameras,
H W image rows / columns, P LiDAR points.

Frames and units: ``T_ego_cam[t, v]`` maps OpenCV camera coordinates of camera v at
frame t into the *reference ego frame of frame t* (the ego pose at the frame's reference
time: the LiDAR / keyframe time for nuScenes, the sample time for DDAD). Where a camera's
own capture time has a different ego pose (nuScenes), that motion is folded into
``T_ego_cam``, so ``T_global_ego[t] @ T_ego_cam[t, v]`` is the exact camera-to-global pose.
Metres, seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from jaxtyping import Bool, Float, Float64, Int
from torch import Tensor

from selfsup.constants import SEMANTIC_UNLABELLED  # noqa: F401  (value of ``semantic_maps`` at unlabelled pixels)
OPTIONAL_MAPS = ("depth_maps", "semantic_maps")  # per-pixel pseudo labels a dataset may add


@dataclass
class Frames:
    """One sample (no batch dim) or a batch of samples (leading ``B``) of multi-camera frames.

    Attributes:
        images: RGB in [0, 1], ``[*B, T, V, 3, H, W]``.
        K: pixel intrinsics of the (resized / cropped) images, ``[*B, T, V, 3, 3]``, in
            continuous pixel coordinates: pixel (i, j) covers [j, j + 1) x [i, i + 1), centre
            (j + 0.5, i + 0.5), as in ``render``, gsplat and ``grid_sample(align_corners=False)``
            (calibration files put centres at integers; the datasets convert).
        T_ego_cam: camera (OpenCV) -> reference ego frame of frame t, ``[*B, T, V, 4, 4]``.
        T_global_ego: ego frame of frame t -> global, ``[*B, T, 4, 4]``.
        timestamps: reference time of each frame in seconds (float64), ``[*B, T]``.
        frame_offsets: keyframe / sweep offset of each frame relative to the current one
            (0 for the current frame), ``[*B, T]``.
        points_ego: LiDAR points (x, y, z) of each frame in that frame's ego frame; a list
            over T of ``[P, 3]`` tensors for one sample, a list over B of such lists for a
            batch (the point counts differ, so they are not stacked).
        valid_masks: ``True`` where a pixel shows the scene (not the ego car body),
            ``[*B, V, H, W]``.
        depth_maps: optional dense pseudo depth (camera z, metres; 0 = unknown) of every
            frame and camera at the image size, ``[*B, T, V, H, W]``, e.g. Metric3D maps
            (GaussianFlowOcc); None when the dataset provides none.
        semantic_maps: optional per-pixel Occ3D class (0-16; 255 = unlabelled) of every
            frame and camera at the image size, int16 ``[*B, T, V, H, W]``, e.g.
            Grounded-SAM pseudo labels (GaussianFlowOcc); None when the dataset provides none.
        tokens: sample token (nuScenes) or sample id (DDAD); ``str`` or list over B.
        scene_names: scene name; ``str`` or list over B.
        camera_names: names of the V cameras, same for every sample.
    """

    images: Float[Tensor, "*b T V 3 H W"]
    K: Float[Tensor, "*b T V 3 3"]
    T_ego_cam: Float[Tensor, "*b T V 4 4"]
    T_global_ego: Float[Tensor, "*b T 4 4"]
    timestamps: Float64[Tensor, "*b T"]
    frame_offsets: Int[Tensor, "*b T"]
    valid_masks: Bool[Tensor, "*b V H W"]
    depth_maps: Float[Tensor, "*b T V H W"] | None = None
    semantic_maps: Int[Tensor, "*b T V H W"] | None = None
    points_ego: list = field(default_factory=list)
    tokens: Any = ""
    scene_names: Any = ""
    camera_names: tuple = ()

    @property
    def batched(self) -> bool:
        return self.images.dim() == 6

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Frames":
        """Move every tensor (nested lists included) to ``device``; used by accelerate."""

        def move(x):
            if isinstance(x, Tensor):
                return x.to(device, non_blocking=non_blocking)
            if isinstance(x, list):
                return [move(y) for y in x]
            return x

        return replace(self, **{f.name: move(getattr(self, f.name)) for f in fields(self)})

    def T_global_cam(self) -> Float[Tensor, "*b T V 4 4"]:
        """Camera -> global pose of every camera and frame."""
        return self.T_global_ego.unsqueeze(-3) @ self.T_ego_cam

    def T_ego0_cam(self) -> Float[Tensor, "*b T V 4 4"]:
        """Camera of frame t -> ego frame of the *current* frame (t = 0)."""
        T_ego0_global = torch.linalg.inv(self.T_global_ego[..., :1, :, :])
        return T_ego0_global.unsqueeze(-3) @ self.T_global_cam()


def collate_frames(samples: list[Frames]) -> Frames:
    """Stack unbatched :class:`Frames` into a batch (DataLoader ``collate_fn``).

    The optional ``depth_maps`` / ``semantic_maps`` are stacked when every sample has
    them and stay None when none has.

    Raises:
        ValueError: if the samples disagree on image size, frame count or cameras, or
            some samples have an optional map and others do not.
    """
    if not samples:
        raise ValueError("collate_frames: got an empty list of samples")
    first = samples[0]
    for s in samples[1:]:
        if s.images.shape != first.images.shape:
            raise ValueError(
                f"collate_frames: images of {s.tokens!r} have shape {tuple(s.images.shape)}, "
                f"expected {tuple(first.images.shape)} like {first.tokens!r}"
            )
        if tuple(s.camera_names) != tuple(first.camera_names):
            raise ValueError(f"collate_frames: camera lists differ: {s.camera_names} vs {first.camera_names}")
    for name in OPTIONAL_MAPS:
        missing = [s.tokens for s in samples if getattr(s, name) is None]
        if missing and len(missing) != len(samples):
            raise ValueError(
                f"collate_frames: {name} is None for samples {missing} but present for others; "
                "a batch needs it in every sample or in none"
            )
    stacked = {
        f.name: torch.stack([getattr(s, f.name) for s in samples])
        for f in fields(Frames)
        if isinstance(getattr(first, f.name), Tensor)
    }
    return Frames(
        **stacked,
        points_ego=[s.points_ego for s in samples],
        tokens=[s.tokens for s in samples],
        scene_names=[s.scene_names for s in samples],
        camera_names=tuple(first.camera_names),
    )
