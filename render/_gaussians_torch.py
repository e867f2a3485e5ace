"""Pure-PyTorch 3D Gaussian splatting: the CPU backend and the reference for gsplat.

Private helpers of :mod:`render.gaussians`; the public entry point is
``rasterize_gaussians``. Every rule below is the one gsplat 1.5.3's CUDA kernels apply
(``ProjectionEWA3DGSFused.cu``, ``IntersectTile.cu``, ``RasterizeToPixels3DGSFwd.cu``), so
that this path and ``backend="gsplat"`` render the same image:

- projection: EWA splatting, Jacobian of the pinhole projection evaluated at the centre
  whose x/z and y/z are clamped to 1.3x the field of view; ``eps2d`` added to the 2D
  covariance diagonal; antialiased mode multiplies opacity by
  sqrt(det(S) / det(S + eps2d I)) (Mip-Splatting compensation);
- culling: centre depth outside [near_plane, far_plane], det <= 0, opacity (after
  compensation) < 1/255, both radii <= radius_clip, or the radius box off the image;
- radius: ceil(min(3.33, sqrt(2 ln(255 opacity))) sqrt(S_ii)) pixels, the box outside of
  which alpha < 1/255, so binning into tiles never changes the image;
- compositing: pixel centres at (j + 0.5, i + 0.5); alpha = min(0.999, o exp(-q)) with
  q = 0.5 d^T S^-1 d; a Gaussian with alpha < 1/255 is skipped; Gaussians are taken front
  to back by centre depth (ties by camera-major pair order); a pixel stops before the
  first Gaussian that would bring its transmittance to <= 1e-4 (that one is excluded);
  rendered alpha = 1 - T.

One deliberate difference: gsplat also skips a Gaussian where q < 0, which for the
positive-definite blurred conic happens only by rounding at the very centre; the tiled path
evaluates q as one matmul of an expanded quadratic form (fast on CPU) and does not repeat
that test. ``rasterize_dense`` (testing reference) keeps gsplat's literal formula.
Gradients come from autograd through the same piecewise function gsplat differentiates by
hand (zero through the 0.999 clamp, the 1/255 skip and the stop rule).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint as _checkpoint

from render.geometry import quat_to_rotmat

ALPHA_THRESHOLD = 1.0 / 255.0  # gsplat ALPHA_THRESHOLD: skip / cull below this alpha
ALPHA_MAX = 0.999  # gsplat clamps a single Gaussian's alpha here
T_MIN = 1e-4  # a pixel is saturated once its transmittance would drop to <= this
RADIUS_SIGMAS = 3.33  # largest box half-size, in standard deviations


def _mm(a: Tensor, b: Tensor) -> Tensor:
    """Broadcast matrix product by multiply-and-sum: faster than bmm for 3x3 blocks on CPU."""
    return (a[..., :, :, None] * b[..., None, :, :]).sum(-2)


def quat_scale_to_half(quats: Tensor, scales: Tensor) -> Tensor:
    """R diag(s) [..., 3, 3] from wxyz quaternions (normalised here) and std-devs: the
    covariance is (R diag(s)) (R diag(s))^T."""
    return quat_to_rotmat(quats) * scales[..., None, :]


def quat_scale_to_covar(quats: Tensor, scales: Tensor) -> Tensor:
    """World covariance R diag(s^2) R^T [..., 3, 3]."""
    half = quat_scale_to_half(quats, scales)
    return _mm(half, half.transpose(-1, -2))


def project(
    means: Tensor,
    half: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    eps2d: float,
) -> dict[str, Tensor]:
    """EWA projection of Gaussians; all leading dims broadcast (e.g. [1, N] with [C, 1]).

    ``half`` [..., 3, 3] is R diag(s) (world covariance = half half^T). The 2D covariance
    is J W Sigma W^T J^T = T T^T with T = J W half (W: camera rotation, J: 2 x 3 Jacobian).
    Returns means2d [..., 2] (pixels), depth [...] (camera z of the centre), conic [..., 3]
    (upper triangle of the inverse blurred 2D covariance), cov2d [..., 2, 2] (blurred),
    det (blurred) and compensation sqrt(det_orig / det_blur) (clamped at 0).
    """
    rot = viewmats[..., :3, :3]
    means_c = (rot * means[..., None, :]).sum(-1) + viewmats[..., :3, 3]
    x, y, z = means_c.unbind(-1)
    fx, fy = Ks[..., 0, 0], Ks[..., 1, 1]
    cx, cy = Ks[..., 0, 2], Ks[..., 1, 2]
    # gsplat clamps the point at which the Jacobian is evaluated to 1.3x the field of view:
    # off-screen Gaussians close to the image plane would otherwise blow up.
    lim_x_pos = (width - cx) / fx + 0.3 * (0.5 * width / fx)
    lim_x_neg = cx / fx + 0.3 * (0.5 * width / fx)
    lim_y_pos = (height - cy) / fy + 0.3 * (0.5 * height / fy)
    lim_y_neg = cy / fy + 0.3 * (0.5 * height / fy)
    tx = z * torch.minimum(torch.maximum(x / z, -lim_x_neg), lim_x_pos)
    ty = z * torch.minimum(torch.maximum(y / z, -lim_y_neg), lim_y_pos)
    # Rows of J W: J = [[fx/z, 0, -fx tx/z^2], [0, fy/z, -fy ty/z^2]].
    row_x = (fx / z)[..., None] * rot[..., 0, :] - (fx * tx / (z * z))[..., None] * rot[..., 2, :]
    row_y = (fy / z)[..., None] * rot[..., 1, :] - (fy * ty / (z * z))[..., None] * rot[..., 2, :]
    t = _mm(torch.stack([row_x, row_y], dim=-2), half)
    c00 = (t[..., 0, :] * t[..., 0, :]).sum(-1)
    c01 = (t[..., 0, :] * t[..., 1, :]).sum(-1)
    c11 = (t[..., 1, :] * t[..., 1, :]).sum(-1)
    det_orig = c00 * c11 - c01 * c01
    c00, c11 = c00 + eps2d, c11 + eps2d
    det = c00 * c11 - c01 * c01
    det_safe = torch.where(det > 0, det, torch.ones_like(det))
    conic = torch.stack([c11 / det_safe, -c01 / det_safe, c00 / det_safe], dim=-1)
    compensation = torch.sqrt(torch.clamp(det_orig / det_safe, min=0.0))
    means2d = torch.stack([fx * x / z + cx, fy * y / z + cy], dim=-1)
    cov2d = torch.stack([c00, c01, c01, c11], dim=-1).reshape(c00.shape + (2, 2))
    return dict(means2d=means2d, depth=z, conic=conic, cov2d=cov2d, det=det, compensation=compensation)


@torch.no_grad()
def radii_and_visibility(
    proj: dict[str, Tensor],
    opacities: Tensor,
    width: int,
    height: int,
    near_plane: float,
    far_plane: float,
    radius_clip: float,
    antialiased: bool,
) -> tuple[Tensor, Tensor]:
    """gsplat's culling and opacity-aware radius: (radii int32 [..., 2], visible bool [...])."""
    z, det = proj["depth"], proj["det"]
    opac = opacities * proj["compensation"] if antialiased else opacities.expand_as(z)
    extend = torch.sqrt(2.0 * torch.log(torch.clamp(opac, min=ALPHA_THRESHOLD) / ALPHA_THRESHOLD))
    extend = torch.clamp(extend, max=RADIUS_SIGMAS)
    var = torch.diagonal(proj["cov2d"], dim1=-2, dim2=-1).clamp(min=0.0)
    radius = torch.ceil(extend[..., None] * torch.sqrt(var))
    m = proj["means2d"]
    visible = (
        (z >= near_plane)
        & (z <= far_plane)
        & (det > 0)
        & (opac >= ALPHA_THRESHOLD)
        & ~((radius[..., 0] <= radius_clip) & (radius[..., 1] <= radius_clip))
        & (m[..., 0] + radius[..., 0] > 0)
        & (m[..., 0] - radius[..., 0] < width)
        & (m[..., 1] + radius[..., 1] > 0)
        & (m[..., 1] - radius[..., 1] < height)
    )
    visible &= torch.isfinite(radius).all(-1) & torch.isfinite(m).all(-1)
    radii = torch.where(visible[..., None], radius, torch.zeros_like(radius)).to(torch.int32)
    return radii, visible


def project_visible(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    near_plane: float,
    far_plane: float,
    radius_clip: float,
    eps2d: float,
    antialiased: bool,
) -> dict[str, Tensor]:
    """Cull all (camera, Gaussian) pairs without autograd, then project the visible ones.

    Re-projecting only the visible pairs keeps the autograd graph small and keeps culled
    pairs (behind the camera: z <= 0 divides by zero) out of the backward pass entirely.

    Returns camera_ids, gaussian_ids [M] (camera-major, like gsplat's packed mode), radii
    (int32 [C, N, 2], 0 where culled), means2d [M, 2], depth [M], conic [M, 3],
    opacity [M] (times the compensation when antialiased), pair_radii [M, 2].
    """
    with torch.no_grad():
        half = quat_scale_to_half(quats, scales)
        proj_all = project(means[None], half[None], viewmats[:, None], Ks[:, None], width, height, eps2d)
        radii, visible = radii_and_visibility(
            proj_all, opacities[None], width, height, near_plane, far_plane, radius_clip, antialiased
        )
    cam_ids, gs_ids = visible.nonzero(as_tuple=True)
    half = quat_scale_to_half(quats[gs_ids], scales[gs_ids])
    proj = project(means[gs_ids], half, viewmats[cam_ids], Ks[cam_ids], width, height, eps2d)
    opac = opacities[gs_ids]
    if antialiased:
        opac = opac * proj["compensation"]
    return dict(
        camera_ids=cam_ids,
        gaussian_ids=gs_ids,
        radii=radii,
        pair_radii=radii[cam_ids, gs_ids],
        means2d=proj["means2d"],
        depth=proj["depth"],
        conic=proj["conic"],
        opacity=opac,
    )


@torch.no_grad()
def intersect_tiles(
    means2d: Tensor,
    radii: Tensor,
    depth: Tensor,
    camera_ids: Tensor,
    num_cameras: int,
    tile_size: int,
    tiles_x: int,
    tiles_y: int,
) -> tuple[Tensor, Tensor]:
    """Per-tile lists of pairs, each sorted front to back (gsplat ``isect_tiles``).

    Returns pair ids [I] grouped by global tile id (camera, tile row, tile column) and, within
    a tile, by increasing depth (stable, so ties keep pair order), and counts [C*TY*TX].
    """
    order = torch.sort(depth, stable=True).indices
    centre = means2d[order] / tile_size
    rad = radii[order].to(means2d.dtype) / tile_size
    lo = torch.floor(centre - rad)
    hi = torch.ceil(centre + rad)
    lim = torch.tensor([tiles_x, tiles_y], device=means2d.device, dtype=means2d.dtype)
    lo = torch.minimum(lo.clamp(min=0), lim).long()
    hi = torch.minimum(hi.clamp(min=0), lim).long()
    span = hi - lo
    n_tiles = span[:, 0] * span[:, 1]
    pair = torch.repeat_interleave(torch.arange(order.numel(), device=order.device), n_tiles)
    first = torch.cumsum(n_tiles, 0) - n_tiles
    k = torch.arange(pair.numel(), device=order.device) - first[pair]
    tx = lo[pair, 0] + k % span[pair, 0].clamp(min=1)
    ty = lo[pair, 1] + k // span[pair, 0].clamp(min=1)
    tile = (camera_ids[order][pair] * tiles_y + ty) * tiles_x + tx
    by_tile = torch.sort(tile, stable=True).indices
    counts = torch.bincount(tile, minlength=num_cameras * tiles_y * tiles_x)
    return order[pair[by_tile]], counts


def _composite_round(
    coeffs: Tensor,
    feats: Tensor,
    trans: Tensor,
    done: Tensor,
    basis: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """Composite one chunk of K Gaussians per tile into the tile's P pixels.

    coeffs [A, K, 6] and basis [P, 6]: ``basis @ coeffs^T`` is q - ln(opacity) per pixel and
    Gaussian (see :func:`_quadratic_coeffs`), so alpha = exp(-that) in one matmul;
    feats [A, K, D]; trans [A, P] transmittance before the chunk; done [A, P] pixel already
    saturated. Returns the features [A, P, D] the chunk adds, transmittance after it, and
    the new done flags.
    """
    alpha = torch.clamp(torch.exp(-torch.matmul(basis, coeffs.transpose(1, 2))), max=ALPHA_MAX)
    alpha = torch.where(alpha >= ALPHA_THRESHOLD, alpha, 0.0)
    keep = 1.0 - alpha
    t_after = trans[..., None] * torch.cumprod(keep, dim=-1)
    t_before = torch.cat([trans[..., None], t_after[..., :-1]], dim=-1)
    # Transmittance only decreases, so "after <= T_MIN" marks exactly the Gaussian that
    # would saturate the pixel and everything behind it: all of them are excluded.
    live = (t_after > T_MIN) & ~done[..., None]
    weights = torch.where(live, alpha * t_before, 0.0)
    trans_new = trans * torch.where(live, keep, 1.0).prod(dim=-1)
    done_new = done | (t_after[..., -1] <= T_MIN)
    return torch.bmm(weights, feats), trans_new, done_new


def _quadratic_coeffs(mean: Tensor, conic: Tensor, opacity: Tensor, valid: Tensor) -> Tensor:
    """Coefficients of q(u, v) - ln(o) in the basis (u^2, v^2, uv, u, v, 1).

    With d = (mx - u, my - v) and conic (a, b, c): q = a/2 dx^2 + c/2 dy^2 + b dx dy, the
    exponent of gsplat's alpha = o exp(-q). Padding entries get a constant of 1e4
    (alpha = exp(-1e4) = 0). mean [..., 2] in the same frame as (u, v).
    """
    mx, my = mean.unbind(-1)
    ha, b, hc = 0.5 * conic[..., 0], conic[..., 1], 0.5 * conic[..., 2]
    const = ha * mx * mx + hc * my * my + b * mx * my - torch.log(opacity)
    const = torch.where(valid, const, 1e4)
    return torch.stack([ha, hc, b, -2 * ha * mx - b * my, -2 * hc * my - b * mx, const], dim=-1)


def rasterize_tiles(
    means2d: Tensor,
    conic: Tensor,
    opacity: Tensor,
    feats: Tensor,
    sorted_pairs: Tensor,
    counts: Tensor,
    num_cameras: int,
    width: int,
    height: int,
    tile_size: int,
    tiles_x: int,
    tiles_y: int,
    chunk_size: int,
    use_checkpoint: bool,
) -> tuple[Tensor, Tensor]:
    """Composite per-tile depth-sorted lists in rounds of ``chunk_size`` Gaussians per tile.

    Round r takes entries [r K, (r + 1) K) of every tile that still has entries and
    unsaturated pixels; only those tiles' state (accumulated features, transmittance, done
    flags) is carried, and a tile's final state is stored when it retires. The Python loop
    runs over rounds only. With ``use_checkpoint`` each round is recomputed in backward,
    bounding autograd memory to one round plus the carried state.

    Returns features [C, H, W, D] and alpha [C, H, W].
    """
    device, dtype = means2d.device, means2d.dtype
    n_tiles = num_cameras * tiles_y * tiles_x
    n_pix = tile_size * tile_size
    n_ch = feats.shape[-1]
    starts = torch.cumsum(counts, 0) - counts
    ends = starts + counts

    # Pixel coordinates relative to the tile centre keep the expanded quadratic form's
    # terms small (float32 cancellation).
    local = torch.arange(n_pix, device=device)
    u = (local % tile_size).to(dtype) + 0.5 - 0.5 * tile_size
    v = (local // tile_size).to(dtype) + 0.5 - 0.5 * tile_size
    basis = torch.stack([u * u, v * v, u * v, u, v, torch.ones_like(u)], dim=-1)
    tile_ids = torch.arange(n_tiles, device=device)
    origin = torch.stack([(tile_ids % tiles_x) * tile_size, ((tile_ids // tiles_x) % tiles_y) * tile_size], -1)

    active = tile_ids[counts > 0]
    # Pixels past the image border start "done" so that edge tiles can retire early.
    done = ((origin[active, None, 0] + local % tile_size) >= width) | (
        (origin[active, None, 1] + local // tile_size) >= height
    )
    trans = torch.ones(active.numel(), n_pix, dtype=dtype, device=device)
    acc = torch.zeros(active.numel(), n_pix, n_ch, dtype=dtype, device=device)
    centre = origin.to(dtype) + 0.5 * tile_size
    k_range = torch.arange(chunk_size, device=device)
    retired_ids, retired_acc, retired_trans = [], [], []
    r = 0
    while active.numel() > 0:
        idx = starts[active, None] + r * chunk_size + k_range
        valid = idx < ends[active, None]
        # Padding slots point at the tile's first entry (active tiles have one) and are masked.
        pairs = sorted_pairs[torch.where(valid, idx, starts[active, None])]
        coeffs = _quadratic_coeffs(means2d[pairs] - centre[active, None], conic[pairs], opacity[pairs], valid)
        args = (coeffs, feats[pairs], trans, done, basis)
        if use_checkpoint and torch.is_grad_enabled():
            contrib, trans, done = _checkpoint(_composite_round, *args, use_reentrant=False)
        else:
            contrib, trans, done = _composite_round(*args)
        acc = acc + contrib
        r += 1
        remaining = (counts[active] > r * chunk_size) & ~done.all(dim=1)
        if not remaining.all():
            retired_ids.append(active[~remaining])
            retired_acc.append(acc[~remaining])
            retired_trans.append(trans[~remaining])
            active, acc, trans, done = active[remaining], acc[remaining], trans[remaining], done[remaining]

    ids = torch.cat(retired_ids) if retired_ids else tile_ids[:0]
    out = torch.zeros(n_tiles, n_pix, n_ch, dtype=dtype, device=device)
    trans_all = torch.ones(n_tiles, n_pix, dtype=dtype, device=device)
    if retired_ids:
        out = out.index_copy(0, ids, torch.cat(retired_acc))
        trans_all = trans_all.index_copy(0, ids, torch.cat(retired_trans))

    def to_image(x: Tensor) -> Tensor:
        x = x.reshape(num_cameras, tiles_y, tiles_x, tile_size, tile_size, -1)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(num_cameras, tiles_y * tile_size, tiles_x * tile_size, -1)
        return x[:, :height, :width]

    return to_image(out), to_image(1.0 - trans_all)[..., 0]


def rasterize_dense(
    means2d: Tensor,
    conic: Tensor,
    opacity: Tensor,
    feats: Tensor,
    depth: Tensor,
    camera_ids: Tensor,
    num_cameras: int,
    width: int,
    height: int,
) -> tuple[Tensor, Tensor]:
    """Brute force: every visible pair against every pixel, one Gaussian at a time.

    Testing reference for :func:`rasterize_tiles`: no tiles, no chunks, a plain sequential
    front-to-back loop with the same per-Gaussian rules. Returns features [C, H, W, D], alpha
    [C, H, W].
    """
    dtype, device = means2d.dtype, means2d.device
    jj, ii = torch.meshgrid(
        torch.arange(width, device=device), torch.arange(height, device=device), indexing="xy"
    )
    pix = torch.stack([jj, ii], dim=-1).reshape(-1, 2).to(dtype) + 0.5
    images, alphas = [], []
    for cam in range(num_cameras):
        sel = (camera_ids == cam).nonzero(as_tuple=True)[0]
        sel = sel[torch.sort(depth[sel], stable=True).indices]
        trans = torch.ones(pix.shape[0], dtype=dtype, device=device)
        done = torch.zeros(pix.shape[0], dtype=torch.bool, device=device)
        acc = torch.zeros(pix.shape[0], feats.shape[-1], dtype=dtype, device=device)
        for g in sel.tolist():
            d = means2d[g] - pix
            c = conic[g]
            q = 0.5 * (c[0] * d[:, 0] ** 2 + c[2] * d[:, 1] ** 2) + c[1] * d[:, 0] * d[:, 1]
            alpha = torch.clamp(opacity[g] * torch.exp(-q), max=ALPHA_MAX)
            used = (q >= 0) & (alpha >= ALPHA_THRESHOLD) & ~done
            next_t = trans * (1.0 - alpha)
            stop = used & (next_t <= T_MIN)
            take = used & ~stop
            acc = acc + torch.where(take, alpha * trans, torch.zeros_like(trans))[:, None] * feats[g]
            trans = torch.where(take, next_t, trans)
            done = done | stop
        images.append(acc.reshape(height, width, -1))
        alphas.append((1.0 - trans).reshape(height, width))
    return torch.stack(images), torch.stack(alphas)


def num_tiles(width: int, height: int, tile_size: int) -> tuple[int, int]:
    """(tiles along x, tiles along y) covering the image."""
    return math.ceil(width / tile_size), math.ceil(height / tile_size)
