"""Multi-frame aggregation of LiDAR points into a target keyframe's ego frame.

Rules (SurroundOcc-style aggregation, see REFERENCES.md "Occupancy ground-truth generation"):

- Ego-vehicle returns (inside the scene's ego box, in each frame's own ego frame) are removed.
- The target frame's own points stay where they are (they were measured at that time), each
  with the target LiDAR as its ray origin.
- In every other frame of the window, a point is an *object point* if it lies inside one of
  that frame's boxes and, where the data labels points, carries a thing class (0-10; a road
  point under a car is static). Object points are kept in that box's frame per instance and
  re-placed with the same instance's box pose in the target frame
  (:func:`selfsup.occ_gt.boxes.replace_with_box`); objects absent from the target frame are
  dropped. Re-placed points have no ray (their free space was observed at another time, with
  the object elsewhere): they mark their own voxel as observed only.
- A point inside a box grown by ``box_margin`` but not an object point is dropped in the other
  frames (box edges are uncertain; it may belong to the moving object).
- All other points are static: moved with the ego poses, ``T_target_frame = inv(T_global_ego
  target) @ T_global_ego frame``, with that frame's LiDAR position as ray origin.
- Labels: the point's own label where the data has one; else the box class for object points;
  else 255 (unlabelled; see :func:`selfsup.occ_gt.voxelize.voxel_labels`).

Known pitfall, handled as an option: nuScenes ego poses have no z translation (the log's
z is 0), so on a slope ground seen from several frames stratifies. ``ground_align`` shifts each
other frame's static points vertically by the median height difference of its ground points
(labels 11-14, or the lowest points of each 2 m cell where there are no labels) against the
target frame's ground in the same cells.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from selfsup.occ_gt.boxes import assign_points_to_boxes, replace_with_box, rigid_inverse
from selfsup.occ_gt.sources import UNLABELLED, SceneRecord

THING_CLASSES = frozenset(range(0, 11))
GROUND_CLASSES = frozenset((11, 12, 13, 14))


@dataclass
class AggregatedPoints:
    """Points of a window of frames in the target keyframe's ego frame.

    Attributes:
        xyz: float64 [N, 3], metres, target ego frame.
        labels: uint8 [N], Occ3D class or 255 (unlabelled).
        origins: float64 [N, 3], the sensor position each point was measured from (target ego
            frame); NaN for re-placed object points (no ray cast).
        frame: int64 [N], index of the source frame in the scene.
        instance: object identity of object points, "" for static points (object array [N]).
    """

    xyz: np.ndarray
    labels: np.ndarray
    origins: np.ndarray
    frame: np.ndarray
    instance: np.ndarray

    def __len__(self) -> int:
        return int(self.xyz.shape[0])


def _transform(T: np.ndarray, p: np.ndarray) -> np.ndarray:
    return p @ T[:3, :3].T + T[:3, 3]


def _in_ego_box(xyz_ego: np.ndarray, ego_box) -> np.ndarray:
    lo, hi = np.asarray(ego_box[:3]), np.asarray(ego_box[3:])
    return np.all((xyz_ego >= lo) & (xyz_ego <= hi), axis=1)


def window_indices(scene: SceneRecord, target: int, window: Optional[int]) -> list[int]:
    """Frames aggregated for ``target``: all frames within ``window`` positions before and
    after it (``None`` = the whole scene), the target first."""
    n = len(scene.frames)
    if not 0 <= target < n:
        raise IndexError(f"frame index {target} outside 0..{n - 1} of scene {scene.name}")
    if window is None:
        others = [i for i in range(n) if i != target]
    else:
        if window < 0:
            raise ValueError(f"window must be >= 0 frames, got {window}")
        others = [i for i in range(max(0, target - window), min(n, target + window + 1)) if i != target]
    return [target] + others


def _ground_offset(target_ground: np.ndarray, ground: np.ndarray, cell: float = 2.0) -> float:
    """Median over shared 2 m cells of (cell median z of `ground` - of `target_ground`);
    0 when fewer than 5 cells are shared."""
    if target_ground.shape[0] == 0 or ground.shape[0] == 0:
        return 0.0

    def cell_medians(p):
        # (lower) median z per cell with >= 3 points, vectorized: sort by (cell, z), take the middle
        keys = np.floor(p[:, :2] / cell).astype(np.int64)
        keys = keys[:, 0] * 100003 + keys[:, 1]
        order = np.lexsort((p[:, 2], keys))
        keys, z = keys[order], p[order, 2]
        uniq, start, counts = np.unique(keys, return_index=True, return_counts=True)
        ok = counts >= 3
        meds = z[start + (counts - 1) // 2]
        return dict(zip(uniq[ok].tolist(), meds[ok].tolist()))

    a, b = cell_medians(target_ground), cell_medians(ground)
    shared = [b[k] - a[k] for k in a.keys() & b.keys()]
    return float(np.median(shared)) if len(shared) >= 5 else 0.0


def _ground_points(xyz: np.ndarray, labels: np.ndarray, labelled: bool) -> np.ndarray:
    if labelled:
        return xyz[np.isin(labels, list(GROUND_CLASSES))]
    # Unlabelled: points within 0.3 m of the lowest 5 % of their 2 m cell, within 30 m.
    near = np.linalg.norm(xyz[:, :2], axis=1) < 30.0
    p = xyz[near]
    if p.shape[0] == 0:
        return p
    keys = np.floor(p[:, :2] / 2.0).astype(np.int64)
    keys = keys[:, 0] * 100003 + keys[:, 1]
    uniq, inv = np.unique(keys, return_inverse=True)
    low = np.full(uniq.size, np.inf)
    np.minimum.at(low, inv, p[:, 2])
    return p[p[:, 2] <= low[inv] + 0.3]


def aggregate(
    scene: SceneRecord,
    target: int,
    window: Optional[int] = None,
    box_margin: float = 0.2,
    ground_align: bool = False,
    cache: Optional[dict] = None,
) -> AggregatedPoints:
    """Aggregate the window's points into the ego frame of frame ``target`` (see module doc).

    Args:
        scene: the scene record.
        target: index of the target keyframe in ``scene.frames``.
        window: frames before / after the target to use (None = all frames of the scene).
        box_margin: metres each box is grown by for the static / object split.
        ground_align: vertical re-alignment of the other frames' static points (see above).
        cache: optional dict reused across targets of the same scene (loaded points).

    Raises:
        FileNotFoundError / ValueError: from the frame loaders (a missing or bad point file).
    """
    cache = {} if cache is None else cache
    tgt = scene.frames[target]
    T_tgt_global = rigid_inverse(tgt.T_global_ego)
    tgt_boxes = {b.instance: b for b in tgt.boxes}
    xyz_all, lab_all, org_all, frm_all, inst_all = [], [], [], [], []
    target_ground = None
    for j in window_indices(scene, target, window):
        fr = scene.frames[j]
        if j not in cache:
            pts_lidar, labels = fr.load()
            xyz = _transform(fr.T_ego_lidar, pts_lidar)
            keep = ~_in_ego_box(xyz, scene.ego_box)
            cache[j] = (xyz[keep], labels[keep])
        xyz, labels = cache[j]
        labelled = fr.has_point_labels
        T_tgt_j = T_tgt_global @ fr.T_global_ego
        origin_j = _transform(T_tgt_j, fr.T_ego_lidar[:3, 3][None])[0]
        boxes = list(fr.boxes)
        if j == target:
            inside = assign_points_to_boxes(xyz, boxes, 0.0)
            lab = labels.copy()
            if not labelled:
                obj = inside >= 0
                lab[obj] = np.array([boxes[k].label for k in inside[obj]], np.uint8)
            inst = np.array([boxes[k].instance if k >= 0 else "" for k in inside], dtype=object)
            xyz_all.append(xyz)
            lab_all.append(lab)
            org_all.append(np.broadcast_to(origin_j, xyz.shape))
            frm_all.append(np.full(xyz.shape[0], j))
            inst_all.append(inst)
            if ground_align:
                target_ground = _ground_points(xyz[inside < 0], labels[inside < 0], labelled)
            continue
        exact = assign_points_to_boxes(xyz, boxes, 0.0)
        grown = assign_points_to_boxes(xyz, boxes, box_margin) if box_margin > 0 else exact
        thing = np.isin(labels, list(THING_CLASSES)) if labelled else np.ones(xyz.shape[0], bool)
        is_obj = (exact >= 0) & thing
        dropped = (grown >= 0) & thing & ~is_obj
        static = ~is_obj & ~dropped
        # static points: moved with the ego poses
        s_xyz = _transform(T_tgt_j, xyz[static])
        if ground_align and target_ground is not None:
            s_lab = labels[static]
            dz = _ground_offset(target_ground, _ground_points(s_xyz, s_lab, labelled))
            s_xyz[:, 2] -= dz
        xyz_all.append(s_xyz)
        lab_all.append(labels[static])
        org_all.append(np.broadcast_to(origin_j, s_xyz.shape))
        frm_all.append(np.full(s_xyz.shape[0], j))
        inst_all.append(np.full(s_xyz.shape[0], "", dtype=object))
        # object points: re-placed with the target frame's box of the same instance
        for k in np.unique(exact[is_obj]):
            box = boxes[int(k)]
            if box.instance not in tgt_boxes:
                continue
            sel = is_obj & (exact == k)
            target_box_ego = tgt_boxes[box.instance]
            p = replace_with_box(xyz[sel], box, target_box_ego)
            lab = labels[sel] if labelled else np.full(p.shape[0], box.label, np.uint8)
            xyz_all.append(p)
            lab_all.append(lab)
            org_all.append(np.full(p.shape, np.nan))
            frm_all.append(np.full(p.shape[0], j))
            inst_all.append(np.full(p.shape[0], box.instance, dtype=object))
    return AggregatedPoints(
        xyz=np.concatenate(xyz_all).astype(np.float64),
        labels=np.concatenate(lab_all).astype(np.uint8),
        origins=np.concatenate(org_all).astype(np.float64),
        frame=np.concatenate(frm_all).astype(np.int64),
        instance=np.concatenate(inst_all),
    )


__all__ = ["AggregatedPoints", "aggregate", "window_indices", "UNLABELLED"]
