"""OpenOcc v2 (CVPR 2024 Occupancy and Flow challenge): RayIoU, mAVE and occupancy score.

Source: OpenDriveLab/OccNet, branch `challenge`,
`projects/mmdet3d_plugin/datasets/ray_metrics.py` (`process_one_sample`, `calc_metrics`,
`main`; the local val evaluation that the README names as the implementation) and
`tools/ray_iou/metric.py` (the test-server script). The ray casting is SparseOcc's, so the
rays, origins, marching and distance arithmetic are those of `eval.rayiou`.

Protocol:
- labels: 17 OpenOcc classes, car first, 16 = free (`OPENOCC_CLASS_NAMES`); GT and
  prediction each come with a per-voxel 2D flow (200, 200, 16, 2), m/s, read at the voxel
  that gives the ray its label (the first occupied voxel, or the last voxel inside for a
  ray that hits nothing);
- RayIoU: as in `eval.rayiou` with free = 16 (rays whose GT label is free are dropped;
  TP = same label and |d_gt - d_pred| < t for t in {1, 2, 4} m; mean over the 16 non-free
  classes and the three thresholds, NaN entries skipped);
- AVE of class c (one of the 8 classes car, truck, trailer, bus, construction_vehicle,
  bicycle, motorcycle, pedestrian = labels 0..7): sum of ||flow_gt - flow_pred||_2 over the
  TP rays of c at the 2 m threshold, over the whole split, divided by their number. The
  per-ray error is float32 and each sample's per-class sum is a float32 `np.sum` added to a
  float64 total, as in the reference (flows are cast to float32 first);
- a dynamic class with no TP ray at 2 m has AVE = 0 / 0 = NaN and is skipped by the mean;
  mAVE = nanmean over the 8 classes (NaN when no dynamic class has a TP);
- occupancy score = 0.9 RayIoU + 0.1 max(1 - mAVE, 0), with Python's `max`, so a NaN mAVE
  gives a NaN score, as in the reference.

Reference quirks not reproduced:
- the test-server script `tools/ray_iou/metric.py` sums the flow error of ALL valid rays
  of a sample (not only the TP rays of the class) for every dynamic class with at least one
  TP, and it reads distances and flows stored as float16; we follow the val evaluation in
  `ray_metrics.py`, which uses the TP rays;
- an early version (commit 0c403d5, 2024-02-29) also accepted |d_gt - d_pred| / d_gt < 0.1
  as a TP; it was removed on 2024-03-01 (commit be61db9) and is not used here.
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence, Union

import numpy as np
import torch
from jaxtyping import Float, Float32, Float64, Int64, Shaped
from torch import Tensor

from eval.occ3d import to_numpy
from eval.rayiou import THRESHOLDS_M, RayIoUMetric, cast_query_rays

OPENOCC_CLASS_NAMES: tuple[str, ...] = (
    "car",
    "truck",
    "trailer",
    "bus",
    "construction_vehicle",
    "bicycle",
    "motorcycle",
    "pedestrian",
    "traffic_cone",
    "barrier",
    "driveable_surface",
    "other_flat",
    "sidewalk",
    "terrain",
    "manmade",
    "vegetation",
    "free",
)
OPENOCC_FREE_LABEL = 16
OPENOCC_FLOW_CLASSES: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7)
FLOW_THRESHOLD_M = 2

ArrayLike = Union[Shaped[np.ndarray, "..."], Shaped[Tensor, "..."]]


def occupancy_score(ray_iou: float, mave: float) -> float:
    """OpenOcc occupancy score 0.9 RayIoU + 0.1 max(1 - mAVE, 0).

    RayIoU is a fraction in 0..1, mAVE in m/s. A NaN mAVE (no dynamic TP ray anywhere)
    gives NaN, as Python's `max(nan, 0.0)` does in the reference.

    Source: OccNet (challenge branch) `ray_metrics.py::main`, README "Occupancy Score".

    >>> occupancy_score(0.4, 0.5)
    0.41000000000000003
    """
    velocity = 1.0 - mave
    # Reference semantics: max(1 - mAVE, 0.0) keeps a NaN.
    if not math.isnan(velocity):
        velocity = max(velocity, 0.0)
    return 0.9 * ray_iou + 0.1 * velocity


def _check_flow(name: str, flow: np.ndarray, grid_shape: tuple[int, ...]) -> np.ndarray:
    expected = tuple(grid_shape) + (2,)
    if flow.shape != expected:
        raise ValueError(f"{name} flow has shape {flow.shape}, expected {expected} (X Y Z 2)")
    if not np.issubdtype(flow.dtype, np.floating):
        raise ValueError(f"{name} flow must be floating point, got {flow.dtype}")
    return flow.astype(np.float32, copy=False)


class OpenOccMetric:
    """Accumulates OpenOcc RayIoU counts and the flow errors of true-positive rays.

    State (mergeable by summing): the RayIoU counts of a `RayIoUMetric` over the OpenOcc
    labels, `flow_error_sum[c]` (float64, m/s summed over TP rays at 2 m) and
    `flow_tp_count[c]` (int64) for every class (non-zero only for the flow classes).

    >>> gt = np.full((200, 200, 16), 16, np.uint8); gt[:, :, 0] = 10
    >>> flow = np.zeros((200, 200, 16, 2), np.float32)
    >>> m = OpenOccMetric(); m.update(gt, gt, np.array([[0.0, 0.0, 1.8]]), flow, flow)
    >>> m.compute()["RayIoU"], m.compute()["mAVE"]
    (1.0, nan)
    """

    def __init__(
        self,
        device: str = "cpu",
        backend: str = "torch",
        class_names: Sequence[str] = OPENOCC_CLASS_NAMES,
        flow_classes: Sequence[int] = OPENOCC_FLOW_CLASSES,
    ) -> None:
        """Create an empty accumulator.

        Args:
            device: torch device for the marching.
            backend: marcher, see `eval.rayiou.cast_query_rays`.
            class_names: name of every label in label order; the last one is free.
            flow_classes: labels whose AVE enters mAVE (OpenOcc: the 8 dynamic classes).

        Raises:
            ValueError: a flow class is free or not a label.
        """
        self.rayiou = RayIoUMetric(device=device, backend=backend, class_names=class_names)
        free = self.rayiou.free_label
        if not all(0 <= c < free for c in flow_classes):
            raise ValueError(f"flow_classes {list(flow_classes)} must be non-free labels 0..{free - 1}")
        self.flow_classes = tuple(int(c) for c in flow_classes)
        self.flow_error_sum = np.zeros(self.rayiou.num_classes, dtype=np.float64)
        self.flow_tp_count = np.zeros(self.rayiou.num_classes, dtype=np.int64)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.rayiou.class_names

    @property
    def num_samples(self) -> int:
        return self.rayiou.num_samples

    def update(
        self,
        pred: ArrayLike,
        gt: ArrayLike,
        origins_ego: Float[Union[np.ndarray, Tensor], "O 3"],
        pred_flow: ArrayLike,
        gt_flow: ArrayLike,
    ) -> None:
        """March pred and GT from the (already selected) origins and add one sample.

        Args:
            pred, gt: label grids 0..16 indexed [x, y, z] (200 x 200 x 16).
            origins_ego: selected LiDAR origins (see `eval.rayiou.select_origins`), metres.
            pred_flow, gt_flow: per-voxel 2D flow [X, Y, Z, 2] in m/s (ego x, y).

        Raises:
            ValueError: flows of the wrong shape or dtype; see also `cast_query_rays`.
        """
        pred_np, gt_np = to_numpy(pred), to_numpy(gt)
        pf = _check_flow("prediction", to_numpy(pred_flow), pred_np.shape)
        gf = _check_flow("GT", to_numpy(gt_flow), gt_np.shape)
        hits = cast_query_rays(
            [pred_np, gt_np],
            origins_ego,
            device=self.rayiou.device,
            backend=self.rayiou.backend,
            free_label=self.rayiou.free_label,
        )
        index = hits.index.cpu().numpy()
        pred_ray_flow = pf[index[0, :, 0], index[0, :, 1], index[0, :, 2]]
        gt_ray_flow = gf[index[1, :, 0], index[1, :, 1], index[1, :, 2]]
        self.add_hits(
            hits.label[0],
            hits.dist[0],
            torch.from_numpy(pred_ray_flow),
            hits.label[1],
            hits.dist[1],
            torch.from_numpy(gt_ray_flow),
        )

    def add_hits(
        self,
        pred_label: Int64[Tensor, "N"],
        pred_dist: Float32[Tensor, "N"],
        pred_flow: Float32[Tensor, "N 2"],
        gt_label: Int64[Tensor, "N"],
        gt_dist: Float32[Tensor, "N"],
        gt_flow: Float32[Tensor, "N 2"],
    ) -> None:
        """Count one sample's marched rays with the flow read at each ray's voxel."""
        self.rayiou.add_hits(pred_label, pred_dist, gt_label, gt_dist)
        gl = gt_label.cpu().numpy()
        pl = pred_label.cpu().numpy()
        error = np.abs(pred_dist.cpu().numpy() - gt_dist.cpu().numpy())
        # GT label c != free, so only rays kept by the RayIoU count can be TP here.
        tp = (pl == gl) & (error < FLOW_THRESHOLD_M)
        flow_diff = gt_flow.cpu().numpy() - pred_flow.cpu().numpy()
        for c in self.flow_classes:
            rays = tp & (gl == c)
            count = int(rays.sum())
            if count == 0:
                continue
            # float32 norms and a float32 per-sample sum, then float64, as the reference.
            per_ray = np.linalg.norm(flow_diff[rays], axis=1)
            self.flow_error_sum[c] += np.sum(per_ray)
            self.flow_tp_count[c] += count

    def merge(self, other: "OpenOccMetric") -> None:
        """Add another accumulator's state (e.g. from another process).

        Raises:
            ValueError: the other accumulator uses other classes or flow classes.
        """
        if other.flow_classes != self.flow_classes:
            raise ValueError("cannot merge OpenOcc accumulators with different flow_classes")
        self.rayiou.merge(other.rayiou)
        self.flow_error_sum += other.flow_error_sum
        self.flow_tp_count += other.flow_tp_count

    def state_vector(self) -> Float64[np.ndarray, "S"]:
        """The whole state as one float64 vector (for an all-reduce sum): the RayIoU state,
        then `flow_error_sum` and `flow_tp_count` (K each). Counts stay exact below 2^53."""
        return np.concatenate(
            [self.rayiou.state_vector().astype(np.float64), self.flow_error_sum, self.flow_tp_count]
        ).astype(np.float64)

    @classmethod
    def from_state_vector(
        cls,
        state: Float64[np.ndarray, "S"],
        device: str = "cpu",
        backend: str = "torch",
        class_names: Sequence[str] = OPENOCC_CLASS_NAMES,
        flow_classes: Sequence[int] = OPENOCC_FLOW_CLASSES,
    ) -> "OpenOccMetric":
        """Rebuild an accumulator from a (summed) `state_vector`.

        Raises:
            ValueError: the vector has the wrong length or non-integer counts.
        """
        metric = cls(device=device, backend=backend, class_names=class_names, flow_classes=flow_classes)
        k = metric.rayiou.num_classes
        ray_size = k * (2 + len(THRESHOLDS_M)) + 1
        if state.shape != (ray_size + 2 * k,):
            raise ValueError(f"OpenOcc state for {k} classes must have {ray_size + 2 * k} entries, got {state.shape}")
        counts = np.concatenate([state[:ray_size], state[ray_size + k :]])
        if not np.array_equal(counts, np.round(counts)):
            raise ValueError("OpenOcc state: count entries must be integers")
        metric.rayiou = RayIoUMetric.from_state_vector(
            state[:ray_size].astype(np.int64), device=device, backend=backend, class_names=class_names
        )
        metric.flow_error_sum = state[ray_size : ray_size + k].astype(np.float64)
        metric.flow_tp_count = state[ray_size + k :].astype(np.int64)
        return metric

    def ave_per_class(self) -> Float64[np.ndarray, "K"]:
        """AVE (m/s) per label: NaN for non-flow classes and for flow classes without a TP."""
        ave = np.full(self.rayiou.num_classes, np.nan)
        for c in self.flow_classes:
            if self.flow_tp_count[c] > 0:
                ave[c] = self.flow_error_sum[c] / self.flow_tp_count[c]
        return ave

    def compute(self) -> dict:
        """Return the RayIoU entries of `RayIoUMetric.compute` (fractions) plus `mAVE` (m/s),
        `AVE_per_class` {name: value or NaN} over the flow classes and `OccScore`."""
        result = self.rayiou.compute()
        ave = self.ave_per_class()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mave = float(np.nanmean(ave[list(self.flow_classes)])) if self.flow_classes else math.nan
        result["mAVE"] = mave
        result["AVE_per_class"] = {self.class_names[c]: float(ave[c]) for c in self.flow_classes}
        result["OccScore"] = occupancy_score(result["RayIoU"], mave)
        return result


__all__ = [
    "FLOW_THRESHOLD_M",
    "OPENOCC_CLASS_NAMES",
    "OPENOCC_FLOW_CLASSES",
    "OPENOCC_FREE_LABEL",
    "OpenOccMetric",
    "occupancy_score",
]
