"""Occ3D-nuScenes voxel metrics: mIoU, geometric IoU and dynamic-class mIoU.

Source: the CVPR 2023 occupancy challenge `occ_metrics.py` (`Metric_mIoU`, repository
CVPR2023-3D-Occupancy-Prediction, `projects/mmdet3d_plugin/datasets/occ_metrics.py`;
the same file is copied in STCOcc and OccStudio).

Protocol, reproduced exactly:
- one 18 x 18 confusion matrix (rows GT, columns prediction) summed over the whole split,
  never averaged per sample;
- only the voxels where `mask_camera` is set take part (all voxels without a mask);
  voxels whose GT label is outside 0..17 (the reference's 255 "ignore") are skipped;
- IoU_c = TP / (TP + FP + FN) in float64; mIoU = nanmean over classes 0-16, x100. A class
  absent from both GT and prediction is 0 / 0 = NaN and skipped; a class predicted but
  never in the GT scores 0 and counts. Free (17) is in the matrix, not in the mean.

Additions built from the same matrix (not printed by the reference script):
- geometric IoU: the same formula with two classes, occupied = label != 17;
- mIoU_D: nanmean of IoU over the dynamic classes (2, 3, 4, 5, 6, 7, 9, 10), x100.

The reference prints values rounded to 2 decimals; `compute` returns them unrounded.

GaussianFlowOcc's own convention, `Occ3DMetric(protocol="gaussianflowocc")` (its
`nuscenes_dataset_occ.py` + `occ_metrics.py` at commit 0ad693e, `with_others=False`):
the camera mask additionally drops every voxel whose GT is 0 (others) or 12 (other_flat),
for mIoU and geometric IoU alike, and mIoU is the nanmean over the 15 classes 1-11 and
13-16. Numbers under the two protocols are not comparable.
"""

from __future__ import annotations

import warnings
from typing import Optional, Union

import numpy as np
from jaxtyping import Int64, Shaped
from torch import Tensor

OCC3D_CLASS_NAMES: tuple[str, ...] = (
    "others",
    "barrier",
    "bicycle",
    "bus",
    "car",
    "construction_vehicle",
    "motorcycle",
    "pedestrian",
    "traffic_cone",
    "trailer",
    "truck",
    "driveable_surface",
    "other_flat",
    "sidewalk",
    "terrain",
    "manmade",
    "vegetation",
    "free",
)
NUM_CLASSES = 18
FREE_LABEL = 17
DYNAMIC_CLASSES: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 9, 10)
PROTOCOLS: tuple[str, ...] = ("challenge", "gaussianflowocc")
# GaussianFlowOcc (with_others=False): GT voxels of these classes leave the mask ...
GAUSSIANFLOWOCC_DROPPED_GT: tuple[int, ...] = (0, 12)
# ... and its mIoU averages these 15 classes (`Metric_mIoU.eval_classes`).
GAUSSIANFLOWOCC_CLASSES: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16)
# The Occ3D-nuScenes grid: [-40, -40, -1, 40, 40, 5.4] m at 0.4 m, 200 x 200 x 16, ego frame,
# indexed [x, y, z] (Tian et al. 2023). The project's one definition (selfsup.constants re-exports).
OCC3D_LOWER: tuple[float, float, float] = (-40.0, -40.0, -1.0)
OCC3D_UPPER: tuple[float, float, float] = (40.0, 40.0, 5.4)
OCC3D_VOXEL_SIZE = 0.4
OCC3D_GRID_SHAPE: tuple[int, int, int] = (200, 200, 16)

ArrayLike = Union[Shaped[np.ndarray, "..."], Shaped[Tensor, "..."]]


def to_numpy(array: ArrayLike) -> np.ndarray:
    """Return a numpy view/copy of a numpy array or a (possibly CUDA) torch tensor."""
    if isinstance(array, Tensor):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def iou_from_confusion(confusion: Int64[np.ndarray, "K K"]) -> np.ndarray:
    """Per-class IoU = diag / (row sum + column sum - diag), float64, NaN where 0 / 0.

    Source: `Metric_mIoU.per_class_iu` of the Occ3D challenge `occ_metrics.py`.
    """
    hist = confusion.astype(np.float64)
    tp = np.diag(hist)
    with np.errstate(divide="ignore", invalid="ignore"):
        return tp / (hist.sum(1) + hist.sum(0) - tp)


class Occ3DMetric:
    """Accumulates the Occ3D 18 x 18 confusion matrix over a split and computes mIoU.

    The state is the int64 confusion matrix plus the number of samples; merge states of
    several processes with `merge` or by summing `state_vector()` (e.g. an all-reduce) and
    `from_state_vector`.

    >>> m = Occ3DMetric()
    >>> gt = np.full((2, 2, 2), 17, np.uint8); gt[0, 0, 0] = 4
    >>> m.update(gt, gt)
    >>> m.compute()["IoU_per_class"]["car"]
    100.0
    """

    def __init__(self, protocol: str = "challenge") -> None:
        """Args:
            protocol: "challenge" (CVPR 2023 Occ3D, 17 classes) or "gaussianflowocc" (GT 0
                and 12 masked out, 15-class mIoU; see the module docstring).

        Raises:
            ValueError: unknown protocol.
        """
        if protocol not in PROTOCOLS:
            raise ValueError(f"Occ3DMetric: protocol must be one of {PROTOCOLS}, got {protocol!r}")
        self.protocol = protocol
        self.confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
        self.num_samples = 0

    def update(self, pred: ArrayLike, gt: ArrayLike, mask: Optional[ArrayLike] = None) -> None:
        """Add one sample.

        Args:
            pred: predicted labels 0..17, any integer dtype, same shape as `gt`
                (200 x 200 x 16 for Occ3D), numpy or torch.
            gt: GT labels; voxels with labels outside 0..17 are ignored like the reference.
            mask: optional camera-visibility mask (`mask_camera`), nonzero = evaluated.

        Raises:
            ValueError: shapes differ, a non-integer dtype, or a prediction outside 0..17.
        """
        pred_np, gt_np = to_numpy(pred), to_numpy(gt)
        if pred_np.shape != gt_np.shape:
            raise ValueError(f"prediction shape {pred_np.shape} != GT shape {gt_np.shape}")
        for name, arr in (("prediction", pred_np), ("GT", gt_np)):
            if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
                raise ValueError(f"{name} labels must be integers, got dtype {arr.dtype}")
        pred_flat = pred_np.reshape(-1).astype(np.int64)
        gt_flat = gt_np.reshape(-1).astype(np.int64)
        if mask is not None:
            mask_np = to_numpy(mask)
            if mask_np.shape != gt_np.shape:
                raise ValueError(f"mask shape {mask_np.shape} != GT shape {gt_np.shape}")
            keep = mask_np.reshape(-1) != 0
            pred_flat, gt_flat = pred_flat[keep], gt_flat[keep]
        keep = (gt_flat >= 0) & (gt_flat < NUM_CLASSES)
        if self.protocol == "gaussianflowocc":
            keep &= ~np.isin(gt_flat, GAUSSIANFLOWOCC_DROPPED_GT)
        pred_flat, gt_flat = pred_flat[keep], gt_flat[keep]
        if pred_flat.size and (pred_flat.min() < 0 or pred_flat.max() >= NUM_CLASSES):
            raise ValueError(
                f"prediction labels must lie in 0..{NUM_CLASSES - 1}, "
                f"got range {pred_flat.min()}..{pred_flat.max()}"
            )
        counts = np.bincount(gt_flat * NUM_CLASSES + pred_flat, minlength=NUM_CLASSES**2)
        self.confusion += counts.reshape(NUM_CLASSES, NUM_CLASSES).astype(np.int64)
        self.num_samples += 1

    def merge(self, other: "Occ3DMetric") -> None:
        """Add another accumulator's state (e.g. gathered from another process).

        Raises:
            ValueError: the other accumulator uses another protocol.
        """
        if other.protocol != self.protocol:
            raise ValueError(f"Occ3DMetric.merge: protocols differ ({self.protocol!r} vs {other.protocol!r})")
        self.confusion += other.confusion
        self.num_samples += other.num_samples

    def state_vector(self) -> Int64[np.ndarray, "S"]:
        """The whole state as one int64 vector (confusion matrix, then sample count)."""
        return np.concatenate([self.confusion.reshape(-1), [self.num_samples]]).astype(np.int64)

    @classmethod
    def from_state_vector(cls, state: Int64[np.ndarray, "S"], protocol: str = "challenge") -> "Occ3DMetric":
        """Rebuild an accumulator from a (summed) `state_vector`.

        Raises:
            ValueError: the vector has the wrong length.
        """
        if state.shape != (NUM_CLASSES**2 + 1,):
            raise ValueError(f"Occ3D state must have {NUM_CLASSES**2 + 1} entries, got {state.shape}")
        metric = cls(protocol)
        metric.confusion = state[:-1].reshape(NUM_CLASSES, NUM_CLASSES).copy()
        metric.num_samples = int(state[-1])
        return metric

    def compute(self) -> dict:
        """Return the metrics in percent.

        Returns:
            dict with `mIoU` (classes 0-16), `mIoU_D` (dynamic classes), `IoU` (geometric,
            occupied vs free), `IoU_per_class` {name: IoU or NaN} for the 17 non-free
            classes, and `num_samples`.
        """
        iou = iou_from_confusion(self.confusion)
        occupied = self.confusion[:FREE_LABEL, :FREE_LABEL].sum()
        false_pos = self.confusion[FREE_LABEL, :FREE_LABEL].sum()
        false_neg = self.confusion[:FREE_LABEL, FREE_LABEL].sum()
        denom = float(occupied + false_pos + false_neg)
        geo_iou = float(occupied) / denom if denom > 0 else float("nan")
        with warnings.catch_warnings():
            # nanmean of an all-NaN slice warns and returns NaN, which is the right answer.
            warnings.simplefilter("ignore", RuntimeWarning)
            classes = list(GAUSSIANFLOWOCC_CLASSES) if self.protocol == "gaussianflowocc" else list(range(FREE_LABEL))
            miou = float(np.nanmean(iou[classes]) * 100)
            miou_d = float(np.nanmean(iou[list(DYNAMIC_CLASSES)]) * 100)
        return {
            "mIoU": miou,
            "mIoU_D": miou_d,
            "IoU": geo_iou * 100,
            "IoU_per_class": {
                OCC3D_CLASS_NAMES[c]: float(iou[c] * 100) for c in range(FREE_LABEL)
            },
            "num_samples": self.num_samples,
        }


def occ3d_miou(pred: ArrayLike, gt: ArrayLike, mask: Optional[ArrayLike] = None) -> dict:
    """Occ3D metrics of a single sample (see `Occ3DMetric`; the split-level value is NOT
    the mean of these)."""
    metric = Occ3DMetric()
    metric.update(pred, gt, mask)
    return metric.compute()


__all__ = [
    "DYNAMIC_CLASSES",
    "FREE_LABEL",
    "GAUSSIANFLOWOCC_CLASSES",
    "GAUSSIANFLOWOCC_DROPPED_GT",
    "OCC3D_GRID_SHAPE",
    "OCC3D_LOWER",
    "OCC3D_UPPER",
    "OCC3D_VOXEL_SIZE",
    "NUM_CLASSES",
    "PROTOCOLS",
    "OCC3D_CLASS_NAMES",
    "Occ3DMetric",
    "iou_from_confusion",
    "occ3d_miou",
    "to_numpy",
]
