"""Evaluation drivers shared by ``eval_depth.py``, ``eval_novel_depth.py`` and the demo:
models in, metric accumulators from ``eval/`` out."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

import contextlib

import torch.nn.functional as F

from eval.depth import DepthMetricAccumulator, PointDepthAccumulator, distance_bin
from selfsup.camera import project_points, scale_intrinsics
from selfsup.data.frames import Frames, collate_frames
from selfsup.model_api import OccupancyModel


@dataclass
class LidarDepth:
    """LiDAR depth targets of one camera image: pixel indices and camera depth (metres)."""

    rows: Int[Tensor, "M"]
    cols: Int[Tensor, "M"]
    depth: Float[Tensor, "M"]
    uv: Float[Tensor, "M 2"] | None = None  # continuous pixel coordinates (centres at +0.5)


def project_lidar(
    points_ego: Float[Tensor, "P 3"],
    K: Float[Tensor, "3 3"],
    T_ego_cam: Float[Tensor, "4 4"],
    hw: tuple[int, int],
    min_depth: float,
    max_depth: float,
) -> LidarDepth:
    """Project LiDAR points (ego frame) into a camera; keep those inside the image with
    ``min_depth < depth < max_depth``; depth is camera z in metres, pixel = floor(uv)."""
    uv, z, in_front = project_points(points_ego, K, T_ego_cam, min_depth)
    col, row = uv[:, 0].floor().long(), uv[:, 1].floor().long()
    keep = in_front & (z < max_depth) & (col >= 0) & (col < hw[1]) & (row >= 0) & (row < hw[0])
    return LidarDepth(rows=row[keep], cols=col[keep], depth=z[keep], uv=uv[keep])


def frame_lidar_targets(
    batch: Frames, t: int, depth_hw: tuple[int, int], min_depth: float, max_depth: float
) -> tuple[Float[Tensor, "1 V 3 3"], list[LidarDepth]]:
    """Intrinsics of frame ``t``'s cameras at ``depth_hw`` (first sample of ``batch``) and the
    LiDAR depth targets of frame ``t`` in each of them."""
    K = scale_intrinsics(batch.K[:, t], tuple(batch.images.shape[-2:]), depth_hw)
    targets = [
        project_lidar(batch.points_ego[0][t], K[0, v], batch.T_ego_cam[0, t, v], depth_hw, min_depth, max_depth)
        for v in range(K.shape[1])
    ]
    return K, targets


DEPTH_PROTOCOLS: tuple[str, ...] = ("selfocc", "gaussianflowocc", "gaussianflowocc_exact")
GAUSSIANFLOWOCC_MAX_GT_DEPTH = 40.0  # its LiDAR targets keep depth <= 40 m


@contextlib.contextmanager
def _accumulated_depth(model: OccupancyModel):
    """Make ``model.render_depth`` return accumulated depth sum_i w_i z_i (GaussianFlowOcc
    evaluates the raw 'D' channel of gsplat's RGB+D) for the duration."""
    if not hasattr(model, "eval_depth"):
        raise ValueError(
            f"depth protocol 'gaussianflowocc*' needs accumulated depth; {type(model).__name__} has no "
            "'eval_depth' option (only GaussianOcc renders it)"
        )
    old = model.eval_depth
    model.eval_depth = "accumulated"
    try:
        yield
    finally:
        model.eval_depth = old


def _bilinear(depth: Float[Tensor, "H W"], uv: Float[Tensor, "M 2"], align_corners: bool) -> Float[Tensor, "M"]:
    """Bilinear samples of a depth image at continuous pixel coordinates, normalised as
    GaussianFlowOcc does (``uv / (W, H) * 2 - 1``) for either ``align_corners``."""
    h, w = depth.shape
    grid = uv / torch.tensor([w, h], dtype=uv.dtype, device=uv.device) * 2 - 1
    out = F.grid_sample(depth[None, None].to(uv.dtype), grid[None, None], mode="bilinear", align_corners=align_corners)
    return out[0, 0, 0]


@torch.no_grad()
def evaluate_depth_gaussianflowocc(
    model: OccupancyModel,
    dataset,
    depth_hw: tuple[int, int],
    exact: bool = False,
    device: torch.device | str = "cpu",
    indices: list[int] | None = None,
) -> dict:
    """Depth of the current frame under GaussianFlowOcc's own protocol (``tools/eval_depth.py``,
    ``mmdet3d/apis/test_depth.py`` at commit 0ad693e): accumulated depth rendered at
    ``depth_hw`` (it uses 256 x 704), LiDAR points with depth in (1e-3, 40] m, the
    prediction sampled bilinearly at each point's continuous pixel position, clamped to
    [1e-3, 80] m, raw only (no median scaling). ``exact=False`` (its default): points of
    all cameras of a sample pooled, metrics averaged over samples, ``align_corners=True``;
    ``exact=True`` (``--exact``): pooled over every point of the split,
    ``align_corners=False``.

    Returns:
        {"overall": {"raw": {"all": metrics, "bins": ...}}, "per_camera": {}, "maps": []}.

    Raises:
        ValueError: the model cannot render accumulated depth.
    """
    model.eval()
    indices = list(range(len(dataset))) if indices is None else indices
    acc = PointDepthAccumulator() if exact else DepthMetricAccumulator(eval_types=("raw",))
    with _accumulated_depth(model):
        for i in indices:
            batch: Frames = collate_frames([dataset[i]]).to(device)
            K, targets = frame_lidar_targets(batch, 0, depth_hw, 1e-3, GAUSSIANFLOWOCC_MAX_GT_DEPTH + 1e-6)
            depth = model.render_depth(batch, K, batch.T_ego_cam[:, 0], *depth_hw)[0]
            preds = [_bilinear(depth[v], t.uv, align_corners=not exact) for v, t in enumerate(targets) if t.depth.numel()]
            gts = [t.depth for t in targets if t.depth.numel()]
            if not gts:
                continue
            if exact:
                for p, g in zip(preds, gts):
                    acc.update(p.double().cpu(), g.double().cpu())
            else:
                acc.update(torch.cat(preds).double().cpu(), torch.cat(gts).double().cpu())
    return {"overall": acc.compute(), "per_camera": {}, "maps": []}


@torch.no_grad()
def evaluate_depth(
    model: OccupancyModel | None,
    dataset,
    depth_hw: tuple[int, int],
    min_depth: float = 1e-3,
    max_depth: float = 80.0,
    device: torch.device | str = "cpu",
    indices: list[int] | None = None,
    constant_depth: float | None = None,
    keep_maps: bool = False,
    predicted_maps: list[Float[Tensor, "V h w"]] | None = None,
) -> dict:
    """Render depth of the current frame of each sample and score it against its LiDAR.

    Depth is rendered at ``depth_hw`` (intrinsics scaled accordingly); each LiDAR point is
    compared with the rendered pixel it falls in. Metrics follow ``eval.depth`` (SelfOcc:
    per image, averaged over images, raw and median-scaled). With ``constant_depth`` the
    model is not run and every pixel predicts that depth (a baseline). With
    ``predicted_maps`` (one ``[V, h, w]`` map per evaluated sample, metres) the model is not
    run and those maps are scored; LiDAR points on NaN pixels are left out (``coverage``).

    Returns:
        {"overall": accumulator result, "per_camera": {name: result}, "maps": [...] (if
        ``keep_maps``: per sample [V, h, w] numpy depth maps), "coverage": fraction of the
        LiDAR points scored}.

    Raises:
        ValueError: ``predicted_maps`` of the wrong length or shape; no model and neither
            ``constant_depth`` nor ``predicted_maps``.
    """
    if model is not None:
        model.eval()
    elif constant_depth is None and predicted_maps is None:
        raise ValueError("evaluate_depth: model is None; pass constant_depth or predicted_maps")
    indices = list(range(len(dataset))) if indices is None else indices
    if predicted_maps is not None and len(predicted_maps) != len(indices):
        raise ValueError(f"evaluate_depth: {len(predicted_maps)} predicted maps for {len(indices)} samples")
    overall = DepthMetricAccumulator()
    per_camera: dict[str, DepthMetricAccumulator] = {}
    maps = []
    scored = total = 0
    for j, i in enumerate(indices):
        batch: Frames = collate_frames([dataset[i]]).to(device)
        K, targets = frame_lidar_targets(batch, 0, depth_hw, min_depth, max_depth)
        if predicted_maps is not None:
            depth = torch.as_tensor(predicted_maps[j], device=device)
            if tuple(depth.shape) != (K.shape[1], *depth_hw):
                raise ValueError(f"evaluate_depth: predicted map {j} has shape {tuple(depth.shape)}, "
                                 f"expected {(K.shape[1], *depth_hw)}")
        elif constant_depth is None:
            depth = model.render_depth(batch, K, batch.T_ego_cam[:, 0], *depth_hw)[0]
        else:
            depth = torch.full((K.shape[1], *depth_hw), float(constant_depth), device=device)
        if keep_maps:
            maps.append(depth.cpu().numpy())
        for v, (name, target) in enumerate(zip(batch.camera_names, targets)):
            total += target.depth.numel()
            pred, gt = depth[v, target.rows, target.cols], target.depth
            keep = torch.isfinite(pred)
            pred, gt = pred[keep], gt[keep]
            if gt.numel() == 0:
                continue
            scored += gt.numel()
            overall.update(pred.double().cpu(), gt.double().cpu())
            per_camera.setdefault(name, DepthMetricAccumulator()).update(pred.double().cpu(), gt.double().cpu())
    return {
        "overall": overall.compute(),
        "per_camera": {k: acc.compute() for k, acc in per_camera.items()},
        "maps": maps,
        "coverage": scored / max(total, 1),
    }


@torch.no_grad()
def neighbour_lidar_depth(
    batch: Frames, depth_hw: tuple[int, int], min_depth: float = 1e-3, max_depth: float = 80.0
) -> Float[Tensor, "V h w"]:
    """Depth of the current frame's cameras from the LiDAR of its *other* frames: every
    neighbour frame's points moved into the current ego frame by the poses
    (``T_ego0_ego_t``) and z-buffered (nearest point per pixel, camera z in metres); NaN where
    no point falls. A cheap baseline that sees real geometry but not the scored frame's
    LiDAR (first sample of ``batch``; static-world assumption: moving objects smear).

    Raises:
        ValueError: the sample has no neighbour frame with LiDAR points.
    """
    T_ego0_global = torch.linalg.inv(batch.T_global_ego[0, 0].double())
    clouds = []
    for t in range(1, batch.T_global_ego.shape[1]):
        pts = batch.points_ego[0][t]
        if int(batch.frame_offsets[0, t]) == 0 or pts.numel() == 0:
            continue
        T = T_ego0_global @ batch.T_global_ego[0, t].double()
        clouds.append(pts.double() @ T[:3, :3].T + T[:3, 3])
    if not clouds:
        raise ValueError("neighbour_lidar_depth: the sample has no neighbour frame with LiDAR points")
    src = torch.cat(clouds).float()
    K = scale_intrinsics(batch.K[:, 0], tuple(batch.images.shape[-2:]), depth_hw)  # never reads frame 0's LiDAR
    imgs = torch.stack([zbuffer_depth(src, K[0, v], batch.T_ego_cam[0, 0, v], depth_hw, min_depth, max_depth)
                        for v in range(K.shape[1])])
    return torch.where(imgs > 0, imgs, torch.full_like(imgs, float("nan")))


@torch.no_grad()
def evaluate_novel_depth(
    model: OccupancyModel,
    dataset,
    depth_hw: tuple[int, int],
    min_depth: float = 1e-3,
    max_depth: float = 80.0,
    device: torch.device | str = "cpu",
    indices: list[int] | None = None,
    keep_maps: list | None = None,
) -> dict:
    """Novel depth synthesis (SelfOcc protocol): from the current frame's representation,
    render depth at the camera poses of each neighbouring frame and score it against that
    frame's LiDAR, binned by ceil(distance between the frames' ego origins, metres).

    ``keep_maps``: a list that receives every rendered target depth image (numpy [h, w],
    in the order targets are scored).

    Returns:
        the ``DepthMetricAccumulator.compute()`` result with one bin per distance.
    """
    model.eval()
    indices = list(range(len(dataset))) if indices is None else indices
    acc = DepthMetricAccumulator()
    for i in indices:
        batch: Frames = collate_frames([dataset[i]]).to(device)
        T_ego0_cam = batch.T_ego0_cam()  # [1, T, V, 4, 4]
        T_ego0_ego = torch.linalg.inv(batch.T_global_ego[:, :1]) @ batch.T_global_ego  # [1, T, 4, 4]
        for t in range(1, batch.images.shape[1]):
            if int(batch.frame_offsets[0, t]) == 0:
                continue  # a clamped neighbour that is the current frame itself
            K, targets = frame_lidar_targets(batch, t, depth_hw, min_depth, max_depth)
            depth = model.render_depth(batch, K, T_ego0_cam[:, t], *depth_hw)[0]
            if keep_maps is not None:
                keep_maps.extend(depth[v].cpu().numpy() for v in range(depth.shape[0]))
            bin_key = distance_bin(float(torch.linalg.norm(T_ego0_ego[0, t, :3, 3])))
            for v, target in enumerate(targets):
                if target.depth.numel():
                    acc.update(depth[v, target.rows, target.cols].double().cpu(), target.depth.double().cpu(), bin_key)
    return acc.compute()


def zbuffer_depth(
    points_ego: Float[Tensor, "P 3"],
    K: Float[Tensor, "3 3"],
    T_ego_cam: Float[Tensor, "4 4"],
    hw: tuple[int, int],
    min_depth: float,
    max_depth: float,
) -> Float[Tensor, "H W"]:
    """Depth image of a point cloud seen by a camera: the nearest point per pixel (camera z,
    metres), 0 where no point falls."""
    t = project_lidar(points_ego, K, T_ego_cam, hw, min_depth, max_depth)
    flat = torch.full((hw[0] * hw[1],), float("inf"), dtype=t.depth.dtype, device=t.depth.device)
    flat = flat.scatter_reduce(0, t.rows * hw[1] + t.cols, t.depth, reduce="amin")
    return torch.where(torch.isinf(flat), torch.zeros_like(flat), flat).reshape(hw)


@torch.no_grad()
def novel_depth_baselines(
    dataset,
    depth_hw: tuple[int, int],
    min_depth: float = 1e-3,
    max_depth: float = 80.0,
    indices: list[int] | None = None,
    keep_maps: bool = False,
) -> dict:
    """Two cheap baselines for novel depth synthesis on the same targets as
    :func:`evaluate_novel_depth` (every neighbour frame t >= 1 of each sample).

    - "lidar_copy": the LiDAR of every *current* frame of the evaluated samples of that scene
      (the frames the model encodes; a target frame's own LiDAR is never used, nor any
      frame at the target's time), moved into the target camera by the poses and z-buffered
      (nearest point per pixel). Scored on the target points it covers; ``coverage`` is
      their fraction. "lidar_copy_filled" fills the uncovered pixels with the constant below
      and scores every point.
    - "constant": the median depth of those same current frames' LiDAR in their own cameras,
      everywhere.

    Returns:
        {"lidar_copy": result, "lidar_copy_filled": result, "constant": result,
        "constant_depth_m": float, "coverage": float, "maps": [...]}; results in the layout
        of ``DepthMetricAccumulator.compute()``; ``maps`` (with ``keep_maps``) per target
        image a dict of numpy depth images "lidar_copy" and "target" (the target LiDAR).

    Raises:
        ValueError: no LiDAR point in any current frame.
    """
    indices = list(range(len(dataset))) if indices is None else indices
    samples = [collate_frames([dataset[i]]) for i in indices]
    clouds: dict[str, list[tuple[float, Tensor]]] = {}
    values = []
    for b in samples:
        T = b.T_global_ego[0, 0].double()
        pts = b.points_ego[0][0].double()
        clouds.setdefault(b.scene_names[0], []).append((float(b.timestamps[0, 0]), pts @ T[:3, :3].T + T[:3, 3]))
        _, own = frame_lidar_targets(b, 0, depth_hw, min_depth, max_depth)
        values += [t.depth for t in own]
    all_depth = torch.cat(values) if values else torch.zeros(0)
    if all_depth.numel() == 0:
        raise ValueError("novel_depth_baselines: no LiDAR point of a current frame falls into its images")
    constant = float(all_depth.median())
    copy, filled, const = DepthMetricAccumulator(), DepthMetricAccumulator(), DepthMetricAccumulator()
    covered_points = total_points = 0
    maps = []
    for b in samples:
        T_ego0_cam = b.T_ego0_cam()
        T_ego0_ego = torch.linalg.inv(b.T_global_ego[:, :1]) @ b.T_global_ego
        T_ego0_global = torch.linalg.inv(b.T_global_ego[0, 0].double())
        for t in range(1, b.images.shape[1]):
            if int(b.frame_offsets[0, t]) == 0:
                continue
            t_time = float(b.timestamps[0, t])
            src = [p for time, p in clouds[b.scene_names[0]] if abs(time - t_time) > 1e-6]
            if not src:
                continue
            src_ego0 = torch.cat(src) @ T_ego0_global[:3, :3].T + T_ego0_global[:3, 3]
            K, targets = frame_lidar_targets(b, t, depth_hw, min_depth, max_depth)
            bin_key = distance_bin(float(torch.linalg.norm(T_ego0_ego[0, t, :3, 3])))
            for v, target in enumerate(targets):
                if not target.depth.numel():
                    continue
                img = zbuffer_depth(src_ego0.float(), K[0, v], T_ego0_cam[0, t, v], depth_hw, min_depth, max_depth)
                pred = img[target.rows, target.cols]
                gt = target.depth
                cov = pred > 0
                covered_points += int(cov.sum())
                total_points += gt.numel()
                if cov.any():
                    copy.update(pred[cov].double(), gt[cov].double(), bin_key)
                filled.update(torch.where(cov, pred, torch.full_like(pred, constant)).double(), gt.double(), bin_key)
                const.update(torch.full_like(gt, constant).double(), gt.double(), bin_key)
                if keep_maps:
                    target_img = torch.zeros(depth_hw)
                    target_img[target.rows, target.cols] = gt
                    maps.append({"lidar_copy": img.numpy(), "target": target_img.numpy()})
    return {
        "lidar_copy": copy.compute(), "lidar_copy_filled": filled.compute(), "constant": const.compute(),
        "constant_depth_m": constant, "coverage": covered_points / max(total_points, 1), "maps": maps,
    }  # fmt: skip


def format_depth_table(result: dict, title: str) -> str:
    """A fixed-width table of raw and median-scaled metrics (overall and per camera)."""
    names = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3")
    lines = [title, f"{'':24s}" + "".join(f"{n:>10s}" for n in names)]
    rows = [("overall", result["overall"])] + sorted(result.get("per_camera", {}).items())
    for kind in ("raw", "median"):
        for name, res in rows:
            if kind in res:
                m = res[kind]["all"]
                lines.append(f"{kind + ' ' + name:24s}" + "".join(f"{m[n]:10.4f}" for n in names))
    return "\n".join(lines)


def median_lidar_depth(dataset, depth_hw, min_depth=1e-3, max_depth=80.0, indices=None) -> float:
    """Median LiDAR depth over the evaluated images: the constant of the constant-depth baseline."""
    values = []
    for i in list(range(len(dataset))) if indices is None else indices:
        _, targets = frame_lidar_targets(collate_frames([dataset[i]]), 0, depth_hw, min_depth, max_depth)
        values += [target.depth for target in targets]
    all_depth = torch.cat(values)
    if all_depth.numel() == 0 or math.isnan(float(all_depth.median())):
        raise ValueError("no LiDAR point falls into any evaluated image")
    return float(all_depth.median())


def fill_nearest(depth: Float[Tensor, "V h w"]) -> Float[Tensor, "V h w"]:
    """Fill the NaN pixels of each depth image with the value of the nearest finite pixel
    (Euclidean distance in pixels; ``scipy.ndimage.distance_transform_edt``). Images with no
    finite pixel stay NaN. Turns a sparse LiDAR copy into a dense baseline."""
    import numpy as np
    from scipy.ndimage import distance_transform_edt

    out = depth.clone()
    for v in range(depth.shape[0]):
        img = depth[v].cpu().numpy()
        missing = ~np.isfinite(img)
        if missing.all() or not missing.any():
            continue
        _, (rows, cols) = distance_transform_edt(missing, return_indices=True)
        out[v] = torch.from_numpy(img[rows, cols]).to(depth)
    return out
