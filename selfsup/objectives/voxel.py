"""Voxel objectives of the supervised Occ3D branch: pure functions of voxel logits and labels.

Every objective takes logits ``[B, X, Y, Z, K]`` (K = 18 with free = 17, the
:mod:`selfsup.representations.voxel_decoders` layout), integer labels ``[B, X, Y, Z]``
(0-17; 255 or any value >= K is ignored) and an optional boolean ``mask [B, X, Y, Z]``
(the Occ3D ``mask_camera`` when training "with the camera mask": only visible voxels
count; None trains on every voxel, the other published protocol). The maintainers of
FlashOcc, RenderOcc and STCOcc report that training with the mask raises mIoU and lowers
RayIoU (the model is never told that invisible space is not free).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int, Integer, Shaped
from torch import Tensor

from selfsup.grid import OCC3D_FREE

# Occ3D-nuScenes voxel counts per class (0-16, free last) over the training set, as used
# by FlashOcc / BEVDet-Occ (``nusc_class_frequencies`` in bev_occ_head.py).
FLASHOCC_OCC3D_FREQUENCIES: tuple[int, ...] = (
    944004, 1897170, 152386, 2391677, 16957802, 724139, 189027, 2074468, 413451, 2384460,
    5916653, 175883646, 4275424, 51393615, 61411620, 105975596, 116424404, 1892500630,
)


def class_weights_from_frequencies(frequencies: Shaped[Tensor, "K"] | tuple | list) -> Float[Tensor, "K"]:
    """Class weights ``w_c = 1 / ln(f_c + 0.001)`` from voxel counts ``f_c``.

    Rare classes get larger weights (the log keeps the range small: 0.047 for free ...
    0.084 for bicycle with the Occ3D table). A count of 1 or less would give an infinite or
    negative weight, so counts are clamped to >= 2.

    Raises:
        ValueError: a negative count.

    Source: FlashOcc / BEVDet-Occ ``BEVOCCHead2D(class_balance=True)``:
    ``1 / np.log(nusc_class_frequencies + 0.001)``.

    >>> w = class_weights_from_frequencies(FLASHOCC_OCC3D_FREQUENCIES)
    >>> round(float(w[17]), 4), round(float(w[2]), 4)
    (0.0468, 0.0838)
    """
    f = torch.as_tensor(frequencies, dtype=torch.float64)
    if bool((f < 0).any()):
        raise ValueError(f"class_weights_from_frequencies: counts must be >= 0, got {f.tolist()}")
    return (1.0 / torch.log(f.clamp_min(2.0) + 0.001)).float()


def _flatten(
    logits: Tensor, labels: Tensor, mask: Tensor | None
) -> tuple[Float[Tensor, "N K"], Int[Tensor, "N"]]:
    """Valid voxels only: labels in [0, K) and inside the mask."""
    K = logits.shape[-1]
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"voxel objective: logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree")
    labels = labels.long()
    valid = (labels >= 0) & (labels < K)
    if mask is not None:
        if mask.shape != labels.shape:
            raise ValueError(f"voxel objective: mask {tuple(mask.shape)} and labels {tuple(labels.shape)} disagree")
        valid = valid & mask.bool()
    return logits[valid], labels[valid]


def voxel_cross_entropy(
    logits: Float[Tensor, "B X Y Z K"],
    labels: Integer[Tensor, "B X Y Z"],
    mask: Bool[Tensor, "B X Y Z"] | None = None,
    class_weights: Float[Tensor, "K"] | None = None,
) -> Float[Tensor, ""]:
    """(Class-weighted) cross-entropy over the valid voxels.

    ``L = sum_v w_{y_v} (-log softmax(l_v)_{y_v}) / sum_v w_{y_v}``; without weights the
    plain mean. 0 (with gradient) when no voxel is valid.

    Source: FlashOcc ``BEVOCCHead2D.loss`` (CE with ``avg_factor`` = the summed weights
    of the valid voxels, ``mask_camera`` with ``use_mask=True``).
    """
    x, y = _flatten(logits, labels, mask)
    if y.numel() == 0:
        return logits.sum() * 0.0
    w = None if class_weights is None else class_weights.to(x)
    loss = F.cross_entropy(x.float(), y, weight=None if w is None else w.float(), reduction="sum")
    norm = y.numel() if w is None else w[y].sum()
    return loss / norm


def voxel_focal_loss(
    logits: Float[Tensor, "B X Y Z K"],
    labels: Integer[Tensor, "B X Y Z"],
    mask: Bool[Tensor, "B X Y Z"] | None = None,
    gamma: float = 2.0,
    class_weights: Float[Tensor, "K"] | None = None,
) -> Float[Tensor, ""]:
    """Softmax focal loss ``mean_v  w_{y_v} (1 - p_v)^gamma (-log p_v)``, ``p_v`` the
    probability of the true class; gamma = 0 without weights is the cross-entropy.

    Source: Lin et al., Focal Loss for Dense Object Detection (ICCV 2017), eq. 5 (the
    multi-class softmax form).
    """
    x, y = _flatten(logits, labels, mask)
    if y.numel() == 0:
        return logits.sum() * 0.0
    logp = F.log_softmax(x.float(), dim=-1).gather(1, y[:, None])[:, 0]
    loss = -((1.0 - logp.exp()).clamp_min(0.0) ** gamma) * logp
    if class_weights is not None:
        loss = loss * class_weights.to(loss)[y]
    return loss.mean()


def _lovasz_grad(gt_sorted: Tensor) -> Tensor:
    """Gradient of the Lovasz extension of the Jaccard loss w.r.t. sorted errors
    (Berman et al. 2018, Alg. 1)."""
    total = gt_sorted.sum()
    intersection = total - gt_sorted.cumsum(0)
    union = total + (1.0 - gt_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    if gt_sorted.numel() > 1:
        jaccard = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
    return jaccard


def lovasz_softmax(
    logits: Float[Tensor, "B X Y Z K"],
    labels: Integer[Tensor, "B X Y Z"],
    mask: Bool[Tensor, "B X Y Z"] | None = None,
) -> Float[Tensor, ""]:
    """Lovasz-softmax: the mean over the classes present among the valid voxels of the
    Lovasz extension of ``1 - IoU_c`` applied to the errors ``|1[y = c] - p_c|``.

    Source: Berman, Rannen Triki, Blaschko, The Lovasz-Softmax loss (CVPR 2018), eq. 12
    with ``classes='present'`` (as FlashOcc's ``BEVOCCHead2D_V2`` / SurroundOcc use it).
    """
    x, y = _flatten(logits, labels, mask)
    if y.numel() == 0:
        return logits.sum() * 0.0
    probs = x.float().softmax(dim=-1)
    losses = []
    for c in torch.unique(y).tolist():
        fg = (y == c).float()
        errors = (fg - probs[:, c]).abs()
        errors_sorted, order = torch.sort(errors, descending=True)
        losses.append(torch.dot(errors_sorted, _lovasz_grad(fg[order])))
    return torch.stack(losses).mean()


def _bce_to_one(x: Tensor) -> Tensor:
    return -torch.log(x.clamp(1e-7, 1.0))


def sem_scal_loss(
    logits: Float[Tensor, "B X Y Z K"],
    labels: Integer[Tensor, "B X Y Z"],
    mask: Bool[Tensor, "B X Y Z"] | None = None,
) -> Float[Tensor, ""]:
    """MonoScene semantic scene-class affinity loss.

    For each class c present among the valid voxels, with ``p_c`` its probabilities and
    ``t_c = 1[y = c]``: precision ``P = sum p t / sum p``, recall ``R = sum p t / sum t``,
    specificity ``S = sum (1 - p)(1 - t) / sum (1 - t)``; the loss is the mean over the
    classes of ``-log P - log R - log S`` (terms with an empty denominator are skipped).

    Source: Cao & de Charette, MonoScene (CVPR 2022), Sec. 3.3, eq. 5.
    """
    x, y = _flatten(logits, labels, mask)
    if y.numel() == 0:
        return logits.sum() * 0.0
    probs = x.float().softmax(dim=-1)
    total, count = probs.new_zeros(()), 0
    for c in torch.unique(y).tolist():
        p, t = probs[:, c], (y == c).float()
        inter = (p * t).sum()
        term = _bce_to_one(inter / t.sum())
        if float(p.sum().detach()) > 0:
            term = term + _bce_to_one(inter / p.sum())
        if float((1 - t).sum()) > 0:
            term = term + _bce_to_one(((1 - p) * (1 - t)).sum() / (1 - t).sum())
        total, count = total + term, count + 1
    return total / count


def geo_scal_loss(
    logits: Float[Tensor, "B X Y Z K"],
    labels: Integer[Tensor, "B X Y Z"],
    mask: Bool[Tensor, "B X Y Z"] | None = None,
    free_label: int = OCC3D_FREE,
) -> Float[Tensor, ""]:
    """MonoScene geometric scene-class affinity loss: the ``sem_scal`` terms for the binary
    occupied (``1 - p_free``) vs free split.

    Source: MonoScene (CVPR 2022), Sec. 3.3 (the geometry variant of eq. 5), with the
    Occ3D free class 17 as "empty" (FlashOcc ``geo_scal_loss(non_empty_idx=17)``).
    """
    x, y = _flatten(logits, labels, mask)
    if y.numel() == 0:
        return logits.sum() * 0.0
    p_free = x.float().softmax(dim=-1)[:, free_label]
    p_occ, t = 1.0 - p_free, (y != free_label).float()
    inter = (p_occ * t).sum()
    loss = _bce_to_one(inter / p_occ.sum().clamp_min(1e-7)) + _bce_to_one(((1 - t) * p_free).sum() / (1 - t).sum().clamp_min(1.0))
    if float(t.sum()) > 0:
        loss = loss + _bce_to_one(inter / t.sum())
    return loss


# --------------------------------------------------------------------------- occupancy objectives
# The model-facing wrappers: ``fn(prediction, batch) -> scalar | None`` read the voxel GT of
# the current frame from ``Frames.occ_*`` (None when the batch has none).
def _targets(prediction, batch, camera_mask: bool, name: str):
    if batch.occ_semantics is None:
        return None
    if prediction.logits is None:
        raise ValueError(f"{name}: the model's OccupancyPrediction has no logits (this objective needs voxel logits)")
    mask = None
    if camera_mask:
        if batch.occ_mask_camera is None:
            raise ValueError(f"{name}: camera_mask=True but the batch has no occ_mask_camera (voxel GT without masks)")
        mask = batch.occ_mask_camera
    return prediction.logits, batch.occ_semantics, mask


def _register(fn):
    from selfsup.model_api import occupancy_objective

    return occupancy_objective(fn)


@_register
def voxel_ce_objective(prediction, batch, *, camera_mask: bool = True,
                       class_frequencies: tuple[int, ...] | None = None) -> Tensor | None:
    """:func:`voxel_cross_entropy` of the prediction's logits against ``Frames.occ_semantics``;
    ``camera_mask`` trains on ``occ_mask_camera`` voxels only; ``class_frequencies`` (e.g.
    :data:`FLASHOCC_OCC3D_FREQUENCIES` or ``scripts/class_frequencies.py`` output) turns on
    the class weights. None when the batch carries no voxel GT."""
    got = _targets(prediction, batch, camera_mask, "voxel_ce_objective")
    if got is None:
        return None
    weights = None if class_frequencies is None else class_weights_from_frequencies(class_frequencies)
    return voxel_cross_entropy(*got, class_weights=weights)


@_register
def voxel_focal_objective(prediction, batch, *, camera_mask: bool = True, gamma: float = 2.0) -> Tensor | None:
    """:func:`voxel_focal_loss` against ``Frames.occ_semantics`` (see :func:`voxel_ce_objective`)."""
    got = _targets(prediction, batch, camera_mask, "voxel_focal_objective")
    return None if got is None else voxel_focal_loss(*got, gamma=gamma)


@_register
def lovasz_objective(prediction, batch, *, camera_mask: bool = True) -> Tensor | None:
    """:func:`lovasz_softmax` against ``Frames.occ_semantics``."""
    got = _targets(prediction, batch, camera_mask, "lovasz_objective")
    return None if got is None else lovasz_softmax(*got)


@_register
def sem_scal_objective(prediction, batch, *, camera_mask: bool = True) -> Tensor | None:
    """:func:`sem_scal_loss` against ``Frames.occ_semantics``."""
    got = _targets(prediction, batch, camera_mask, "sem_scal_objective")
    return None if got is None else sem_scal_loss(*got)


@_register
def geo_scal_objective(prediction, batch, *, camera_mask: bool = True) -> Tensor | None:
    """:func:`geo_scal_loss` against ``Frames.occ_semantics``."""
    got = _targets(prediction, batch, camera_mask, "geo_scal_objective")
    return None if got is None else geo_scal_loss(*got)
