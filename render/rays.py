"""Camera rays: pixel rays from intrinsics and poses, jittered pixel grids, ray/box clipping.

Pixel convention used throughout ``render/``: ``uv`` are continuous image coordinates in
the frame the intrinsics ``K`` are expressed in, ``u`` along columns (x, right) and ``v``
along rows (y, down). Pixel (row ``i``, column ``j``) covers ``[j, j + 1) x [i, i + 1)``, so
its centre is ``(j + 0.5, i + 0.5)``. This is the convention of ``torch.nn.functional.grid_sample``
with ``align_corners=False``: an image of width ``W`` is sampled at ``uv`` with the normalised
coordinate ``2 u / W - 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from render.precision import full_precision

__all__ = ["Rays", "pixel_rays", "jittered_pixel_grid", "strided_pixel_grid", "ray_aabb", "ray_intervals", "rays_in_box"]


@dataclass
class Rays:
    """A batch of rays in the frame that ``T_world_cam`` maps into (world or ego).

    Attributes:
        origins: ray origins (the camera centre), metres.
        directions: unit-norm ray directions.
        depth_per_dist: camera depth (z in the OpenCV camera frame) per metre travelled along
            the ray, i.e. the z component of the unit direction in the camera frame; a point
            at distance ``dist`` along the ray has ``depth = dist * depth_per_dist``.
    """

    origins: Float[Tensor, "*b R 3"]
    directions: Float[Tensor, "*b R 3"]
    depth_per_dist: Float[Tensor, "*b R"]


@full_precision
def pixel_rays(
    K: Float[Tensor, "*b 3 3"],
    T_world_cam: Float[Tensor, "*b 4 4"],
    uv: Float[Tensor, "*b R 2"],
) -> Rays:
    """Back-project pixel coordinates into unit rays through a pinhole camera.

    Args:
        K: pinhole intrinsics, pixels, for the image the ``uv`` refer to.
        T_world_cam: camera-to-world pose (``p_world = T_world_cam @ p_cam``), OpenCV camera
            frame (x right, y down, z forward), metres. "world" is whatever frame the caller
            wants the rays in (ego, global).
        uv: continuous pixel coordinates, ``u`` = column, ``v`` = row; pixel centres at
            ``+0.5`` (see the module docstring).

    Returns:
        ``Rays`` with origins at the camera centre, unit directions, and ``depth_per_dist``
        (``> 0`` for every pixel of a pinhole camera).

    Raises:
        ValueError: if ``K`` is singular.

    Source: pinhole model, Hartley & Zisserman, Multiple View Geometry, eq. 6.8 (x = K [R|t] X).

    >>> K = torch.tensor([[100.0, 0, 50], [0, 100, 40], [0, 0, 1]])
    >>> rays = pixel_rays(K, torch.eye(4), torch.tensor([[50.0, 40.0]]))
    >>> rays.directions, rays.depth_per_dist
    (tensor([[0., 0., 1.]]), tensor([1.]))
    """
    if torch.any(torch.linalg.det(K.double()).abs() < 1e-12):
        raise ValueError(f"pixel_rays: intrinsics K are singular: {K}")
    ones = torch.ones_like(uv[..., :1])
    uv1 = torch.cat([uv, ones], dim=-1)  # [*b R 3], homogeneous pixel
    # Solving instead of inverting K keeps float32 precision for large focal lengths.
    dirs_cam = torch.linalg.solve(K, uv1.transpose(-1, -2)).transpose(-1, -2)  # z == 1
    norm = dirs_cam.norm(dim=-1)
    dirs_cam = dirs_cam / norm[..., None]
    R_world_cam = T_world_cam[..., :3, :3]
    directions = dirs_cam @ R_world_cam.transpose(-1, -2)
    origins = T_world_cam[..., None, :3, 3].expand_as(directions)
    return Rays(origins=origins, directions=directions, depth_per_dist=dirs_cam[..., 2])


@full_precision
def jittered_pixel_grid(
    height: int,
    width: int,
    rows: int,
    cols: int,
    generator: torch.Generator | None = None,
    jitter: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Float[Tensor, "R 2"]:
    """A ``rows x cols`` grid of pixel coordinates covering an image, one per cell.

    The image ``[0, width) x [0, height)`` is cut into ``rows x cols`` equal cells; each
    cell gives one coordinate, uniformly random inside the cell when ``jitter`` is set,
    else the cell centre. With ``rows == height`` and ``cols == width`` and no jitter the
    result is exactly the pixel centres ``(j + 0.5, i + 0.5)``.

    Args:
        height, width: image size, pixels.
        rows, cols: grid size (SelfOcc: 48 x 100 per camera).
        generator: random generator for the jitter (its device must match ``device``).
        jitter: draw a random point per cell (training) or take the cell centre.
        device, dtype: of the returned tensor.

    Returns:
        ``uv`` of shape ``[rows * cols, 2]``, row-major (``reshape(rows, cols, 2)`` gives
        the grid), ``u`` = column coordinate, ``v`` = row coordinate.

    Raises:
        ValueError: if a size is not positive.

    Source: stratified (per-cell jittered) pixel sampling. SelfOcc (Huang et al. 2024) does
    not jitter per cell: its "cellular" ray sampler draws one random stride and offset of a
    regular sub-grid per step (:func:`strided_pixel_grid`).
    """
    if min(height, width, rows, cols) <= 0:
        raise ValueError(
            f"jittered_pixel_grid: sizes must be positive, got height={height}, width={width}, "
            f"rows={rows}, cols={cols}"
        )
    cell_h = height / rows
    cell_w = width / cols
    i = torch.arange(rows, device=device, dtype=dtype)
    j = torch.arange(cols, device=device, dtype=dtype)
    v0, u0 = torch.meshgrid(i * cell_h, j * cell_w, indexing="ij")
    if jitter:
        offset = torch.rand((rows, cols, 2), generator=generator, device=device, dtype=dtype)
    else:
        offset = torch.full((rows, cols, 2), 0.5, device=device, dtype=dtype)
    u = u0 + offset[..., 0] * cell_w
    v = v0 + offset[..., 1] * cell_h
    return torch.stack([u, v], dim=-1).reshape(rows * cols, 2)


def strided_pixel_grid(
    height: int,
    width: int,
    rows: int,
    cols: int,
    generator: torch.Generator | None = None,
    random: bool = True,
    min_scale: float = 0.5,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Float[Tensor, "R 2"]:
    """A ``rows x cols`` regular sub-grid with one random stride and offset per call.

    Per axis the stride is ``scale * size / count`` with ``scale`` uniform in
    ``[min_scale, 1]`` and the grid's offset uniform over the room left, so the whole grid
    stays inside the image: ``u_j = offset + stride (j + 0.5)``. Neighbouring rays keep a
    constant spacing (SSIM patches on the ray grid stay regular) while the covered pixels
    change every step. Without ``random``: the cell centres (as :func:`jittered_pixel_grid`
    without jitter).

    Args:
        height, width: image size, pixels.
        rows, cols: grid size (SelfOcc: 48 x 100 per camera).
        generator: random generator.
        random: draw stride and offset (training) or take the cell centres.
        min_scale: smallest stride as a fraction of ``size / count``, in (0, 1].
        device, dtype: of the returned tensor.

    Returns:
        ``uv`` ``[rows * cols, 2]``, row-major, ``u`` = column, ``v`` = row.

    Raises:
        ValueError: if a size is not positive or ``min_scale`` not in (0, 1].

    Source: SelfOcc (Huang et al. 2024) ``ray_sampler.py``, "cellular" mode (one random
    down-sampling stride and offset per step); our reading of it, not its code.
    """
    if min(height, width, rows, cols) <= 0 or not 0 < min_scale <= 1:
        raise ValueError(
            f"strided_pixel_grid: need positive sizes and 0 < min_scale <= 1, got height={height}, "
            f"width={width}, rows={rows}, cols={cols}, min_scale={min_scale}"
        )
    axes = []
    for size, count in ((width, cols), (height, rows)):
        cell = size / count
        if random:
            r = torch.rand(2, generator=generator, device=device, dtype=dtype)
            stride = cell * (min_scale + (1.0 - min_scale) * r[0])
            offset = (size - stride * count) * r[1]
        else:
            stride, offset = torch.tensor(cell, device=device, dtype=dtype), torch.tensor(0.0, device=device, dtype=dtype)
        axes.append(offset + stride * (torch.arange(count, device=device, dtype=dtype) + 0.5))
    v, u = torch.meshgrid(axes[1], axes[0], indexing="ij")
    return torch.stack([u, v], dim=-1).reshape(rows * cols, 2)


def patch_pixel_grid(
    height: int,
    width: int,
    rows: int,
    cols: int,
    patch: int,
    stride: float = 1.0,
    generator: torch.Generator | None = None,
    jitter: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Float[Tensor, "R 2"]:
    """A ``rows x cols`` ray grid made of ``patch x patch`` tiles of neighbouring pixels.

    The image is cut into ``rows / patch x cols / patch`` equal cells; each cell holds one
    patch of ``patch x patch`` pixels ``stride`` pixels apart, placed uniformly at random
    inside the cell when ``jitter`` is set (else centred). Tile ``(a, b)`` fills grid rows
    ``a patch .. (a + 1) patch - 1`` and columns ``b patch ..``, so an SSIM window on the ray
    grid compares neighbouring pixels, as monodepth2's SSIM does on whole images, instead of
    rays a cell apart.

    Args:
        height, width: image size, pixels.
        rows, cols: grid size; multiples of ``patch``.
        patch: pixels per patch side (>= 1; 1 is :func:`jittered_pixel_grid`'s layout).
        stride: pixels between a patch's neighbouring rays (> 0).
        generator: random generator for the placement.
        jitter: random placement (training) or centred patches.
        device, dtype: of the returned tensor.

    Returns:
        ``uv`` ``[rows * cols, 2]``, row-major over the ray grid, ``u`` = column, ``v`` = row.

    Raises:
        ValueError: a size that is not positive, ``rows`` / ``cols`` not multiples of
            ``patch``, or a patch longer than its cell.

    Source: patch-based ray sampling for local photometric / SSIM losses on rendered
    images (e.g. RegNeRF, Niemeyer et al. 2022, Sec. 3.2; monodepth2's 3 x 3 SSIM window).
    """
    if min(height, width, rows, cols, patch) <= 0 or stride <= 0:
        raise ValueError(f"patch_pixel_grid: sizes and stride must be positive, got height={height}, width={width}, "
                         f"rows={rows}, cols={cols}, patch={patch}, stride={stride}")
    if rows % patch or cols % patch:
        raise ValueError(f"patch_pixel_grid: rows={rows} and cols={cols} must be multiples of patch={patch}")
    n_r, n_c = rows // patch, cols // patch
    cell_h, cell_w = height / n_r, width / n_c
    extent = stride * patch  # the patch's footprint, pixel centres stride / 2 inside it
    if extent > min(cell_h, cell_w):
        raise ValueError(f"patch_pixel_grid: a {patch} x {patch} patch at stride {stride} ({extent} px) does not fit "
                         f"its {cell_h:.1f} x {cell_w:.1f} px cell")
    if jitter:
        r = torch.rand((n_r, n_c, 2), generator=generator, device=device, dtype=dtype)
    else:
        r = torch.full((n_r, n_c, 2), 0.5, device=device, dtype=dtype)
    a = torch.arange(n_r, device=device, dtype=dtype)
    b = torch.arange(n_c, device=device, dtype=dtype)
    v0 = a[:, None] * cell_h + r[..., 1] * (cell_h - extent)  # [n_r n_c]
    u0 = b[None, :] * cell_w + r[..., 0] * (cell_w - extent)
    k = stride * (torch.arange(patch, device=device, dtype=dtype) + 0.5)
    v = v0[:, None, :, None] + k[None, :, None, None]  # [n_r patch n_c 1]
    u = u0[:, None, :, None] + k[None, None, None, :]  # [n_r 1 n_c patch]
    v, u = torch.broadcast_tensors(v, u)  # [n_r patch n_c patch]: grid row a*patch + i, column b*patch + j
    return torch.stack([u, v], dim=-1).reshape(rows * cols, 2)


@full_precision
def ray_aabb(
    origins: Float[Tensor, "*b 3"],
    directions: Float[Tensor, "*b 3"],
    box_min: Float[Tensor, "3"],
    box_max: Float[Tensor, "3"],
) -> tuple[Float[Tensor, "*b"], Float[Tensor, "*b"], Bool[Tensor, "*b"]]:
    """Where rays enter and leave an axis-aligned box (slab method).

    Rays are half-lines ``o + t d`` with ``t >= 0``: a ray starting inside the box has
    ``t_near = 0``. Direction components that are exactly zero are handled explicitly
    (the slab is then all of ``t`` if the origin lies between the two planes, else empty),
    so no ``0 * inf`` NaN appears. Distances are in units of ``|d|`` (metres for unit
    directions).

    Args:
        origins: ray origins, metres, in the box's frame.
        directions: ray directions (need not be unit).
        box_min, box_max: box corners, metres.

    Returns:
        ``(t_near, t_far, hit)``; ``hit`` is true where the ray crosses the box with positive
        length (``t_far > t_near``). Where ``hit`` is false, ``t_near = t_far = 0`` so a
        renderer given these bounds produces an empty ray.

    Raises:
        ValueError: if ``box_min > box_max`` on some axis.

    Source: Kay & Kajiya 1986, ray/slab intersection.
    """
    if torch.any(box_min > box_max):
        raise ValueError(f"ray_aabb: box_min {box_min} must be <= box_max {box_max}")
    box_min = box_min.to(origins)
    box_max = box_max.to(origins)
    parallel = directions == 0
    safe_dirs = torch.where(parallel, torch.ones_like(directions), directions)
    t0 = (box_min - origins) / safe_dirs
    t1 = (box_max - origins) / safe_dirs
    t_lo = torch.minimum(t0, t1)
    t_hi = torch.maximum(t0, t1)
    inside_slab = (origins >= box_min) & (origins <= box_max)
    inf = torch.full_like(t_lo, float("inf"))
    # A ray parallel to a slab never crosses its planes: all t or no t.
    t_lo = torch.where(parallel, torch.where(inside_slab, -inf, inf), t_lo)
    t_hi = torch.where(parallel, torch.where(inside_slab, inf, -inf), t_hi)
    t_near = t_lo.amax(dim=-1).clamp_min(0.0)
    t_far = t_hi.amin(dim=-1)
    hit = t_far > t_near
    zero = torch.zeros_like(t_near)
    return torch.where(hit, t_near, zero), torch.where(hit, t_far, zero), hit


def rays_in_box(
    K: Float[Tensor, "*b 3 3"],
    T_world_cam: Float[Tensor, "*b 4 4"],
    uv: Float[Tensor, "*b R 2"],
    box_min: Float[Tensor, "3"],
    box_max: Float[Tensor, "3"],
    near: float = 0.0,
    far: float = float("inf"),
) -> tuple[Rays, Float[Tensor, "*b R"], Float[Tensor, "*b R"]]:
    """Pixel rays (:func:`pixel_rays`) with their sampling interval: the part of each ray
    inside the box (:func:`ray_aabb`) intersected with ``[near, far]`` along the ray.

    The one ray sampler of the volume renderers (``NeuSRenderer`` for SDF fields,
    ``render_density`` for density volumes): pass ``rays.origins``, ``rays.directions`` and
    the returned bounds. A ray that misses the box, or whose box part lies outside
    ``[near, far]``, gets ``t_far <= t_near`` (an empty interval renders nothing).

    Args:
        K, T_world_cam, uv: as :func:`pixel_rays`.
        box_min, box_max: the box corners in the rays' frame, metres.
        near, far: distance limits along the (unit) rays, metres.

    Returns:
        ``(rays, t_near, t_far)``, distances in metres.

    Raises:
        ValueError: singular ``K``, an inverted box, or ``near > far``.
    """
    if near > far:
        raise ValueError(f"rays_in_box: near ({near}) must not exceed far ({far})")
    rays = pixel_rays(K, T_world_cam, uv)
    t_near, t_far, _ = ray_aabb(rays.origins, rays.directions, box_min, box_max)
    t_near = t_near.clamp_min(near)
    t_far = torch.minimum(t_far, torch.full_like(t_far, far))
    return rays, t_near, t_far


def ray_intervals(
    t_near: Float[Tensor, "R"],
    t_far: Float[Tensor, "R"],
    num_samples: int,
    jitter: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[Float[Tensor, "R S"], Float[Tensor, "R S"]]:
    """``num_samples`` intervals tiling ``[t_near, t_far]`` of each ray (stratified): equal
    steps, or with ``jitter`` every inner edge drawn uniformly between the neighbouring step
    midpoints (the NeuS / NeRF stratified scheme). Empty rays (``t_far <= t_near``) get
    zero-length intervals, which composite to nothing.

    With :func:`rays_in_box` this is the sampler of a density volume:
    ``render.volume.render_density(sigma(o + t d), t_starts, t_ends, features)``.

    Returns:
        ``(t_starts, t_ends)``, metres.

    Raises:
        ValueError: if ``num_samples < 1``.

    >>> s, e = ray_intervals(torch.tensor([1.0]), torch.tensor([3.0]), 4)
    >>> s, e
    (tensor([[1.0000, 1.5000, 2.0000, 2.5000]]), tensor([[1.5000, 2.0000, 2.5000, 3.0000]]))
    """
    if num_samples < 1:
        raise ValueError(f"ray_intervals: num_samples must be >= 1, got {num_samples}")
    far = torch.maximum(t_far, t_near)
    u = torch.linspace(0.0, 1.0, num_samples + 1, device=t_near.device, dtype=t_near.dtype).expand(t_near.shape[0], -1)
    if jitter and num_samples > 1:
        centres = 0.5 * (u[:, 1:] + u[:, :-1])
        lo, hi = centres[:, :-1], centres[:, 1:]
        r = torch.rand(lo.shape, generator=generator, device=t_near.device, dtype=t_near.dtype)
        u = torch.cat([u[:, :1], lo + (hi - lo) * r, u[:, -1:]], dim=-1)
    edges = t_near[:, None] + (far - t_near)[:, None] * u
    return edges[:, :-1], edges[:, 1:]
