"""Training augmentation of :class:`Frames`: image geometry per camera and BEV geometry of
the ego frame, each updating every quantity that depends on it.

Image augmentation (BEVDet / FlashOcc ``PrepareImageInputs``): per camera a random
resize, crop, horizontal flip and rotation about the image centre, one 2D affine map ``A``
of continuous pixel coordinates (centres at +0.5). The same map is used for every frame of
a camera (as BEVDet does for sequential inputs) and folded into the intrinsics, ``K' = A
K`` (a pinhole projection followed by an affine map of the image is again ``K' p / z``),
so lifting, rendering and projection need no separate post-augmentation matrices. Images
are resampled bilinearly, valid masks / pseudo depth / pseudo semantics with nearest
sampling (pixels from outside the source: image 0, invalid, depth 0, semantics 255), all
with kornia's ``warp_affine``.

BEV augmentation (BEVDet ``bda``): a rigid map ``A`` of the ego frame (flip x, flip y,
rotation about z) applied to every frame's ego frame: ``T_ego_cam' = A T_ego_cam``,
``points' = A points``, ``T_global_ego' = T_global_ego A^-1`` (camera and LiDAR poses in
the world are unchanged, so the ego motion ``T_ego0_ego_t`` used by temporal fusion is
conjugated by ``A``), and the voxel labels / masks are resampled on the grid (exact for
flips; nearest voxel for rotations, voxels coming from outside the grid get label 255 and
masks False).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from jaxtyping import Float
from kornia.geometry.transform import warp_affine
from torch import Tensor
from torch.utils.data import Dataset

from selfsup.data.frames import SEMANTIC_UNLABELLED, Frames
from selfsup.grid import OCC3D_GRID, VoxelGrid

IGNORE_VOXEL = 255


def image_affine(
    hw: tuple[int, int], scale: float, crop: tuple[float, float], flip: bool, rotate_deg: float
) -> Float[Tensor, "3 3"]:
    """The 2D map ``[u', v', 1] = A [u, v, 1]`` of one image augmentation (continuous pixel
    coordinates): ``u' = s u - crop_u`` (same for v), then a horizontal flip ``u' -> W - u'``,
    then a rotation by ``rotate_deg`` (counter-clockwise on screen) about the image centre.

    Source: BEVDet ``PrepareImageInputs.img_transform`` (resize, crop, flip, rotate, in
    that order, about the centre of the cropped image).
    """
    H, W = hw
    A = torch.tensor([[scale, 0.0, -crop[0]], [0.0, scale, -crop[1]], [0.0, 0.0, 1.0]], dtype=torch.float64)
    if flip:
        A = torch.tensor([[-1.0, 0.0, W], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64) @ A
    a = math.radians(rotate_deg)
    c, s = math.cos(a), math.sin(a)
    # Screen rotation with v pointing down: counter-clockwise is (u, v) -> (c u + s v, -s u + c v).
    R = torch.tensor([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    centre = torch.tensor([[1.0, 0.0, W / 2], [0.0, 1.0, H / 2], [0.0, 0.0, 1.0]], dtype=torch.float64)
    A = centre @ R @ torch.linalg.inv(centre) @ A
    return A.float()


def _kornia_affine(A: Tensor) -> Tensor:
    """Our continuous-coordinate map as kornia's (pixel centres at integer indices)."""
    shift = torch.eye(3, dtype=A.dtype)
    shift[:2, 2] = -0.5
    return (shift @ A @ torch.linalg.inv(shift))[:2]


def warp_image_maps(frames: Frames, affines: Float[Tensor, "V 3 3"]) -> Frames:
    """Apply one affine map per camera (:func:`image_affine`) to an unbatched sample:
    images, ``K``, ``valid_masks``, ``depth_maps``, ``semantic_maps``.

    Raises:
        ValueError: if ``frames`` is batched or the number of maps is not V.
    """
    if frames.batched:
        raise ValueError("warp_image_maps: expects one unbatched sample (augment in the dataset)")
    T, V, _, H, W = frames.images.shape
    if affines.shape != (V, 3, 3):
        raise ValueError(f"warp_image_maps: expected {V} 3x3 maps, got {tuple(affines.shape)}")
    M = torch.stack([_kornia_affine(a.double()) for a in affines]).float()  # [V 2 3]
    M_tv = M.repeat(T, 1, 1)  # frames are t-major after flatten

    def warp(x: Tensor, mode: str, fill: float) -> Tensor:  # x: [T*V C H W] or [V C H W]
        m = M_tv if x.shape[0] == T * V else M
        shifted = x.float() - fill
        return warp_affine(shifted, m, (H, W), mode=mode, padding_mode="zeros", align_corners=True) + fill

    images = warp(frames.images.flatten(0, 1), "bilinear", 0.0).clamp(0, 1).view(T, V, 3, H, W)
    valid = warp(frames.valid_masks[:, None].float(), "nearest", 0.0)[:, 0] > 0.5
    out = dict(images=images, K=affines[None].to(frames.K) @ frames.K, valid_masks=valid)
    if frames.depth_maps is not None:
        out["depth_maps"] = warp(frames.depth_maps.flatten(0, 1)[:, None], "nearest", 0.0)[:, 0].view(T, V, H, W)
    if frames.semantic_maps is not None:
        sem = warp(frames.semantic_maps.flatten(0, 1)[:, None], "nearest", float(SEMANTIC_UNLABELLED))
        out["semantic_maps"] = sem[:, 0].round().to(frames.semantic_maps.dtype).view(T, V, H, W)
    return replace(frames, **out)


def bev_matrix(flip_x: bool, flip_y: bool, rotate_deg: float) -> Float[Tensor, "4 4"]:
    """The ego-frame map ``A = Rz(rotate) @ F`` (``F`` negates x and / or y), 4x4.

    Source: BEVDet ``LoadAnnotationsBEVDepth.bev_transform`` (rotation, then flips).
    """
    a = math.radians(rotate_deg)
    c, s = math.cos(a), math.sin(a)
    A = torch.eye(4)
    A[:2, :2] = torch.tensor([[c, -s], [s, c]]) @ torch.diag(torch.tensor([-1.0 if flip_x else 1.0, -1.0 if flip_y else 1.0]))
    return A


def resample_voxels(
    volume: Tensor, A: Float[Tensor, "4 4"], grid: VoxelGrid, fill: int | bool
) -> Tensor:
    """``out[c] = volume[nearest voxel of A^-1 c]`` for every voxel centre c (``fill`` where
    that point is outside the grid); exact index permutations for flips of a grid
    symmetric about the origin."""
    X, Y, Z = grid.shape
    centres = grid.centers().reshape(-1, 3)
    A_inv = torch.linalg.inv(A.double()).float()
    src = centres @ A_inv[:3, :3].T + A_inv[:3, 3]
    lower = torch.tensor(grid.lower)
    ijk = torch.floor((src - lower) / grid.voxel_size + 1e-4).long()
    inside = ((ijk >= 0) & (ijk < torch.tensor([X, Y, Z]))).all(-1)
    ijk = ijk.clamp_min(0).minimum(torch.tensor([X - 1, Y - 1, Z - 1]))
    vals = volume[ijk[:, 0], ijk[:, 1], ijk[:, 2]]
    vals = torch.where(inside, vals, torch.full_like(vals, fill))
    return vals.view(X, Y, Z)


def transform_ego(frames: Frames, A: Float[Tensor, "4 4"], grid: VoxelGrid = OCC3D_GRID) -> Frames:
    """Apply a rigid ego-frame map ``A`` (:func:`bev_matrix`) to an unbatched sample.

    Raises:
        ValueError: batched frames, or ``A`` not rigid (a scaled map would break the
            camera poses' inverse-by-transpose).
    """
    if frames.batched:
        raise ValueError("transform_ego: expects one unbatched sample (augment in the dataset)")
    R = A[:3, :3]
    if not torch.allclose(R.T @ R, torch.eye(3), atol=1e-5):
        raise ValueError("transform_ego: A must be rigid (rotation / reflection); BEV scale augmentation is not supported")
    A = A.to(frames.T_ego_cam)
    A_inv = torch.linalg.inv(A.double()).to(A)
    out = dict(
        T_ego_cam=A @ frames.T_ego_cam,
        T_global_ego=frames.T_global_ego @ A_inv,
        points_ego=[p @ A[:3, :3].T + A[:3, 3] for p in frames.points_ego],
    )
    if frames.occ_semantics is not None:
        out["occ_semantics"] = resample_voxels(frames.occ_semantics, A.cpu(), grid, IGNORE_VOXEL)
    for name in ("occ_mask_lidar", "occ_mask_camera"):
        if getattr(frames, name) is not None:
            out[name] = resample_voxels(getattr(frames, name), A.cpu(), grid, False)
    return replace(frames, **out)


@dataclass(frozen=True)
class ImageAugConfig:
    """Ranges of the image augmentation (FlashOcc M1 defaults).

    Attributes:
        resize: extra scale range added to 1 (FlashOcc: (-0.06, 0.11)).
        rotate_deg: rotation range in degrees (FlashOcc: (-5.4, 5.4)).
        flip: random horizontal flips (probability 1/2).
        crop_h: fraction range of the resized height cropped *above* the output window
            measured from the bottom (FlashOcc ``crop_h`` (0, 0): keep the bottom rows).
    """

    resize: tuple[float, float] = (-0.06, 0.11)
    rotate_deg: tuple[float, float] = (-5.4, 5.4)
    flip: bool = True
    crop_h: tuple[float, float] = (0.0, 0.0)


@dataclass(frozen=True)
class BEVAugConfig:
    """Ranges of the BEV augmentation (FlashOcc M1: flips only).

    Attributes:
        rotate_deg: rotation range about z in degrees (FlashOcc ``rot_lim`` (0, 0)).
        flip_x, flip_y: probabilities of negating x / y (FlashOcc 0.5 / 0.5).
    """

    rotate_deg: tuple[float, float] = (0.0, 0.0)
    flip_x: float = 0.5
    flip_y: float = 0.5


class AugmentedFrames(Dataset):
    """A dataset wrapper that augments each sample (training only).

    The random draws come from ``numpy.random.default_rng((seed, index, count))`` where
    ``count`` is how often this wrapper has returned that index, so a run is reproducible
    for a given seed and data order.

    Args:
        dataset: yields unbatched :class:`Frames`.
        image: image augmentation ranges, or None.
        bev: BEV augmentation ranges, or None.
        grid: the voxel grid of the samples' voxel GT.
        seed: base seed.
    """

    def __init__(self, dataset: Dataset, image: ImageAugConfig | None = ImageAugConfig(),
                 bev: BEVAugConfig | None = BEVAugConfig(), grid: VoxelGrid = OCC3D_GRID, seed: int = 0):
        self.dataset, self.image, self.bev, self.grid, self.seed = dataset, image, bev, grid, seed
        self._count: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name):
        if name in ("dataset", "image", "bev", "grid", "seed", "_count"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int) -> Frames:
        frames = self.dataset[index]
        n = self._count.get(index, 0)
        self._count[index] = n + 1
        rng = np.random.default_rng((self.seed, index, n))
        if self.image is not None:
            H, W = frames.images.shape[-2:]
            maps = []
            for _ in range(frames.images.shape[1]):
                s = 1.0 + rng.uniform(*self.image.resize)
                new_h, new_w = H * s, W * s
                crop_u = rng.uniform(0.0, max(0.0, new_w - W))
                crop_v = (1.0 - rng.uniform(*self.image.crop_h)) * new_h - H
                flip = bool(self.image.flip and rng.uniform() < 0.5)
                maps.append(image_affine((H, W), s, (crop_u, crop_v), flip, rng.uniform(*self.image.rotate_deg)))
            frames = warp_image_maps(frames, torch.stack(maps))
        if self.bev is not None:
            A = bev_matrix(bool(rng.uniform() < self.bev.flip_x), bool(rng.uniform() < self.bev.flip_y),
                           rng.uniform(*self.bev.rotate_deg))
            frames = transform_ego(frames, A, self.grid)
        return frames
