"""Lifting multi-camera image features into a BEV plane or a voxel volume.

Forward lifting (Lift-Splat-Shoot, BEVDet, FlashOcc): every image feature cell predicts a
categorical depth distribution over fixed depth bins and a context vector; their outer
product is placed at the 3D points of the cell's frustum and summed ("splatted") into the
ego grid, either collapsed over z (a BEV plane, FlashOcc) or kept as a voxel volume
(BEVDet-Occ 3D). Backward lifting samples the image features at the voxel centres
instead (as the TPV lift of :mod:`selfsup.representations.triplane_sdf` does for its
pillars). Everything is in the ego frame of the current frame, metres; grids are indexed
[x, y, z] and stored channels-first, ``[B, C, X, Y]`` / ``[B, C, X, Y, Z]``.

Pixel convention: ``Frames.K`` (continuous coordinates, pixel centres at +0.5); feature
cell (i, j) of a stride-s map covers image pixels [j s, (j + 1) s) x [i s, (i + 1) s) and
its frustum rays go through the cell centre ((j + 0.5) s, (i + 0.5) s).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from selfsup.grid import OCC3D_GRID, VoxelGrid
from selfsup.losses.photometric import project_points


@dataclass(frozen=True)
class DepthBins:
    """Uniform depth bins ``start, start + step, ...`` (< ``stop``), camera z in metres.

    Bin k covers ``[start + k step, start + (k + 1) step)``; its frustum points sit at the
    bin's lower edge ``start + k step`` (BEVDet's ``torch.arange(*grid_config['depth'])``).

    Source: FlashOcc / BEVDet ``grid_config['depth'] = [1.0, 45.0, 0.5]``: 88 bins.
    """

    start: float = 1.0
    stop: float = 45.0
    step: float = 0.5

    def __post_init__(self):
        if not (0 < self.start < self.stop) or self.step <= 0:
            raise ValueError(f"DepthBins: need 0 < start < stop and step > 0, got {self}")

    @property
    def count(self) -> int:
        return int(round((self.stop - self.start) / self.step))

    def values(self, device: torch.device | str = "cpu") -> Float[Tensor, "D"]:
        """Depth of each bin's frustum points (lower edges), metres."""
        return self.start + self.step * torch.arange(self.count, device=device, dtype=torch.float32)

    def index(self, depth: Float[Tensor, "*s"]) -> Int[Tensor, "*s"]:
        """Bin index of each depth, -1 outside ``[start, stop)`` or for depth <= 0."""
        k = torch.floor((depth - self.start) / self.step).long()
        return torch.where((depth > 0) & (k >= 0) & (k < self.count), k, torch.full_like(k, -1))


FLASHOCC_DEPTH_BINS = DepthBins(1.0, 45.0, 0.5)


def frustum_points(
    K: Float[Tensor, "B V 3 3"],
    T_ego_cam: Float[Tensor, "B V 4 4"],
    feat_hw: tuple[int, int],
    stride: int,
    depths: Float[Tensor, "D"],
) -> Float[Tensor, "B V D h w 3"]:
    """Ego-frame 3D points of every (depth bin, feature cell) of every camera.

    Args:
        K: intrinsics of the input images (continuous pixel coordinates).
        T_ego_cam: camera (OpenCV) -> ego of the current frame.
        feat_hw: (h, w) of the feature map.
        stride: image pixels per feature cell.
        depths: camera z of the frustum points, metres.

    Returns:
        points ``p_ego = T_ego_cam @ (z K^-1 [u, v, 1])`` at the cell centres ``u = (j + 0.5)
        stride``, ``v = (i + 0.5) stride``. A general ``K`` (an augmented, flipped or rotated
        image) is fine: the back-projection solves with K.
    """
    h, w = feat_hw
    device, dtype = K.device, K.dtype
    v = (torch.arange(h, device=device, dtype=dtype) + 0.5) * stride
    u = (torch.arange(w, device=device, dtype=dtype) + 0.5) * stride
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    uv1 = torch.stack([uu, vv, torch.ones_like(uu)], dim=-1).reshape(-1, 3)  # [hw 3]
    rays = torch.linalg.solve(K[:, :, None], uv1[None, None, :, :, None])[..., 0]  # [B V hw 3], z = 1
    cam = rays[:, :, None] * depths.to(dtype)[None, None, :, None, None]  # [B V D hw 3]
    ego = cam @ T_ego_cam[:, :, None, :3, :3].transpose(-1, -2) + T_ego_cam[:, :, None, None, :3, 3]
    return ego.reshape(*K.shape[:2], depths.shape[0], h, w, 3)


def voxel_indices(
    points: Float[Tensor, "*s 3"], grid: VoxelGrid, collapse_z: bool
) -> tuple[Int[Tensor, "*s"], Bool[Tensor, "*s"]]:
    """Flat cell index (x-major: ``(ix * Y + iy) * Z + iz``, or ``ix * Y + iy`` with
    ``collapse_z``) of each point, and whether the point lies inside the grid box."""
    lower = torch.tensor(grid.lower, device=points.device, dtype=points.dtype)
    ijk = torch.floor((points - lower) / grid.voxel_size).long()
    X, Y, Z = grid.shape
    size = torch.tensor([X, Y, Z], device=points.device)
    inside = ((ijk >= 0) & (ijk < size)).all(dim=-1)
    ijk = torch.where(inside[..., None], ijk, torch.zeros_like(ijk))
    flat = ijk[..., 0] * Y + ijk[..., 1]
    if not collapse_z:
        flat = flat * Z + ijk[..., 2]
    return flat, inside


def splat_features(
    depth_probs: Float[Tensor, "B V D h w"],
    context: Float[Tensor, "B V C h w"],
    points: Float[Tensor, "B V D h w 3"],
    grid: VoxelGrid = OCC3D_GRID,
    collapse_z: bool = True,
) -> Float[Tensor, "B C X Y *z"]:
    """Voxel pooling: sum ``depth_probs * context`` of every frustum point into its cell.

    Args:
        depth_probs: per-cell depth distribution (softmax over D), or any weights.
        context: per-cell context features.
        points: ego-frame frustum points (:func:`frustum_points`), metres.
        grid: the ego grid; points outside its box are dropped.
        collapse_z: sum over the z cells too (a BEV plane ``[B, C, X, Y]``, FlashOcc) or
            keep them (a volume ``[B, C, X, Y, Z]``, BEVDet-Occ 3D).

    Returns:
        the pooled features, differentiable w.r.t. ``depth_probs`` and ``context``.

    A pure-PyTorch ``index_add_`` over the frustum points (no CUDA kernel); its speed at
    the FlashOcc M1 size is in ``scripts/benchmark.py``. The features of the frustum points
    inside the grid are materialised (at most 95 MB in float32 for 6 x 88 x 16 x 44 x 64;
    about 63 % of them lie inside the Occ3D box for nuScenes-like cameras).

    Source: Philion & Fidler, Lift-Splat-Shoot (ECCV 2020), Sec. 3 ("sum pooling", the
    cumsum trick replaced by index_add); BEVDet ``bev_pool_v2`` (sum per voxel).
    """
    B, V, D, h, w = depth_probs.shape
    C = context.shape[2]
    X, Y, Z = grid.shape
    cells = X * Y if collapse_z else X * Y * Z
    flat, inside = voxel_indices(points, grid, collapse_z)  # [B V D h w]
    # Only the frustum points inside the grid are materialised: point i of the flattened
    # [B V D h w] layout reads the context of its pixel (b, v, row, col).
    keep = inside.reshape(-1).nonzero()[:, 0]
    hw = h * w
    pixel = (keep // (D * hw)) * hw + keep % hw
    target = flat.reshape(-1)[keep] + (keep // (V * D * hw)) * cells  # one index_add_ for the batch
    ctx = context.permute(0, 1, 3, 4, 2).reshape(-1, C)  # [B V h w C]
    feats = depth_probs.reshape(-1)[keep, None] * ctx[pixel]
    out = torch.zeros(B * cells, C, device=context.device, dtype=feats.dtype).index_add(0, target, feats)
    out = out.view(B, X, Y, C).permute(0, 3, 1, 2) if collapse_z else out.view(B, X, Y, Z, C).permute(0, 4, 1, 2, 3)
    return out.contiguous()


def lidar_depth_targets(
    points_ego: Float[Tensor, "P 3"],
    K: Float[Tensor, "V 3 3"],
    T_ego_cam: Float[Tensor, "V 4 4"],
    image_hw: tuple[int, int],
    stride: int,
) -> Float[Tensor, "V h w"]:
    """Nearest LiDAR depth per feature cell (min-pooled over the cell's pixels), 0 = none.

    Each point is projected into each camera (``project_points``); a point counts for the
    stride x stride cell its pixel falls in, and the cell keeps the smallest depth.

    Source: BEVDet ``get_downsampled_gt_depth`` (min over the downsample x downsample
    patch, empty pixels excluded).
    """
    V = K.shape[0]
    h, w = image_hw[0] // stride, image_hw[1] // stride
    uv, depth, in_front = project_points(points_ego.expand(V, -1, -1), K, T_ego_cam)
    col = torch.floor(uv[..., 0] / stride).long()
    row = torch.floor(uv[..., 1] / stride).long()
    ok = in_front & (col >= 0) & (col < w) & (row >= 0) & (row < h)
    cam = torch.arange(V, device=K.device)[:, None].expand_as(col)
    flat = (cam * h + row) * w + col
    out = torch.full((V * h * w,), float("inf"), device=K.device, dtype=points_ego.dtype)
    out = out.scatter_reduce(0, flat[ok], depth[ok], reduce="amin")
    out = torch.where(torch.isinf(out), torch.zeros_like(out), out)
    return out.view(V, h, w)


def depth_bin_bce(
    depth_probs: Float[Tensor, "N D h w"],
    target_depth: Float[Tensor, "N h w"],
    bins: DepthBins = FLASHOCC_DEPTH_BINS,
) -> Float[Tensor, ""]:
    """Binary cross-entropy of the predicted depth distribution against one-hot LiDAR bins.

    ``L = sum_cells sum_k BCE(p_k, 1[k = bin(d)]) / max(1, #cells with a target)``, over the
    cells whose target depth falls into a bin.

    Args:
        depth_probs: per-cell distributions (softmax over D), camera-flattened.
        target_depth: min-pooled LiDAR depth per cell (:func:`lidar_depth_targets`), 0 = none.
        bins: the depth bins of the distribution.

    Source: BEVDepth (Li et al. 2023) depth supervision as implemented in BEVDet
    ``LSSViewTransformer.get_depth_loss`` (weight 0.05 in the BEVDet-Occ 4D-stereo configs).
    """
    idx = bins.index(target_depth)  # [N h w]
    fg = idx >= 0
    if not bool(fg.any()):
        return depth_probs.sum() * 0.0
    probs = depth_probs.permute(0, 2, 3, 1)[fg].clamp(1e-6, 1 - 1e-6)  # [M D]
    onehot = F.one_hot(idx[fg], bins.count).to(probs.dtype)
    with torch.autocast(device_type=probs.device.type, enabled=False):
        loss = F.binary_cross_entropy(probs.float(), onehot.float(), reduction="sum")
    return loss / max(1.0, float(fg.sum()))


class LSSLift(nn.Module):
    """LSS view transformer: a 1x1 depth net, softmax depth, outer product, voxel pooling.

    Args:
        in_channels: channels of the image feature map (one pyramid level).
        out_channels: context channels splatted into the grid (FlashOcc M1: 64).
        grid: the ego grid (Occ3D 200 x 200 x 16 at 0.4 m).
        bins: depth bins (FlashOcc M1: [1, 45) m step 0.5, 88 bins).
        collapse_z: BEV plane (True, FlashOcc) or volume (False, BEVDet-Occ 3D).

    Source: BEVDet ``LSSViewTransformer`` (``depth_net = Conv2d(in, D + C, 1)``, softmax
    over D, context unnormalised); differences: frustum rays through the feature-cell
    centres (BEVDet uses ``linspace(0, W - 1, w)``, up to half a cell off), no
    post-augmentation matrices (the augmentations are folded into ``K`` and
    ``T_ego_cam``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 64,
        grid: VoxelGrid = OCC3D_GRID,
        bins: DepthBins = FLASHOCC_DEPTH_BINS,
        collapse_z: bool = True,
    ):
        super().__init__()
        if in_channels <= 0 or out_channels <= 0:
            raise ValueError(f"LSSLift: channels must be positive, got {in_channels}, {out_channels}")
        self.grid = grid
        self.bins = bins
        self.collapse_z = collapse_z
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.depth_net = nn.Conv2d(in_channels, bins.count + out_channels, 1)

    def forward(
        self,
        features: Float[Tensor, "B V Cin h w"],
        stride: int,
        K: Float[Tensor, "B V 3 3"],
        T_ego_cam: Float[Tensor, "B V 4 4"],
    ) -> tuple[Float[Tensor, "B C X Y *z"], Float[Tensor, "B V D h w"]]:
        """Lift one feature level; returns (pooled grid features, depth distributions)."""
        B, V, _, h, w = features.shape
        out = self.depth_net(features.flatten(0, 1)).unflatten(0, (B, V))
        D = self.bins.count
        depth = out[:, :, :D].softmax(dim=2)
        context = out[:, :, D:]
        points = frustum_points(K, T_ego_cam, (h, w), stride, self.bins.values(features.device))
        return splat_features(depth, context, points, self.grid, self.collapse_z), depth


def sample_multiview(
    points: Float[Tensor, "B P 3"],
    features: Float[Tensor, "B V C h w"],
    stride: int,
    K: Float[Tensor, "B V 3 3"],
    T_ego_cam: Float[Tensor, "B V 4 4"],
    image_hw: tuple[int, int],
) -> tuple[Float[Tensor, "B C P"], Float[Tensor, "B 1 P"]]:
    """Average of the bilinear feature samples at each point's projection over the cameras
    that see it, and that count (0 where no camera sees the point; the average is 0 there).

    The same rule as the TPV lift (:meth:`TriplaneSDF.lift`): a point counts for a camera
    when it is in front of it (``project_points``) and its pixel lies inside the image.
    """
    height, width = image_hw
    B, V, C, h, w = features.shape
    total = points.new_zeros(B, C, points.shape[1])
    count = points.new_zeros(B, 1, points.shape[1])
    scale = torch.tensor([2.0 / (w * stride), 2.0 / (h * stride)], device=points.device, dtype=points.dtype)
    for v in range(V):  # one camera at a time bounds memory at one [B, C, P] sample
        uv, _, in_front = project_points(points, K[:, v], T_ego_cam[:, v])
        inside = in_front & (uv[..., 0] >= 0) & (uv[..., 0] < width) & (uv[..., 1] >= 0) & (uv[..., 1] < height)
        read = F.grid_sample(features[:, v], (uv * scale - 1.0)[:, None], mode="bilinear",
                             padding_mode="border", align_corners=False)[:, :, 0]
        vis = inside.to(total.dtype)[:, None]
        total = total + vis * read
        count = count + vis
    return total / count.clamp_min(1.0), count


class BackwardLift(nn.Module):
    """Backward projection: image features sampled at the voxel centres (averaged over the
    cameras that see each centre), then a 1x1 projection; for a BEV plane the ``z_samples``
    heights of each pillar are averaged over the visible (camera, height) pairs.

    Args:
        in_channels, out_channels, grid, collapse_z: as :class:`LSSLift`.
        z_samples: heights per pillar for a BEV plane (centres of equal steps over the box).

    Source: the backward (3D-to-2D) lifting of BEVFormer / FB-BEV without attention: a
    parameter-free average like SelfOcc's TPV lift without deformable attention, so that
    forward and backward lifting can be compared on the same encoder and heads.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 64,
        grid: VoxelGrid = OCC3D_GRID,
        collapse_z: bool = True,
        z_samples: int = 4,
    ):
        super().__init__()
        self.grid = grid
        self.collapse_z = collapse_z
        self.z_samples = z_samples
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.proj = nn.Conv2d(in_channels, out_channels, 1) if collapse_z else nn.Conv3d(in_channels, out_channels, 1)

    def _points(self, device) -> Tensor:
        if not self.collapse_z:
            return self.grid.centers(device)  # [X Y Z 3]
        X, Y, _ = self.grid.shape
        lo, hi = self.grid.lower[2], self.grid.upper[2]
        z = lo + (hi - lo) * (torch.arange(self.z_samples, device=device, dtype=torch.float32) + 0.5) / self.z_samples
        xy = self.grid.centers(device)[:, :, 0, :2]
        return torch.cat([xy[:, :, None].expand(X, Y, self.z_samples, 2),
                          z.view(1, 1, -1, 1).expand(X, Y, self.z_samples, 1)], dim=-1)

    def forward(
        self,
        features: Float[Tensor, "B V Cin h w"],
        stride: int,
        K: Float[Tensor, "B V 3 3"],
        T_ego_cam: Float[Tensor, "B V 4 4"],
        image_hw: tuple[int, int],
    ) -> Float[Tensor, "B C X Y *z"]:
        B = features.shape[0]
        pts = self._points(features.device)
        X, Y, S = pts.shape[:3]
        mean, count = sample_multiview(pts.reshape(1, -1, 3).expand(B, -1, -1), features, stride, K, T_ego_cam, image_hw)
        Cin = mean.shape[1]
        if self.collapse_z:
            num = (mean * count).view(B, Cin, X, Y, S).sum(-1)
            den = count.view(B, 1, X, Y, S).sum(-1).clamp_min(1.0)
            return self.proj(num / den)
        return self.proj(mean.view(B, Cin, X, Y, S))
