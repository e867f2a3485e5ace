"""Photometric objectives: multi-view reprojection of rendered sample points and rendered colour."""

from __future__ import annotations

from jaxtyping import Bool, Float, Int
from torch import Tensor

import torch

from selfsup.data.frames import Frames
from selfsup.losses.photometric import (
    combine_source_errors,
    normalised_weights,
    patch_error,
    project_points,
    rgb_loss,
    sample_image,
    source_error,
    unfold_patches,
    weight_in_view,
)
from selfsup.model_api import RenderedViews


def camera_neighbours(T_ego_cam: Float[Tensor, "B V 4 4"], k: int) -> Int[Tensor, "B V k"]:
    """For every camera, the ``k`` other cameras whose optical axes (camera z in the ego
    frame) make the smallest angles with its own: on a surround rig, the cameras beside it,
    whose images overlap its own.

    Raises:
        ValueError: ``k`` outside ``[1, V - 1]``.
    """
    V = T_ego_cam.shape[-3]
    if not 1 <= k <= V - 1:
        raise ValueError(f"camera_neighbours: need 1 <= k <= {V - 1} (cameras - 1), got {k}")
    axes = T_ego_cam[..., :3, 2]
    cos = axes @ axes.transpose(-1, -2)  # [B V V]
    cos = cos - 3.0 * torch.eye(V, device=cos.device, dtype=cos.dtype)  # never itself
    return cos.topk(k, dim=-1).indices


def plane_patch_points(
    points: Float[Tensor, "N R S 3"],
    normals: Float[Tensor, "N R S 3"],
    pixels: Float[Tensor, "N R 2"],
    K: Float[Tensor, "N 3 3"],
    T_ego_cam: Float[Tensor, "N 4 4"],
    offsets: Float[Tensor, "K2 2"],
    max_ratio: float = 2.0,
) -> Float[Tensor, "N R S K2 3"]:
    """Where the pixels of each sample's patch see the sample's tangent plane: the points to
    project into a source so that the patch is warped by the plane-induced homography.

    For the ray of pixel ``p`` and its sample ``x`` with surface normal ``n``, the pixel
    ``p + offsets[k]`` of the same camera looks along ``d_k = R K^-1 [p + offsets[k], 1]``
    from the camera centre ``o``; its ray meets the plane ``n . (y - x) = 0`` at ``y_k = o +
    d_k n . (x - o) / n . d_k``. ``d_k`` has unit camera z, so that parameter is ``y_k``'s
    depth; it is clamped to ``[z / max_ratio, z max_ratio]`` of the sample's depth ``z``, and
    where the normal is zero, the ray grazes the plane or the hit is behind the camera, the
    patch stays at depth ``z`` (fronto-parallel).

    Args:
        points: sample positions in the ego frame of ``T_ego_cam``, metres; each on the ray of
            its ``pixels`` entry.
        normals: SDF gradients there (any length; zero: no plane).
        pixels: the rays' pixels (u, v; centres at +0.5).
        K, T_ego_cam: the target camera (intrinsics, camera -> ego).
        offsets: the patch's pixel offsets (u, v).
        max_ratio: the bound on the depth change across a patch.

    Returns:
        ``y_k`` per sample and offset, ego frame, metres.

    Source: the plane-induced homography (Hartley & Zisserman, Multiple View Geometry,
    Sec. 13.1) as used to warp patches through a neural surface (NeuralWarp, Darmon et al.
    2022; Geo-NeuS, Fu et al. 2022).
    """
    R = T_ego_cam[:, :3, :3]
    origin = T_ego_cam[:, None, None, :3, 3]  # [N 1 1 3]
    pix = pixels[:, :, None, :] + offsets  # [N R K2 2]
    homog = torch.cat([pix, torch.ones_like(pix[..., :1])], dim=-1)
    d_cam = torch.einsum("nij,nrkj->nrki", torch.linalg.inv(K), homog)  # unit camera z
    d = torch.einsum("nij,nrkj->nrki", R, d_cam)  # [N R K2 3]
    rel = points - origin  # [N R S 3]
    z = torch.einsum("nrsc,nc->nrs", rel, R[:, :, 2])[..., None]  # sample depth [N R S 1]
    num = (rel * normals).sum(-1, keepdim=True)  # [N R S 1]
    den = torch.einsum("nrsc,nrkc->nrsk", normals, d)  # [N R S K2]
    depth = num / torch.where(den.abs() > 1e-6, den, torch.ones_like(den))
    ok = (den.abs() > 1e-6) & (depth > 0) & torch.isfinite(depth)
    depth = torch.where(ok, torch.minimum(torch.maximum(depth, z / max_ratio), z * max_ratio), z.expand_as(depth))
    return origin[..., None, :] + depth[..., None] * d[:, :, None]


def photometric_objective(
    views: RenderedViews, batch: Frames, mask: Bool[Tensor, "B V R"], reduction: str = "min",
    spatial_sources: int = 0,
    patch: int = 0,
    patch_dilation: int = 1,
    patch_warp: str = "fronto",
) -> Tensor | None:
    """Reprojection loss of the rendered sample points into the other frames (and, with
    ``spatial_sources``, the neighbouring cameras), auto-masked.

    Every sample ``x_i`` (weight ``w_i``) of a ray of frame ``f = views.frame`` is projected
    into the same camera of every other frame ``m`` of the batch (``Frames.T_ego0_cam``:
    the points are in the current ego frame), the source colour ``c_i^m`` is read bilinearly
    there, and per pixel ``e_m = 0.85 (1 - SSIM(sum_i w~_i c_i^m, I_f)) / 2 + 0.15 sum_i w~_i
    |c_i^m - I_f|`` with ``w~ = w / sum w``; the loss is the mean over counted rays of
    ``min_m e_m`` (``reduction="mean"``: the mean over the counted sources, SelfOcc's
    nuScenes setting), where a ray counts if ``mask``, enough weight projects into a source, and
    ``min_m e_m < min_m pe(I_m, I_f)`` (auto-masking against the unwarped sources). A source
    whose frame offset equals frame f's (a neighbour clamped at a sequence end) never counts.
    Exactly :func:`selfsup.losses.photometric.reprojection_loss` on the ray grid (computed
    one source at a time).

    With ``spatial_sources = k > 0`` the ``k`` cameras beside each camera
    (:func:`camera_neighbours`) at every frame of the batch, the current one included, are
    sources too (spatio-temporal reprojection; the scene is static). Their overlap with
    the target camera fixes metric scale at the rig's baselines and gives parallax where
    the ego motion gives little (along the optical axis of the front and rear cameras).
    Only the same camera's other frames enter auto-masking (an unwarped neighbouring camera
    says nothing about static pixels); where a sample lands outside a source image, that
    source does not count for the ray (``min_in_view`` of the weight must land inside).

    With ``patch = k > 0`` each sample is matched on its own: the ``k x k`` patch around
    its projection into the source (``patch_dilation`` pixels apart) is compared with the
    patch around the ray's pixel in frame f by :func:`~selfsup.losses.photometric.patch_error`
    (``0.85 (1 - SSIM) / 2`` over the patch ``+ 0.15 |centre difference|``), and ``e_m = sum_i w~_i pe_i^m``; the
    unwarped sources' patches at the ray's pixel give the auto-masking errors.
    ``patch_warp="fronto"`` reads the source patch at the same pixel offsets around the
    projection (a fronto-parallel patch); "plane" warps it through each sample's tangent plane
    (:func:`plane_patch_points`, from ``views.extras["sample_normals"]``), which fits surfaces
    seen at an angle (the demo measured no better with it: median-scaled AbsRel 0.252 against
    0.250, at 2.5x the step time). Not in
    SelfOcc: its SSIM compares the weight-blended colour on the ray grid, whose neighbours
    are rays several pixels apart, so most of the matching cue is one pixel's colour.

    Returns:
        the loss, or ``None`` for a single-frame batch without spatial sources (no source).

    Raises:
        ValueError: the views have no ``sample_points`` / ``sample_weights`` (rasterisers);
            ``spatial_sources`` not below the number of cameras.

    Source: SelfOcc (Huang et al. 2024), Sec. 3.3; monodepth2 (Godard et al. 2019), eq. 1,
    per-pixel minimum and auto-masking (eq. 5); spatial and spatio-temporal sources as in
    surround-view self-supervised depth (SurroundDepth, Wei et al. 2022; VFDepth, Kim et
    al. 2022).
    """
    if patch_warp not in ("fronto", "plane"):
        raise ValueError(f"photometric_objective: patch_warp must be 'fronto' or 'plane', got {patch_warp!r}")
    if views.sample_points is None or views.sample_weights is None:
        raise ValueError("photometric_objective: the views carry no sample_points / sample_weights (a rasteriser?)")
    B, T, V = batch.images.shape[:3]
    if T < 2 and not spatial_sources:
        return None
    f = views.frame
    N = B * V
    S = views.sample_points.shape[-2]
    rows, cols = views.grid_hw
    pixels = views.pixels.flatten(0, 1)  # [N R 2]
    target = views.grid(sample_image(batch.images[:, f].flatten(0, 1), pixels)[0].unflatten(0, (B, V)))
    pts = views.sample_points.reshape(N, -1, 3)
    T_ego0_cam = batch.T_ego0_cam() if T > 1 else batch.T_ego_cam
    offsets = batch.frame_offsets
    same_camera = torch.arange(V, device=pts.device).expand(B, V)
    # (frame, camera index per target camera [B V], valid per target [B V]) of every source.
    sources = [(t, same_camera, (offsets[:, t] != offsets[:, f])[:, None].expand(B, V)) for t in range(T) if t != f]
    n_identity = len(sources)
    if spatial_sources:
        nbrs = camera_neighbours(T_ego0_cam[:, f], spatial_sources)
        # A frame clamped to frame f at a sequence end repeats frame f's neighbours: not a source.
        sources += [(t, nbrs[..., j], ((offsets[:, t] != offsets[:, f]) | (t == f))[:, None].expand(B, V))
                    for j in range(spatial_sources) for t in range(T)]
    b_idx = torch.arange(B, device=pts.device)[:, None]
    weights = normalised_weights(views.sample_weights.reshape(N, rows, cols, S))
    if patch:
        K2 = patch * patch
        with torch.no_grad():
            # Every frame's images unfolded once ([B V 3K H W]); sources pick their cameras.
            unfolded = unfold_patches(batch.images.flatten(0, 2), patch, patch_dilation).unflatten(0, (B, T, V))
        target_patches = sample_image(unfolded[:, f].flatten(0, 1), pixels)[0]
        target_patches = target_patches.transpose(1, 2).unflatten(1, (3, K2))  # [N 3 K R]
        if patch_warp == "plane":
            normals = views.extras.get("sample_normals")
            if normals is None:
                raise ValueError('photometric_objective: patch_warp="plane" needs views.extras["sample_normals"]')
            r = patch // 2
            steps = torch.arange(-r, r + 1, device=pts.device, dtype=pts.dtype) * patch_dilation
            dv, du = torch.meshgrid(steps, steps, indexing="ij")  # row-major, as unfold_patches
            offsets = torch.stack([du.flatten(), dv.flatten()], dim=-1)
            with torch.no_grad():
                plane_pts = plane_patch_points(
                    pts.reshape(N, rows * cols, S, 3), normals.reshape(N, rows * cols, S, 3), pixels,
                    batch.K[:, f].flatten(0, 1), T_ego0_cam[:, f].flatten(0, 1), offsets)
    errors, in_view, identity = [], [], []
    for t, cams, _ in sources:
        src = batch.images[:, t][b_idx, cams].flatten(0, 1)
        with torch.no_grad():  # the sample points are detached: colours carry no gradient
            uv_src, _, in_front = project_points(
                pts, batch.K[:, t][b_idx, cams].flatten(0, 1), T_ego0_cam[:, t][b_idx, cams].flatten(0, 1))
            if not patch:
                c, inside = sample_image(src, uv_src)  # [N R*S 3]
                if len(identity) < n_identity:
                    identity.append(views.grid(sample_image(src, pixels)[0].unflatten(0, (B, V))))
            else:
                src_patches = unfolded[:, t][b_idx, cams].flatten(0, 1)
                if patch_warp == "plane":
                    K_src = batch.K[:, t][b_idx, cams].flatten(0, 1)
                    T_src = T_ego0_cam[:, t][b_idx, cams].flatten(0, 1)
                    uv_k, _, front_k = project_points(plane_pts.reshape(N, -1, 3), K_src, T_src)
                    c, inside_k = sample_image(src, uv_k)  # [N R*S*K2 3]
                    c = c.reshape(N, -1, S, K2, 3).permute(0, 4, 3, 1, 2)  # [N 3 K2 R S]
                    sample_err = patch_error(c, target_patches).reshape(N, rows, cols, S)
                    # The sample counts where its whole patch lands in front and inside.
                    inside = (inside_k & front_k).reshape(N, -1, K2).all(-1)
                else:
                    # One image at a time keeps the patch reads at one image's size (about 7 MB
                    # at the demo's 512 rays x 129 samples, instead of 43 MB for six images).
                    sample_err, inside = [], []
                    for n in range(N):
                        c, ok_n = sample_image(src_patches[n : n + 1], uv_src[n : n + 1])  # [1 R*S 3K]
                        c = c.transpose(1, 2).reshape(1, 3, K2, -1, S)  # a view: grid_sample's output is channel-first
                        sample_err.append(patch_error(c, target_patches[n : n + 1]))
                        inside.append(ok_n)
                    sample_err = torch.cat(sample_err).reshape(N, rows, cols, S)
                    inside = torch.cat(inside)
                if len(identity) < n_identity:
                    same_pixel = sample_image(src_patches, pixels)[0].transpose(1, 2).unflatten(1, (3, K2))
                    identity.append(patch_error(same_pixel[..., None], target_patches).reshape(N, rows, cols))
        seen = (in_front & inside).reshape(N, rows, cols, S)
        if patch:
            e = torch.einsum("nhws,nhws->nhw", sample_err, weights)
            ok = weight_in_view(seen, weights)
        else:
            # One source at a time: no [M N rows cols S 3] stack of every source's colours.
            e, ok = source_error(c.reshape(N, rows, cols, S, 3), weights, seen, target)
        errors.append(e)
        in_view.append(ok)
    source_valid = torch.stack([ok.reshape(N) for _, _, ok in sources])  # [M N]
    stacked_identity = torch.stack(identity) if identity else None
    return combine_source_errors(
        torch.stack(errors), torch.stack(in_view), target, None if patch else stacked_identity,
        mask.reshape(N, rows, cols), source_valid=source_valid, reduction=reduction,
        identity_errors=stacked_identity if patch else None,
    )


def rgb_objective(views: RenderedViews, batch: Frames, mask: Bool[Tensor, "B V R"]) -> Tensor:
    """Rendered-colour loss ``mean 0.85 (1 - SSIM) / 2 + 0.15 |c - I|`` on the ray grid, the
    target ``I`` read bilinearly from frame ``views.frame``'s images at the rays' pixels.

    Raises:
        ValueError: the views carry no ``rgb``.

    Source: SelfOcc (Huang et al. 2024), rendered RGB loss (0.85 SSIM + 0.15 L1, weight
    0.1); GaussianFlowOcc's optional colour rendering; see
    :func:`selfsup.losses.photometric.rgb_loss`.
    """
    if views.rgb is None:
        raise ValueError("rgb_objective: the views carry no rgb (the representation renders no colour)")
    B, _, V = batch.images.shape[:3]
    target, _ = sample_image(batch.images[:, views.frame].flatten(0, 1), views.pixels.flatten(0, 1))
    rows, cols = views.grid_hw
    return rgb_loss(views.grid(views.rgb), views.grid(target.unflatten(0, (B, V))), mask.reshape(B * V, rows, cols))
