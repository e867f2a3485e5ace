"""SelfOcc depth metrics (AbsRel, SqRel, RMSE, RMSE log, delta < 1.25^k), raw and median-scaled.

Source: SelfOcc (huang-yh/SelfOcc) `utils/metric_util.py` (`cal_depth_metric`,
`DepthMetric`, `compute_depth_errors_torch`), used by `eval_depth.py` and
`eval_novel_depth.py`.

Protocol (the metric arithmetic follows SelfOcc's; what differs is stated at the end):
- metrics are computed per image (one camera of one sample) over its valid LiDAR points,
  then AVERAGED OVER IMAGES (each image weighs 1, whatever its point count); SelfOcc sums
  the per-image values and divides by the number of samples, per camera, and reports the
  mean over cameras, which is the same mean over images when every sample has all cameras;
- the prediction is clamped to [1e-3, 80] m (the GT is not clamped; the caller's mask
  selects valid GT points);
- median scaling: scale = median(gt) / median(pred) of that image, computed BEFORE the
  clamp, then pred = clamp(scale * pred); torch.median returns the lower of the two middle
  values for an even count, and so do we (we call torch.median);
- novel-depth results are binned by ceil(distance between the frames in metres)
  (`eval_novel_depth.py`: `k = math.ceil(source_distance)`), each bin averaged over its
  images, the total averaged over all images.

How the inputs differ from SelfOcc's evaluation, and how to get SelfOcc's convention:
- SelfOcc's prediction is the NeuS expected depth normalised by the ray opacity and clipped
  to the ray's sample range, so it is never 0; it keeps only LiDAR points beyond 1 m. This
  module scores whatever the caller passes (a 0 prediction is clamped to 1e-3 and scored);
  which LiDAR points count is the caller's ``min_depth`` / ``max_depth`` selection
  (``EvalSettings``). SelfOcc's convention is: ``EvalSettings(min_depth=1.0)`` and a model
  that never returns 0 (``SDFOcc(min_opacity=0.0)``, its default, returns the normalised
  expected depth clamped to ``[near, far]``); the SDF configs use it. With
  ``min_opacity > 0`` rays below that opacity render 0 (scored as 1e-3 m), which is harsher
  than SelfOcc; with ``min_depth=1e-3`` LiDAR points within 1 m count, which SelfOcc drops.
"""

from __future__ import annotations

import math
from typing import Union

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

MIN_DEPTH = 1e-3
MAX_DEPTH = 80.0
DEPTH_METRIC_NAMES: tuple[str, ...] = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3")
EVAL_TYPES: tuple[str, ...] = ("raw", "median")

DepthLike = Union[Float[np.ndarray, "P"], Float[Tensor, "P"]]


def _as_tensor(x: DepthLike) -> Tensor:
    return x if isinstance(x, Tensor) else torch.from_numpy(np.asarray(x))


def depth_metrics(pred: DepthLike, gt: DepthLike, median_scaling: bool = False) -> dict[str, float]:
    """Depth metrics of one image over its valid points.

    Args:
        pred: predicted depth (or distance, as long as `gt` is the same) at the points, metres.
        gt: LiDAR depth at the same points, metres, all > 0 (already masked).
        median_scaling: multiply pred by median(gt) / median(pred) first.

    Returns:
        {abs_rel, sq_rel, rmse, rmse_log, a1, a2, a3, scale}; `scale` is 1 for raw.

    Raises:
        ValueError: shapes differ, no point, or a GT depth <= 0.
    """
    p, g = _as_tensor(pred), _as_tensor(gt)
    if p.shape != g.shape:
        raise ValueError(f"pred shape {tuple(p.shape)} != gt shape {tuple(g.shape)}")
    if g.numel() == 0:
        raise ValueError("no valid depth point in this image")
    if bool((g <= 0).any()):
        raise ValueError("gt depths must be > 0 (mask invalid points first)")
    p = p.to(g.dtype)
    scale = torch.median(g) / torch.median(p) if median_scaling else torch.ones((), dtype=g.dtype)
    p = torch.clamp(scale * p if median_scaling else p, MIN_DEPTH, MAX_DEPTH)
    ratio = torch.maximum(g / p, p / g)
    diff = g - p
    values = {
        "abs_rel": (diff.abs() / g).mean(),
        "sq_rel": (diff**2 / g).mean(),
        "rmse": (diff**2).mean() ** 0.5,
        "rmse_log": ((torch.log(g) - torch.log(p)) ** 2).mean() ** 0.5,
        "a1": (ratio < 1.25).to(g.dtype).mean(),
        "a2": (ratio < 1.25**2).to(g.dtype).mean(),
        "a3": (ratio < 1.25**3).to(g.dtype).mean(),
        "scale": scale,
    }
    return {k: float(v) for k, v in values.items()}


def distance_bin(frame_distance_m: float) -> int:
    """SelfOcc novel-depth bin of a source frame: ceil(distance between the frames, m)."""
    return int(math.ceil(frame_distance_m))


class DepthMetricAccumulator:
    """Per-image depth metrics averaged over images, raw and median-scaled, optionally
    binned by frame distance (novel depth). State: per (type, bin) sums and image counts,
    mergeable across processes with `merge`.
    """

    def __init__(self, eval_types: tuple[str, ...] = EVAL_TYPES) -> None:
        for t in eval_types:
            if t not in EVAL_TYPES:
                raise ValueError(f"unknown depth eval type {t!r}; use one of {EVAL_TYPES}")
        self.eval_types = eval_types
        self.sums: dict[tuple[str, int], np.ndarray] = {}
        self.counts: dict[tuple[str, int], int] = {}

    def update(self, pred: DepthLike, gt: DepthLike, bin_key: int = 0) -> None:
        """Add one image (see `depth_metrics`); `bin_key` from `distance_bin` or 0."""
        for t in self.eval_types:
            m = depth_metrics(pred, gt, median_scaling=(t == "median"))
            key = (t, bin_key)
            row = np.array([m[n] for n in (*DEPTH_METRIC_NAMES, "scale")], dtype=np.float64)
            self.sums[key] = self.sums.get(key, np.zeros_like(row)) + row
            self.counts[key] = self.counts.get(key, 0) + 1

    def merge(self, other: "DepthMetricAccumulator") -> None:
        """Add another accumulator's sums and counts."""
        for key, row in other.sums.items():
            self.sums[key] = self.sums.get(key, np.zeros_like(row)) + row
            self.counts[key] = self.counts.get(key, 0) + other.counts[key]

    def compute(self) -> dict:
        """{type: {"all": metrics, "bins": {bin: metrics}}}; each metrics dict also holds
        `scale` (mean scale) and `num_images`."""
        names = (*DEPTH_METRIC_NAMES, "scale")
        result: dict = {}
        for t in self.eval_types:
            keys = sorted(k for k in self.sums if k[0] == t)
            if not keys:
                continue
            total = sum(self.sums[k] for k in keys)
            count = sum(self.counts[k] for k in keys)
            entry = {"all": dict(zip(names, (total / count).tolist()), num_images=count), "bins": {}}
            for k in keys:
                entry["bins"][k[1]] = dict(
                    zip(names, (self.sums[k] / self.counts[k]).tolist()), num_images=self.counts[k]
                )
            result[t] = entry
        return result


class PointDepthAccumulator:
    """Depth metrics pooled over ALL points of the split (each point weighs 1), raw only.

    GaussianFlowOcc ``tools/eval_depth.py --exact`` (``mmdet3d/apis/test_depth.py``
    ``eval_depth`` at commit 0ad693e): the prediction is clamped to [1e-3, 80] m, sums of
    |d| / g, d^2 / g, d^2, (log g - log p)^2 and the delta counts run over every point,
    then AbsRel = sum / N, RMSE = sqrt(sum d^2 / N), and so on. (Its default, without
    ``--exact``, pools the points of one sample, all cameras together, and averages over
    samples: that is :class:`DepthMetricAccumulator` with ``eval_types=("raw",)`` fed one
    concatenated sample per ``update``.) Same ``compute`` layout as
    :class:`DepthMetricAccumulator` (``num_images`` counts ``update`` calls, ``num_points``
    the points).
    """

    _KEYS = ("abs_rel", "sq_rel", "se", "se_log", "a1", "a2", "a3", "n")

    def __init__(self) -> None:
        self.sums: dict[int, np.ndarray] = {}
        self.counts: dict[int, int] = {}

    def update(self, pred: DepthLike, gt: DepthLike, bin_key: int = 0) -> None:
        """Add the points of one image (or sample).

        Raises:
            ValueError: shapes differ or a GT depth <= 0.
        """
        p, g = _as_tensor(pred).double(), _as_tensor(gt).double()
        if p.shape != g.shape:
            raise ValueError(f"pred shape {tuple(p.shape)} != gt shape {tuple(g.shape)}")
        if bool((g <= 0).any()):
            raise ValueError("gt depths must be > 0 (mask invalid points first)")
        p = torch.clamp(p, MIN_DEPTH, MAX_DEPTH)
        ratio = torch.maximum(g / p, p / g)
        d = g - p
        row = torch.stack([
            (d.abs() / g).sum(), (d**2 / g).sum(), (d**2).sum(), ((g.log() - p.log()) ** 2).sum(),
            (ratio < 1.25).sum(), (ratio < 1.25**2).sum(), (ratio < 1.25**3).sum(), torch.tensor(float(g.numel())),
        ]).double().numpy()  # fmt: skip
        self.sums[bin_key] = self.sums.get(bin_key, np.zeros_like(row)) + row
        self.counts[bin_key] = self.counts.get(bin_key, 0) + 1

    def merge(self, other: "PointDepthAccumulator") -> None:
        """Add another accumulator's sums."""
        for k, row in other.sums.items():
            self.sums[k] = self.sums.get(k, np.zeros_like(row)) + row
            self.counts[k] = self.counts.get(k, 0) + other.counts[k]

    @staticmethod
    def _metrics(row: np.ndarray, images: int) -> dict:
        a, sq, se, sl, a1, a2, a3, n = row.tolist()
        n = max(n, 1.0)
        return dict(abs_rel=a / n, sq_rel=sq / n, rmse=(se / n) ** 0.5, rmse_log=(sl / n) ** 0.5,
                    a1=a1 / n, a2=a2 / n, a3=a3 / n, scale=1.0, num_images=images, num_points=int(row[-1]))  # fmt: skip

    def compute(self) -> dict:
        """{"raw": {"all": metrics, "bins": {bin: metrics}}} (empty dict if nothing was added)."""
        if not self.sums:
            return {}
        total = sum(self.sums.values())
        return {"raw": {
            "all": self._metrics(total, sum(self.counts.values())),
            "bins": {k: self._metrics(self.sums[k], self.counts[k]) for k in sorted(self.sums)},
        }}  # fmt: skip


__all__ = [
    "DEPTH_METRIC_NAMES",
    "DepthMetricAccumulator",
    "PointDepthAccumulator",
    "MAX_DEPTH",
    "MIN_DEPTH",
    "depth_metrics",
    "distance_bin",
]


DISTANCE_BANDS: tuple[tuple[float, float], ...] = ((0.0, 10.0), (10.0, 20.0), (20.0, 40.0), (40.0, 80.0))


def banded_abs_rel(
    pred: DepthLike,
    gt: DepthLike,
    bands: tuple[tuple[float, float], ...] = DISTANCE_BANDS,
    median_scaling: bool = False,
) -> dict[str, dict[str, float]]:
    """AbsRel of one image split by ground-truth depth band ``lo <= gt < hi`` (metres).

    The median scale (if any) is that of the whole image (as :func:`depth_metrics`), then the
    clamped prediction is scored per band, so band values add up to the image's AbsRel when
    weighted by their point counts.

    Returns:
        ``{"lo-hi": {"abs_rel": value or NaN (no point), "count": points}}``.

    Raises:
        ValueError: as :func:`depth_metrics`.
    """
    p, g = _as_tensor(pred), _as_tensor(gt)
    scale = depth_metrics(p, g, median_scaling)["scale"]
    p = torch.clamp(scale * p.to(g.dtype), MIN_DEPTH, MAX_DEPTH)
    out = {}
    for lo, hi in bands:
        sel = (g >= lo) & (g < hi)
        n = int(sel.sum())
        value = float(((g[sel] - p[sel]).abs() / g[sel]).mean()) if n else float("nan")
        out[f"{lo:g}-{hi:g}"] = {"abs_rel": value, "count": n}
    return out
