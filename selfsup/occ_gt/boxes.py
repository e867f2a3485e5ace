"""3D boxes: pose, size, class, instance; point-in-box tests and re-placement by box poses.

A box frame has its origin at the box *centre*, x along the box's length, y along its width,
z up; ``size`` is the full extent along those axes. ``T_frame_box`` maps box coordinates into
the frame the box is given in (``p_frame = T_frame_box @ p_box``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from jaxtyping import Bool, Float, Int64


@dataclass(frozen=True)
class Box:
    """One annotated box.

    Attributes:
        T_frame_box: float64 [4, 4], box -> frame (rigid).
        size: float64 [3], full extent along box x, y, z, metres.
        label: Occ3D class 0-16 of the object.
        instance: identity of the object across frames (instance token / id).
    """

    T_frame_box: np.ndarray
    size: np.ndarray
    label: int
    instance: str

    def transformed(self, T_new_frame: Float[np.ndarray, "4 4"]) -> "Box":
        """The same box expressed in another frame (``T_new_frame`` maps the old frame into it)."""
        return Box(T_new_frame @ self.T_frame_box, self.size, self.label, self.instance)

    def corners(self) -> Float[np.ndarray, "8 3"]:
        """The 8 corners in the box's frame of reference (``T_frame_box`` applied)."""
        signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], float)
        local = signs * (self.size / 2)
        return local @ self.T_frame_box[:3, :3].T + self.T_frame_box[:3, 3]


def box_from_bottom_center_yaw(
    bottom_center: Float[np.ndarray, "3"],
    size: Float[np.ndarray, "3"],
    yaw: float,
    label: int,
    instance: str,
) -> Box:
    """A box given by the centre of its bottom face, its size and a yaw about z.

    This is the convention of the scene-0006 lidarseg frames (SurroundOcc's own-data
    tool): x, y, z of the bottom centre, size along the box's local x, along local y,
    height, yaw counter-clockwise about the frame's z axis (radians).

    Raises:
        ValueError: a non-positive size.
    """
    size = np.asarray(size, dtype=np.float64)
    if size.shape != (3,) or not np.all(size > 0):
        raise ValueError(f"box {instance!r}: size must be 3 positive lengths, got {size}")
    c, s = np.cos(yaw), np.sin(yaw)
    T = np.eye(4)
    T[:3, :3] = [[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]
    T[:3, 3] = np.asarray(bottom_center, dtype=np.float64) + [0.0, 0.0, size[2] / 2]
    return Box(T, size, int(label), str(instance))


def points_in_box(
    points: Float[np.ndarray, "N 3"], box: Box, margin: float = 0.0
) -> Bool[np.ndarray, "N"]:
    """Whether each point (in the box's frame of reference) lies inside the box grown by
    ``margin`` metres on every side (boundary included)."""
    local = (points - box.T_frame_box[:3, 3]) @ box.T_frame_box[:3, :3]
    return np.all(np.abs(local) <= box.size / 2 + margin, axis=1)


def assign_points_to_boxes(
    points: Float[np.ndarray, "N 3"], boxes: list[Box], margin: float = 0.0
) -> Int64[np.ndarray, "N"]:
    """Index of the first box (grown by ``margin``) that holds each point, -1 for none.

    Candidates of each box come from a binary search of its bounding sphere's x-range in
    the x-sorted points and a y-range test, before the exact test.
    """
    owner = np.full(points.shape[0], -1, dtype=np.int64)
    if not boxes or points.shape[0] == 0:
        return owner
    order = np.argsort(points[:, 0], kind="stable")
    xs = points[order, 0]
    for i, box in enumerate(boxes):
        r = float(np.linalg.norm(box.size / 2 + margin))
        cx, cy = box.T_frame_box[0, 3], box.T_frame_box[1, 3]
        lo, hi = np.searchsorted(xs, cx - r, "left"), np.searchsorted(xs, cx + r, "right")
        cand = order[lo:hi]
        cand = cand[(np.abs(points[cand, 1] - cy) <= r) & (owner[cand] < 0)]
        if cand.size:
            owner[cand[points_in_box(points[cand], box, margin)]] = i
    return owner


def rigid_inverse(T: Float[np.ndarray, "4 4"]) -> Float[np.ndarray, "4 4"]:
    """Inverse of a rigid 4 x 4 transform: [R^T, -R^T t] (exact, no general matrix inverse)."""
    inv = np.eye(4)
    inv[:3, :3] = T[:3, :3].T
    inv[:3, 3] = -T[:3, :3].T @ T[:3, 3]
    return inv


def replace_with_box(
    points: Float[np.ndarray, "N 3"], source: Box, target: Box
) -> Float[np.ndarray, "N 3"]:
    """Move points of an object from its box pose in one frame to its pose in another.

    ``p_target = T_target_box @ inv(T_source_box) @ p_source``: the points keep their place
    relative to the object, so a moving object is not smeared over its trajectory.

    Raises:
        ValueError: the two boxes belong to different instances.
    """
    if source.instance != target.instance:
        raise ValueError(f"cannot re-place points of instance {source.instance!r} with box of {target.instance!r}")
    T = target.T_frame_box @ rigid_inverse(source.T_frame_box)
    return points @ T[:3, :3].T + T[:3, 3]
