"""Visibility masks by voxel traversal: ``mask_lidar`` and ``mask_camera``.

Rays are traversed voxel by voxel with the Amanatides-Woo set-up of the RayIoU marcher
(:func:`eval.rayiou.dda_setup`: same start voxel, step and tie rules), vectorized over
rays in PyTorch: every ray advances one voxel per iteration and retires when it reaches
its end point, leaves the grid, or enters a stop voxel.

- ``mask_lidar`` (Occ3D: "voxels a beam traverses are free, the voxel with the point is
  occupied; the rest unobserved"): every voxel from the sensor's voxel up to and including
  the voxel of the return, for each aggregated point, from that point's own sensor origin.
- ``mask_camera``: every voxel from the camera centre up to and including the first
  occupied voxel along rays through the image (a regular pixel sub-grid), intersected with
  ``mask_lidar``. The intersection follows the released Occ3D files: in the real file under
  ``data/samples/occ3d`` every camera-visible voxel is also LiDAR-visible (0 of 43,355
  are not), i.e. a voxel no LiDAR ray observed is not called camera-visible either (sky,
  far regions and the unobserved space behind returns stay out of both masks).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from eval.rayiou import dda_setup
from selfsup.grid import OCC3D_GRID, VoxelGrid

_MAX_STEPS = 4096


def to_voxel_units(points: Float[np.ndarray, "N 3"], grid: VoxelGrid = OCC3D_GRID) -> Float[np.ndarray, "N 3"]:
    """Metres (ego frame) -> continuous voxel coordinates ((p - lower) / voxel_size)."""
    return (np.asarray(points, np.float64) - np.asarray(grid.lower)) / grid.voxel_size


def traverse(
    shape: tuple[int, int, int],
    origin_vox: Float[np.ndarray, "N 3"],
    end_vox: Float[np.ndarray, "N 3"],
    stop: Optional[Bool[np.ndarray, "X Y Z"]] = None,
    include_end: bool = True,
    chunk: int = 262144,
) -> Bool[np.ndarray, "X Y Z"]:
    """Mark every voxel that N rays visit from their origin up to their end point.

    A ray visits the voxel of its origin, then each voxel it crosses (DDA order), and ends
    in the voxel holding its end point (visited when ``include_end``), or earlier where it
    leaves the grid, or at the first voxel where ``stop`` is set (that voxel visited).
    Parts of a ray outside the grid mark nothing; a ray may start outside and enter.

    Args:
        shape: grid size (X, Y, Z).
        origin_vox, end_vox: ray origins and end points in voxel units (see
            :func:`to_voxel_units`); rays of zero length mark their origin voxel only.
        stop: optional stop voxels (e.g. occupied voxels for camera visibility).
        include_end: mark the end point's voxel (True) or stop just before it.
        chunk: rays marched at once (memory bound).

    Returns:
        visited voxels, bool [X, Y, Z].

    Raises:
        ValueError: mismatched shapes.
    """
    origin_vox = np.asarray(origin_vox, np.float64)
    end_vox = np.asarray(end_vox, np.float64)
    if origin_vox.shape != end_vox.shape or origin_vox.ndim != 2 or origin_vox.shape[1] != 3:
        raise ValueError(f"origins {origin_vox.shape} and ends {end_vox.shape} must both be N x 3")
    if stop is not None and tuple(stop.shape) != tuple(shape):
        raise ValueError(f"stop grid has shape {stop.shape}, expected {tuple(shape)}")
    visited = torch.zeros(int(np.prod(shape)) + 1, dtype=torch.bool)  # + a dummy cell
    stop_flat = None
    if stop is not None:  # with the same dummy cell (never a stop)
        stop_flat = torch.cat([torch.from_numpy(np.ascontiguousarray(stop, dtype=bool)).reshape(-1),
                               torch.zeros(1, dtype=torch.bool)])
    for start in range(0, origin_vox.shape[0], chunk):
        _traverse_chunk(shape, origin_vox[start : start + chunk], end_vox[start : start + chunk],
                        stop_flat, include_end, visited)
    return visited[:-1].reshape(shape).numpy()


def _traverse_chunk(shape, origin_vox, end_vox, stop_flat, include_end, visited) -> None:
    """March one chunk of rays; ``visited`` (flat bool, one extra dummy cell at the end) is
    updated in place. Per-axis state is kept in separate 1-D tensors (elementwise ops only),
    rays that are done are compacted away once they are half of the chunk."""
    o = torch.from_numpy(origin_vox)
    e = torch.from_numpy(end_vox)
    length = torch.linalg.norm(e - o, dim=1)
    # A zero-length ray gets any direction; it retires after its first voxel.
    e = torch.where((length > 0)[:, None], e, o + torch.tensor([1.0, 0.0, 0.0], dtype=o.dtype))
    # dda_setup takes float32 voxel coordinates (the RayIoU reference's dtype); the grid is at
    # most a few hundred voxels wide, so float32 keeps ~1e-5 voxel precision.
    voxel, step, t_max, t_delta = dda_setup(o.float(), e.float())
    vx, vy, vz = (voxel[:, a].to(torch.int32).contiguous() for a in range(3))
    sx, sy, sz = (step[:, a].to(torch.int32).contiguous() for a in range(3))
    tx, ty, tz = (t_max[:, a].contiguous() for a in range(3))
    dx, dy, dz = (t_delta[:, a].contiguous() for a in range(3))
    t_end = length
    nx, ny, nz = shape
    dummy = visited.numel() - 1
    was_inside = torch.zeros(o.shape[0], dtype=torch.bool)
    live = torch.ones(o.shape[0], dtype=torch.bool)
    for _ in range(_MAX_STEPS):
        inside = (vx >= 0) & (vx < nx) & (vy >= 0) & (vy < ny) & (vz >= 0) & (vz < nz) & live
        exit_t = torch.minimum(torch.minimum(tx, ty), tz)
        # the end point lies in this voxel when the ray leaves the voxel at or after it
        last = exit_t >= t_end
        flat = (vx * (ny * nz) + vy * nz + vz).to(torch.int64)
        mark = inside & (~last if not include_end else inside)
        visited[torch.where(mark, flat, dummy)] = True
        done = last | (was_inside & ~inside)
        if stop_flat is not None:
            done |= inside & stop_flat[torch.where(inside, flat, dummy)]
        was_inside |= inside
        live &= ~done
        n_live = int(live.sum())
        if n_live == 0:
            return
        if n_live < 0.5 * live.numel():
            k = live
            vx, vy, vz, sx, sy, sz = vx[k], vy[k], vz[k], sx[k], sy[k], sz[k]
            tx, ty, tz, dx, dy, dz = tx[k], ty[k], tz[k], dx[k], dy[k], dz[k]
            t_end, was_inside, live = t_end[k], was_inside[k], live[k]
        # Ties between axes: same rule as the RayIoU marcher (y over x, z over both).
        ax0 = (tx < ty) & (tx < tz)
        ax1 = ~(tx < ty) & (ty < tz)
        ax2 = ~ax0 & ~ax1
        vx += sx * ax0
        vy += sy * ax1
        vz += sz * ax2
        tx = torch.where(ax0, tx + dx, tx)
        ty = torch.where(ax1, ty + dy, ty)
        tz = torch.where(ax2, tz + dz, tz)
    raise RuntimeError(f"voxel traversal did not finish in {_MAX_STEPS} steps")  # pragma: no cover


def lidar_visibility(
    points_ego: Float[np.ndarray, "N 3"],
    origins_ego: Float[np.ndarray, "N 3"],
    grid: VoxelGrid = OCC3D_GRID,
) -> Bool[np.ndarray, "X Y Z"]:
    """``mask_lidar`` of the given rays: voxels from each origin to its point, end included."""
    return traverse(grid.shape, to_voxel_units(origins_ego, grid), to_voxel_units(points_ego, grid))


def camera_rays(
    K: Float[np.ndarray, "3 3"], T_ego_cam: Float[np.ndarray, "4 4"], hw: tuple[int, int], stride: int
) -> tuple[Float[np.ndarray, "3"], Float[np.ndarray, "R 3"]]:
    """Camera centre and unit ray directions (ego frame) through pixel centres of a regular
    sub-grid with ``stride`` pixels (first centre at stride / 2); K in continuous pixel
    coordinates (pixel (i, j) spans [j, j + 1) x [i, i + 1))."""
    h, w = hw
    us = np.arange(stride / 2, w, stride)
    vs = np.arange(stride / 2, h, stride)
    u, v = np.meshgrid(us, vs, indexing="xy")
    pix = np.stack([u.ravel(), v.ravel(), np.ones(u.size)], axis=1)
    d_cam = pix @ np.linalg.inv(K).T
    d_ego = d_cam @ T_ego_cam[:3, :3].T
    d_ego /= np.linalg.norm(d_ego, axis=1, keepdims=True)
    return T_ego_cam[:3, 3].copy(), d_ego


def camera_visibility(
    occupied: Bool[np.ndarray, "X Y Z"],
    cameras: list,
    grid: VoxelGrid = OCC3D_GRID,
    stride: int = 8,
) -> Bool[np.ndarray, "X Y Z"]:
    """Voxels seen from the camera centres up to and including the first occupied voxel.

    Args:
        occupied: occupied voxels (semantics != free).
        cameras: objects with ``K`` [3, 3], ``T_ego_cam`` [4, 4] and ``hw`` (see
            :class:`selfsup.occ_gt.sources.Camera`).
        stride: pixel spacing of the cast rays. At 8 px a 1600-px nuScenes camera casts a
            ray every ~0.4 mrad x 8 = 3.5 mrad, one per 0.4 m voxel at ~115 m, denser than
            the grid everywhere inside it.

    Returns:
        bool [X, Y, Z] (not yet intersected with ``mask_lidar``).
    """
    if stride < 1:
        raise ValueError(f"camera ray stride must be >= 1 pixel, got {stride}")
    reach = float(np.linalg.norm(np.asarray(grid.upper) - np.asarray(grid.lower))) * 2
    origins, ends = [], []
    for cam in cameras:
        centre, dirs = camera_rays(np.asarray(cam.K), np.asarray(cam.T_ego_cam), tuple(cam.hw), stride)
        origins.append(np.broadcast_to(centre, dirs.shape))
        ends.append(centre + dirs * reach)
    if not origins:
        return np.zeros(grid.shape, bool)
    o = to_voxel_units(np.concatenate(origins), grid)
    e = to_voxel_units(np.concatenate(ends), grid)
    return traverse(grid.shape, o, e, stop=occupied)
