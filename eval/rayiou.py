"""RayIoU (SparseOcc) for Occ3D-nuScenes: query rays, origins, first-hit marching, counts.

Source: SparseOcc (MCG-NJU/SparseOcc), `loaders/ray_metrics.py` (`generate_lidar_rays`,
`process_one_sample`, `calc_rayiou`, `main_rayiou`), `loaders/ego_pose_dataset.py`
(origins) and `lib/dvr/dvr.cu` (`render_forward_cuda_kernel`, phase "test").

Every arithmetic step of the reference is reproduced, dtype for dtype, so that the same
inputs give the same counts:
- rays: 39 pitches x 360 azimuths, unit vectors built in float64 then stored as float32
  (14,040 rays; a reference comment says 15,840);
- origins: float64 LiDAR positions in the current ego frame; converted to voxel units as
  float32((origin - [-40, -40, -1]) / float32(0.4)) and ray end points (origin + unit ray)
  the same way. The reference divides by the float32 value of 0.4 (a torch tensor), so do we;
- marching (Amanatides-Woo, in float64 on the float32 voxel-unit inputs): the start voxel is
  `int()` of the origin (truncation toward zero), the start voxel itself is tested, ties
  between axes go to y over x and to z over both, at most 1,001 steps; the distance of a
  hit is where the ray LEAVES the first occupied voxel (label != 17); a ray with no hit ends
  where it leaves the grid and takes that last voxel's label (free); a ray that never
  enters the grid gets distance -1 and the label of voxel (0, 0, 0);
- distances in metres = float32(d_voxels) * float32(0.4), in float32;
- counting: rays whose GT label is free are dropped; per class and threshold t in
  {1, 2, 4} m, TP = same label and |d_gt - d_pred| < t (float32); IoU = TP / (gt + pred - TP)
  over the whole split; RayIoU@t = nanmean over classes 0-16 and RayIoU = nanmean of all 51
  values (the reference's `np.nanmean(iou_list)`): a class absent from both GT-valid rays
  and predictions is NaN and skipped, one predicted but never in the GT counts as 0.

Deliberate differences: none in the arithmetic. Labels must lie in 0..17 (the reference
would treat any label > 17 as occupied). The reference kernel is built with nvcc's default
FMA contraction; the only contractible expression is the ray length
sqrt(rx^2 + ry^2 + rz^2), whose products are exact in float64 for every origin inside the
+-39 m box, so contraction cannot change it there.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional, Sequence, Union

import numpy as np
import torch
from jaxtyping import Bool, Float, Float32, Float64, Int64, Integer, Shaped
from torch import Tensor

from eval.occ3d import FREE_LABEL, OCC3D_CLASS_NAMES, OCC3D_GRID_SHAPE, OCC3D_LOWER, OCC3D_VOXEL_SIZE, to_numpy

PC_RANGE_MIN = OCC3D_LOWER
VOXEL_SIZE = OCC3D_VOXEL_SIZE
GRID_SHAPE = OCC3D_GRID_SHAPE
THRESHOLDS_M: tuple[int, ...] = (1, 2, 4)
MAX_ORIGINS = 8
ORIGIN_BOX_M = 39.0
MAX_STEP = 1000  # the reference kernel breaks once its step counter exceeds this

ArrayLike = Union[Shaped[np.ndarray, "..."], Shaped[Tensor, "..."]]


# --------------------------------------------------------------------------- rays


def pitch_angles() -> list[float]:
    """The 39 pitch angles (radians, negative = downwards) of the RayIoU query rays.

    Rule (SparseOcc `generate_lidar_rays`): -(pi/2 - atan(k + 1)) for k = 0..9, then keep
    adding the last difference while the last angle is < 0.21 rad (nuScenes LiDAR FOV).
    """
    angles = [-(math.pi / 2 - math.atan(k + 1)) for k in range(10)]
    while angles[-1] < 0.21:
        angles.append(angles[-1] + (angles[-1] - angles[-2]))
    return angles


@lru_cache(maxsize=1)
def _query_rays_cached() -> np.ndarray:
    rows = []
    # Evaluated element by element with numpy scalars, as the reference does, so the
    # float64 trigonometry takes the same code path before rounding to float32.
    for pitch in pitch_angles():
        for azimuth_deg in np.arange(0, 360, 1):
            azimuth = np.deg2rad(azimuth_deg)
            rows.append(
                (
                    np.cos(pitch) * np.cos(azimuth),
                    np.cos(pitch) * np.sin(azimuth),
                    np.sin(pitch),
                )
            )
    rays = np.array(rows, dtype=np.float32)
    rays.setflags(write=False)
    return rays


def generate_query_rays() -> Float32[np.ndarray, "R 3"]:
    """Unit query directions in the ego frame: 39 pitches (outer) x 360 azimuths at 1 degree
    (inner), R = 14,040, float32, x forward, y left, z up.

    Source: SparseOcc `loaders/ray_metrics.py::generate_lidar_rays`.
    """
    return _query_rays_cached().copy()


# ------------------------------------------------------------------------ origins


def scene_lidar_origins_ego(
    T_global_ego: Float64[np.ndarray, "4 4"],
    T_ego_lidar: Float64[np.ndarray, "4 4"],
    T_global_lidar: Float64[np.ndarray, "T 4 4"],
    current_index: int,
) -> Float64[np.ndarray, "T 3"]:
    """LiDAR origins of all keyframes of a scene in the current keyframe's ego frame.

    Follows SparseOcc `EgoPoseDataset.__getitem__` operation for operation: each keyframe's
    LiDAR position is taken into the current LiDAR frame (inv(T_global_ego @ T_ego_lidar) @
    T_global_lidar[i]), rounded to float32 there, then mapped by T_ego_lidar; the current
    keyframe's own origin is exactly T_ego_lidar's translation.

    Args:
        T_global_ego: ego pose of the current keyframe (ego -> global), metres.
        T_ego_lidar: LIDAR_TOP calibration of the current keyframe (lidar -> ego).
        T_global_lidar: lidar -> global of every keyframe of the scene, in time order
            (ego pose of the lidar sample_data times its calibration).
        current_index: index of the current keyframe in `T_global_lidar`.

    Returns:
        origins in metres, ego frame of the current keyframe, in keyframe order (unfiltered;
        see `select_origins`).

    Raises:
        IndexError: `current_index` is outside 0..T-1.
    """
    num = T_global_lidar.shape[0]
    if not 0 <= current_index < num:
        raise IndexError(f"current_index {current_index} outside 0..{num - 1}")
    T_lidar_global = np.linalg.inv(T_global_ego.dot(T_ego_lidar))
    origins = np.empty((num, 3), dtype=np.float64)
    for i in range(num):
        if i == current_index:
            in_lidar = np.zeros(3, dtype=np.float32)
        else:
            in_lidar = np.array(T_lidar_global.dot(T_global_lidar[i])[:3, 3], dtype=np.float32)
        homogeneous = np.ones(4)
        homogeneous[:3] = in_lidar
        origins[i] = np.dot(T_ego_lidar[:3], homogeneous.T).T
    return origins


def select_origins(origins_ego: Float64[np.ndarray, "T 3"]) -> Float64[np.ndarray, "O 3"]:
    """Keep origins with |x| < 39 and |y| < 39 m, then at most 8 of them.

    When more than 8 remain, the kept indices are np.round(np.linspace(0, n - 1, 8)) cast to
    int64 (numpy rounds halves to even; with 8 points no exact half occurs). The current
    frame's own origin may be dropped by this rule, as in the reference.

    Source: SparseOcc `loaders/ego_pose_dataset.py::EgoPoseDataset.__getitem__`.

    Raises:
        ValueError: no origin lies inside the box (the reference would fail in np.stack).
    """
    inside = (np.abs(origins_ego[:, 0]) < ORIGIN_BOX_M) & (np.abs(origins_ego[:, 1]) < ORIGIN_BOX_M)
    kept = origins_ego[inside]
    if kept.shape[0] == 0:
        raise ValueError("no LiDAR origin lies within |x| < 39 m and |y| < 39 m")
    if kept.shape[0] > MAX_ORIGINS:
        index = np.round(np.linspace(0, kept.shape[0] - 1, MAX_ORIGINS)).astype(np.int64)
        kept = kept[index]
    return kept


def to_voxel_units(
    origins_ego: Float64[Tensor, "O 3"], rays: Float32[Tensor, "R 3"]
) -> tuple[Float32[Tensor, "O 3"], Float32[Tensor, "O R 3"]]:
    """Origins and ray end points (origin + unit ray) in float32 voxel units.

    Same dtypes as the reference: float64 sums, division by the float32 value of 0.4,
    result rounded to float32.
    """
    offset = torch.tensor(PC_RANGE_MIN, dtype=torch.float32, device=origins_ego.device)
    scale = torch.tensor([VOXEL_SIZE] * 3, dtype=torch.float32, device=origins_ego.device)
    origins = origins_ego.to(torch.float64)
    origin_vox = ((origins - offset) / scale).float()
    ends = rays.to(origins.device)[None] + origins[:, None]
    end_vox = ((ends - offset) / scale).float()
    return origin_vox, end_vox


# ----------------------------------------------------------------------- marching


def dda_setup(
    origin_vox: Float32[Tensor, "N 3"], end_vox: Float32[Tensor, "N 3"]
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Amanatides-Woo set-up of N rays: start voxel (int64 [N, 3], `trunc` of the origin),
    step signs (int64 [N, 3]), distance to the first boundary per axis and per-voxel
    increments (float64 [N, 3]), distances in voxel units along the unit direction of
    end - origin (float64). Shared by `march_first_hit` and the ground-truth generator's
    ray casting (`selfsup.occ_gt.raycast`), so both traverse voxels identically."""
    o = origin_vox.to(torch.float64)
    r = end_vox.to(torch.float64) - o
    squared = r[:, 0] * r[:, 0] + r[:, 1] * r[:, 1] + r[:, 2] * r[:, 2]
    if squared.is_cuda:
        length = torch.sqrt(squared)  # IEEE correctly rounded on CUDA
    else:
        # torch's vectorized CPU sqrt is not always correctly rounded in float64; numpy's is,
        # like the reference kernel's CUDA sqrt.
        length = torch.from_numpy(np.sqrt(squared.numpy()))
    direction = r / length[:, None]
    voxel = torch.trunc(o).to(torch.int64)
    step = torch.where(direction >= 0, 1, -1).to(torch.int64)
    boundary = (voxel + (step > 0).to(torch.int64)).to(torch.float64)
    nonzero = direction != 0
    safe = torch.where(nonzero, direction, torch.ones_like(direction))
    big = torch.full_like(direction, np.finfo(np.float64).max)
    t_max = torch.where(nonzero, (boundary - o) / safe, big)
    t_delta = torch.where(nonzero, step.to(torch.float64) / safe, big)
    return voxel, step, t_max, t_delta


def march_first_hit(
    occupied: Bool[Tensor, "G X Y Z"],
    origin_vox: Float32[Tensor, "N 3"],
    end_vox: Float32[Tensor, "N 3"],
) -> tuple[Float64[Tensor, "G N"], Int64[Tensor, "G N 3"]]:
    """First occupied voxel along each ray, for G grids sharing the same rays.

    Vectorized Amanatides-Woo traversal: all rays advance in lockstep, one voxel per
    iteration; a ray retires once it has hit in every grid or has left the grid. Matches
    `march_first_hit_reference` (the per-ray transcription of SparseOcc `lib/dvr/dvr.cu`)
    exactly; see the module docstring for the conventions.

    Args:
        occupied: occupancy of G label grids, indexed [g, x, y, z].
        origin_vox: ray origins in voxel units ((p - [-40, -40, -1]) / 0.4), float32.
        end_vox: a second point of each ray in voxel units; only the direction is used.

    Returns:
        dist: distance in voxel units where the ray leaves its first occupied voxel, or
            leaves the grid if nothing is hit, or -1 if it never enters the grid.
        index: [x, y, z] of that voxel (the last voxel inside for a miss, 0 if never in).
    """
    num_grids, size_x, size_y, size_z = occupied.shape
    device = occupied.device
    num_rays = origin_vox.shape[0]
    flat_occ = occupied.reshape(num_grids, -1)
    sizes = torch.tensor([size_x, size_y, size_z], device=device)
    strides = torch.tensor([size_y * size_z, size_z, 1], device=device)

    voxel, step, t_max, t_delta = dda_setup(origin_vox.to(device), end_vox.to(device))
    ids = torch.arange(num_rays, device=device)
    live = torch.ones(num_rays, dtype=torch.bool, device=device)
    was_inside = torch.zeros(num_rays, dtype=torch.bool, device=device)
    found = torch.zeros(num_grids, num_rays, dtype=torch.bool, device=device)
    last_d = torch.full((num_rays,), -1.0, dtype=torch.float64, device=device)
    last_idx = torch.zeros(num_rays, 3, dtype=torch.int64, device=device)
    hit_d = torch.zeros(num_grids, num_rays, dtype=torch.float64, device=device)
    hit_idx = torch.zeros(num_grids, num_rays, 3, dtype=torch.int64, device=device)
    hit_found = torch.zeros(num_grids, num_rays, dtype=torch.bool, device=device)
    out_d = last_d.clone()
    out_idx = last_idx.clone()
    num_live = num_rays

    for _ in range(MAX_STEP + 1):
        if num_live == 0:
            break
        # Retired rays stay in the arrays (masked by `live`) until enough of them have
        # gathered to make compacting worth its cost.
        if num_live < 0.7 * ids.numel():
            keep = live
            ids, voxel, step, t_max, t_delta = ids[keep], voxel[keep], step[keep], t_max[keep], t_delta[keep]
            was_inside, found, last_d, last_idx = was_inside[keep], found[:, keep], last_d[keep], last_idx[keep]
            live = live[keep]
        inside = ((voxel >= 0) & (voxel < sizes)).all(dim=1)
        # A ray that has been inside and is now outside never comes back: it retires with
        # the last voxel inside for the grids where it found nothing.
        leave = live & was_inside & ~inside
        if bool(leave.any()):
            out_d[ids[leave]] = last_d[leave]
            out_idx[ids[leave]] = last_idx[leave]
            live = live & ~leave
        inside = inside & live
        # Next boundary crossing; ties go to y over x and to z over both, as in the reference.
        tx, ty, tz = t_max[:, 0], t_max[:, 1], t_max[:, 2]
        axis = torch.where(tx < ty, torch.where(tx < tz, 0, 2), torch.where(ty < tz, 1, 2))[:, None]
        dist = t_max.gather(1, axis).squeeze(1)
        current = voxel.clone()
        voxel.scatter_add_(1, axis, step.gather(1, axis))
        t_max.scatter_add_(1, axis, t_delta.gather(1, axis))
        flat = (current.clamp(min=0) * strides).sum(1).clamp(max=flat_occ.shape[1] - 1)
        new_hit = flat_occ[:, flat] & inside[None] & ~found
        g_idx, r_idx = new_hit.nonzero(as_tuple=True)
        if g_idx.numel():
            hit_d[g_idx, ids[r_idx]] = dist[r_idx]
            hit_idx[g_idx, ids[r_idx]] = current[r_idx]
            hit_found[g_idx, ids[r_idx]] = True
            found = found | new_hit
            # All grids have hit: nothing more to learn from this ray.
            live = live & ~found.all(dim=0)
        last_d = torch.where(inside, dist, last_d)
        last_idx = torch.where(inside[:, None], current, last_idx)
        was_inside = was_inside | inside
        num_live = int(live.sum())
    # Rays still running after MAX_STEP + 1 steps end at their last voxel inside.
    out_d[ids[live]] = last_d[live]
    out_idx[ids[live]] = last_idx[live]

    dist_out = torch.where(hit_found, hit_d, out_d[None].expand(num_grids, -1))
    idx_out = torch.where(hit_found[..., None], hit_idx, out_idx[None].expand(num_grids, -1, -1))
    return dist_out, idx_out


def march_first_hit_reference(
    occupied: Bool[np.ndarray, "X Y Z"],
    origin_vox: Float32[np.ndarray, "3"],
    end_vox: Float32[np.ndarray, "3"],
) -> tuple[float, tuple[int, int, int]]:
    """One ray, plain Python: a line-by-line reading of SparseOcc `render_forward_cuda_kernel`
    (phase "test") used to check `march_first_hit` and the CUDA kernel on few rays.

    Returns:
        (distance in voxel units, (x, y, z) of the voxel that gives the label).
    """
    size = occupied.shape
    xo, yo, zo = (float(v) for v in origin_vox)
    xe, ye, ze = (float(v) for v in end_vox)
    vx, vy, vz = int(xo), int(yo), int(zo)
    rx, ry, rz = xe - xo, ye - yo, ze - zo
    length = math.sqrt(rx * rx + ry * ry + rz * rz)
    dx, dy, dz = rx / length, ry / length, rz / length
    sx, sy, sz = (1 if dx >= 0 else -1), (1 if dy >= 0 else -1), (1 if dz >= 0 else -1)
    big = float(np.finfo(np.float64).max)
    t_max_x = (vx + (0 if sx < 0 else 1) - xo) / dx if dx != 0 else big
    t_max_y = (vy + (0 if sy < 0 else 1) - yo) / dy if dy != 0 else big
    t_max_z = (vz + (0 if sz < 0 else 1) - zo) / dz if dz != 0 else big
    t_delta_x = sx / dx if dx != 0 else big
    t_delta_y = sy / dy if dy != 0 else big
    t_delta_z = sz / dz if dz != 0 else big

    path: list[tuple[int, int, int]] = []
    dists: list[float] = []
    was_inside = False
    steps = 0
    while True:
        inside = 0 <= vx < size[0] and 0 <= vy < size[1] and 0 <= vz < size[2]
        if inside:
            was_inside = True
            here = (vx, vy, vz)
        elif was_inside:
            break
        if t_max_x < t_max_y:
            if t_max_x < t_max_z:
                d, vx, t_max_x = t_max_x, vx + sx, t_max_x + t_delta_x
            else:
                d, vz, t_max_z = t_max_z, vz + sz, t_max_z + t_delta_z
        elif t_max_y < t_max_z:
            d, vy, t_max_y = t_max_y, vy + sy, t_max_y + t_delta_y
        else:
            d, vz, t_max_z = t_max_z, vz + sz, t_max_z + t_delta_z
        if inside:
            path.append(here)
            dists.append(d)
        steps += 1
        if steps > MAX_STEP:
            break
    if not path:
        return -1.0, (0, 0, 0)
    for voxel, d in zip(path, dists):
        if occupied[voxel]:
            return d, voxel
    return dists[-1], path[-1]


def _march(
    occupied: Bool[Tensor, "G X Y Z"],
    origin_vox: Float32[Tensor, "N 3"],
    end_vox: Float32[Tensor, "N 3"],
    backend: str,
) -> tuple[Float64[Tensor, "G N"], Int64[Tensor, "G N 3"]]:
    if backend == "torch":
        return march_first_hit(occupied, origin_vox, end_vox)
    if backend == "cuda":
        from eval.kernels import rayiou_dvr_march

        return rayiou_dvr_march(occupied, origin_vox, end_vox)
    if backend == "cpp":
        from eval.kernels import rayiou_dvr_march_cpu

        dist, index = rayiou_dvr_march_cpu(occupied, origin_vox, end_vox)
        return dist.to(occupied.device), index.to(occupied.device)
    raise ValueError(f"unknown marching backend {backend!r}; use 'torch', 'cpp' or 'cuda'")


@dataclass(frozen=True)
class RayHits:
    """Labels and first-hit distances of the query rays of one sample.

    Attributes:
        label: label of the voxel each ray ends in, one row per grid (e.g. pred, GT).
        dist: distance along the ray in metres (float32) where it leaves that voxel.
        index: [x, y, z] of that voxel, e.g. to read a per-voxel flow there (OpenOcc).
    """

    label: Int64[Tensor, "G N"]
    dist: Float32[Tensor, "G N"]
    index: Int64[Tensor, "G N 3"]


def _check_labels(name: str, labels: Integer[Tensor, "X Y Z"], free_label: int) -> None:
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > free_label):
        raise ValueError(
            f"{name} labels must lie in 0..{free_label}, got {int(labels.min())}..{int(labels.max())}"
        )


def cast_query_rays(
    grids: list[ArrayLike],
    origins_ego: Float[Union[np.ndarray, Tensor], "O 3"],
    device: str = "cpu",
    backend: str = "torch",
    free_label: int = FREE_LABEL,
) -> RayHits:
    """March the RayIoU query rays from each origin through one or more label grids.

    Args:
        grids: label grids 0..free_label indexed [x, y, z] (200 x 200 x 16), e.g.
            [pred, gt]; they share the rays, so they are marched together.
        origins_ego: selected LiDAR origins (see `select_origins`), metres, ego frame.
        device: torch device for the marching.
        backend: "torch" (CPU or GPU), "cpp" (compiled CPU twin, cuda/rayiou_dvr_cpu.cpp,
            built on first use) or "cuda" (the kernel in cuda/rayiou_dvr.cu).
        free_label: the empty-space label (17 in Occ3D, 16 in OpenOcc); every other label
            is occupied.

    Returns:
        RayHits with N = O * 14,040 rays (origin-major, then pitch, then azimuth).

    Raises:
        ValueError: grids of different shapes, labels outside 0..free_label, no origin.
    """
    tensors = [torch.as_tensor(to_numpy(g)).to(device=device, dtype=torch.int64) for g in grids]
    shape = tensors[0].shape
    for i, t in enumerate(tensors):
        if t.ndim != 3 or t.shape != shape:
            raise ValueError(f"grid {i} has shape {tuple(t.shape)}, expected {tuple(shape)} (X Y Z)")
        _check_labels(f"grid {i}", t, free_label)
    labels = torch.stack(tensors)
    origins = torch.as_tensor(to_numpy(origins_ego), dtype=torch.float64).to(device)
    if origins.ndim != 2 or origins.shape[0] == 0:
        raise ValueError(f"need at least one origin of shape (O, 3), got {tuple(origins.shape)}")
    rays = torch.from_numpy(generate_query_rays()).to(device)
    origin_vox, end_vox = to_voxel_units(origins, rays)
    num_rays = rays.shape[0]
    origin_per_ray = origin_vox.repeat_interleave(num_rays, dim=0)
    dist_vox, index = _march(labels != free_label, origin_per_ray, end_vox.reshape(-1, 3), backend)
    size_y, size_z = shape[1], shape[2]
    flat = index[..., 0] * (size_y * size_z) + index[..., 1] * size_z + index[..., 2]
    label = labels.reshape(labels.shape[0], -1).gather(1, flat)
    # Reference: pred_dist (float32) *= 0.4, i.e. a float32 product with float32(0.4).
    dist_m = dist_vox.to(torch.float32) * torch.tensor(VOXEL_SIZE, dtype=torch.float32, device=device)
    return RayHits(label=label, dist=dist_m, index=index)


class RayIoUMetric:
    """Accumulates RayIoU counts over a split (SparseOcc `calc_rayiou` / `main_rayiou`).

    State (all int64, mergeable by summing): `gt_count[c]`, `pred_count[c]` over the rays
    whose GT label is not free, and `tp_count[t, c]` for t in {1, 2, 4} m.

    The label set is a parameter: `class_names` lists every label in order, the last one
    being free (Occ3D: 18 names, free = 17; OpenOcc v2: 17 names, car first, free = 16).

    >>> gt = np.full((200, 200, 16), 17, np.uint8); gt[:, :, 0] = 11
    >>> m = RayIoUMetric(); m.update(gt, gt, np.array([[0.0, 0.0, 1.8]]))
    >>> m.compute()["RayIoU"]  # a fraction in 0..1, as the reference prints it
    1.0
    """

    def __init__(
        self, device: str = "cpu", backend: str = "torch", class_names: Sequence[str] = OCC3D_CLASS_NAMES
    ) -> None:
        """Create an empty accumulator.

        Args:
            device: torch device for the marching.
            backend: marcher, see `cast_query_rays`.
            class_names: name of every label in label order; the last one is free.

        Raises:
            ValueError: fewer than two class names.
        """
        if len(class_names) < 2:
            raise ValueError(f"need at least one class and free, got class_names={list(class_names)}")
        self.device = device
        self.backend = backend
        self.class_names = tuple(class_names)
        self.num_classes = len(self.class_names)
        self.free_label = self.num_classes - 1
        self.gt_count = np.zeros(self.num_classes, dtype=np.int64)
        self.pred_count = np.zeros(self.num_classes, dtype=np.int64)
        self.tp_count = np.zeros((len(THRESHOLDS_M), self.num_classes), dtype=np.int64)
        self.num_samples = 0

    def update(
        self,
        pred: ArrayLike,
        gt: ArrayLike,
        origins_ego: Float[Union[np.ndarray, Tensor], "O 3"],
    ) -> None:
        """March pred and GT from the given (already selected) origins and add the counts.

        Raises:
            ValueError: see `cast_query_rays`.
        """
        hits = cast_query_rays(
            [pred, gt], origins_ego, device=self.device, backend=self.backend, free_label=self.free_label
        )
        self.add_hits(hits.label[0], hits.dist[0], hits.label[1], hits.dist[1])

    def add_hits(
        self,
        pred_label: Int64[Tensor, "N"],
        pred_dist: Float32[Tensor, "N"],
        gt_label: Int64[Tensor, "N"],
        gt_dist: Float32[Tensor, "N"],
    ) -> None:
        """Count one sample's marched rays (drops rays whose GT label is free)."""
        num_classes = self.num_classes
        gl_all = gt_label.cpu().numpy()
        valid = gl_all != self.free_label
        gl = gl_all[valid]
        pl = pred_label.cpu().numpy()[valid]
        # float32 difference, compared with the integer thresholds, as the reference does.
        error = np.abs(pred_dist.cpu().numpy()[valid] - gt_dist.cpu().numpy()[valid])
        self.gt_count += np.bincount(gl, minlength=num_classes)[:num_classes]
        self.pred_count += np.bincount(pl, minlength=num_classes)[:num_classes]
        # One pass for all thresholds: level = how many thresholds a same-label ray meets.
        same = pl == gl
        level = sum((error[same] < t).astype(np.int64) for t in THRESHOLDS_M)
        num_t = len(THRESHOLDS_M)
        counts = np.bincount(gl[same] * (num_t + 1) + level, minlength=num_classes * (num_t + 1))
        counts = counts.reshape(num_classes, num_t + 1)
        # TP at threshold j = rays meeting at least (num_t - j) thresholds (sorted ascending).
        at_least = np.cumsum(counts[:, ::-1], axis=1)[:, ::-1]
        for j in range(num_t):
            self.tp_count[j] += at_least[:, num_t - j]
        self.num_samples += 1

    def merge(self, other: "RayIoUMetric") -> None:
        """Add another accumulator's counts (e.g. from another process).

        Raises:
            ValueError: the other accumulator uses another label set.
        """
        if other.class_names != self.class_names:
            raise ValueError("cannot merge RayIoU accumulators with different class_names")
        self.gt_count += other.gt_count
        self.pred_count += other.pred_count
        self.tp_count += other.tp_count
        self.num_samples += other.num_samples

    def state_vector(self) -> Int64[np.ndarray, "S"]:
        """The whole state as one int64 vector: gt, pred, tp (3 x K), sample count."""
        return np.concatenate(
            [self.gt_count, self.pred_count, self.tp_count.reshape(-1), [self.num_samples]]
        ).astype(np.int64)

    @classmethod
    def from_state_vector(
        cls,
        state: Int64[np.ndarray, "S"],
        device: str = "cpu",
        backend: str = "torch",
        class_names: Sequence[str] = OCC3D_CLASS_NAMES,
    ) -> "RayIoUMetric":
        """Rebuild an accumulator from a (summed) `state_vector`.

        Raises:
            ValueError: the vector has the wrong length.
        """
        metric = cls(device=device, backend=backend, class_names=class_names)
        k = metric.num_classes
        size = k * (2 + len(THRESHOLDS_M)) + 1
        if state.shape != (size,):
            raise ValueError(f"RayIoU state for {k} classes must have {size} entries, got {state.shape}")
        metric.gt_count = state[:k].astype(np.int64)
        metric.pred_count = state[k : 2 * k].astype(np.int64)
        metric.tp_count = state[2 * k : -1].reshape(len(THRESHOLDS_M), k).astype(np.int64)
        metric.num_samples = int(state[-1])
        return metric

    def iou_table(self) -> Float64[np.ndarray, "3 C"]:
        """IoU per threshold (rows 1, 2, 4 m) and non-free class (C = K - 1), NaN where 0 / 0."""
        gt = self.gt_count.astype(np.float64)
        pred = self.pred_count.astype(np.float64)
        tp = self.tp_count.astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            return (tp / (gt + pred - tp))[:, : self.free_label]

    def compute(self) -> dict:
        """Return `RayIoU`, `RayIoU@1`, `RayIoU@2`, `RayIoU@4` (fractions in 0..1, as the
        reference prints them), `RayIoU_per_class` {name: [@1, @2, @4]} and `num_samples`."""
        table = self.iou_table()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            result = {"RayIoU": float(np.nanmean(table))}
            for j, threshold in enumerate(THRESHOLDS_M):
                result[f"RayIoU@{threshold}"] = float(np.nanmean(table[j]))
        result["RayIoU_per_class"] = {
            self.class_names[c]: [float(v) for v in table[:, c]] for c in range(self.free_label)
        }
        result["num_samples"] = self.num_samples
        return result


__all__ = [
    "GRID_SHAPE",
    "PC_RANGE_MIN",
    "THRESHOLDS_M",
    "VOXEL_SIZE",
    "RayHits",
    "RayIoUMetric",
    "cast_query_rays",
    "dda_setup",
    "generate_query_rays",
    "march_first_hit",
    "march_first_hit_reference",
    "pitch_angles",
    "scene_lidar_origins_ego",
    "select_origins",
    "to_voxel_units",
]
