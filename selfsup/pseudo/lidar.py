"""LiDAR backends: depth by projection, and nuScenes lidarseg classes by projection.

Both keep, per pixel, the *nearest* return that lands in it (smallest camera z), which is
the visible surface when several points (e.g. accumulated from neighbouring frames, seen
from other viewpoints) fall into one pixel. Points are projected with the dataset's
intrinsics in continuous pixel coordinates (pixel (i, j) covers [j, j + 1) x [i, i + 1)),
so a point lands in pixel ``(floor(v), floor(u))``. NumPy: a sort of the P points, so the
cost is O(P log P) plus one image allocation, whatever the image size.

Accumulation of neighbouring frames assumes a static world: points of moving objects smear
along their paths (a moving car's old returns can hide the road behind where it now is).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from jaxtyping import Float

from selfsup.pseudo.sources import PseudoSample


def project_nearest(
    xyz_ego: Float[np.ndarray, "P 3"],
    K: Float[np.ndarray, "3 3"],
    T_ego_cam: Float[np.ndarray, "4 4"],
    hw: tuple[int, int],
    values: np.ndarray | None = None,
    min_depth: float = 0.1,
) -> tuple[Float[np.ndarray, "H W"], np.ndarray | None]:
    """Z-buffer of points in one camera: depth of the nearest point per pixel.

    Args:
        xyz_ego: points in the ego frame (metres).
        K: intrinsics of an ``hw`` image, continuous pixel coordinates.
        T_ego_cam: camera (OpenCV) -> ego.
        hw: image rows, cols.
        values: optional per-point integer values ``[P]`` (e.g. class ids); the value of
            the nearest point of each pixel is returned beside the depth.
        min_depth: points with camera z below this (metres) are dropped.

    Returns:
        depth float32 ``[H, W]`` (camera z, metres; 0 where no point lands) and int64
        values ``[H, W]`` of the same points (-1 where none), or None.
    """
    H, W = hw
    T_cam_ego = np.linalg.inv(np.asarray(T_ego_cam, dtype=np.float64))
    xyz = np.asarray(xyz_ego, dtype=np.float64) @ T_cam_ego[:3, :3].T + T_cam_ego[:3, 3]
    front = xyz[:, 2] > min_depth
    xyz = xyz[front]
    uvw = xyz @ np.asarray(K, dtype=np.float64).T
    u = np.floor(uvw[:, 0] / uvw[:, 2])
    v = np.floor(uvw[:, 1] / uvw[:, 2])
    inside = (u >= 0) & (u < W) & (v >= 0) & (v < H)
    pix = (v[inside] * W + u[inside]).astype(np.int64)
    z = xyz[inside, 2]
    order = np.lexsort((z, pix))  # by pixel, nearest first
    pix, z = pix[order], z[order]
    first = np.ones(len(pix), dtype=bool)
    first[1:] = pix[1:] != pix[:-1]
    depth = np.zeros(H * W, dtype=np.float32)
    depth[pix[first]] = z[first]
    label = None
    if values is not None:
        vals = np.asarray(values)[front][inside][order]
        label = np.full(H * W, -1, dtype=np.int64)
        label[pix[first]] = vals[first]
        label = label.reshape(H, W)
    return depth.reshape(H, W), label


def scale_intrinsics(K: np.ndarray, src_hw: tuple[int, int], out_hw: tuple[int, int]) -> np.ndarray:
    """Intrinsics (continuous convention) of an image resized from ``src_hw`` to ``out_hw``."""
    K = np.array(K, dtype=np.float64)
    sy, sx = out_hw[0] / src_hw[0], out_hw[1] / src_hw[1]
    K[..., 0, :] *= sx
    K[..., 1, :] *= sy
    return K


class LidarDepthBackend:
    """Depth maps from LiDAR: the current frame, optionally accumulated over neighbouring
    frames (``accumulate=N``: offsets -N..N, ego-motion compensated through the global
    poses; see :class:`~selfsup.pseudo.sources.SampleSource`), nearest return per pixel.

    Args:
        accumulate: neighbouring frames on each side to add (0: current frame only).
        min_depth, max_depth: metres; points outside are dropped.
    """

    kind = "depth"
    name = "lidar"
    needs_images = False

    def __init__(self, accumulate: int = 0, min_depth: float = 0.1, max_depth: float = 250.0):
        if accumulate < 0:
            raise ValueError(f"accumulate must be >= 0, got {accumulate}")
        self.accumulate = int(accumulate)
        self.min_depth, self.max_depth = float(min_depth), float(max_depth)

    def manifest(self) -> dict:
        return dict(backend=self.name, checkpoint=None, checkpoint_sha256=None,
                    backend_config=dict(accumulate=self.accumulate, min_depth=self.min_depth, max_depth=self.max_depth))

    def predict(self, sample: PseudoSample, out_hw: tuple[int, int]) -> tuple[np.ndarray, dict]:
        pts = sample.accumulated_ego if self.accumulate else sample.points_ego
        K = scale_intrinsics(sample.K, sample.src_hw, out_hw)
        maps = []
        for v in range(len(sample.cameras)):
            d, _ = project_nearest(pts, K[v], sample.T_ego_cam[v], out_hw, min_depth=self.min_depth)
            d[d > self.max_depth] = 0.0
            maps.append(d)
        maps = np.stack(maps)
        return maps, dict(valid_fraction=float((maps > 0).mean()), frames_used=len(sample.frames_used))


# nuScenes-lidarseg category names -> Occ3D class ids (0-16). The standard mapping of the
# occupancy benchmarks (Occ3D / SurroundOcc / OpenOccupancy `learning_map`), except that
# 'noise' and 'vehicle.ego' become unlabelled (None) here rather than class 0 'others',
# since they are no surface of the scene.
LIDARSEG_TO_OCC3D: dict[str, int | None] = {
    "noise": None,
    "animal": 0,
    "human.pedestrian.adult": 7,
    "human.pedestrian.child": 7,
    "human.pedestrian.construction_worker": 7,
    "human.pedestrian.personal_mobility": 0,
    "human.pedestrian.police_officer": 7,
    "human.pedestrian.stroller": 0,
    "human.pedestrian.wheelchair": 0,
    "movable_object.barrier": 1,
    "movable_object.debris": 0,
    "movable_object.pushable_pullable": 0,
    "movable_object.trafficcone": 8,
    "static_object.bicycle_rack": 0,
    "vehicle.bicycle": 2,
    "vehicle.bus.bendy": 3,
    "vehicle.bus.rigid": 3,
    "vehicle.car": 4,
    "vehicle.construction": 5,
    "vehicle.emergency.ambulance": 0,
    "vehicle.emergency.police": 0,
    "vehicle.motorcycle": 6,
    "vehicle.trailer": 9,
    "vehicle.truck": 10,
    "flat.driveable_surface": 11,
    "flat.other": 12,
    "flat.sidewalk": 13,
    "flat.terrain": 14,
    "static.manmade": 15,
    "static.other": 0,
    "static.vegetation": 16,
    "vehicle.ego": None,
}


class LidarsegBackend:
    """Occ3D classes by projecting nuScenes-lidarseg point labels (nearest point per pixel).

    Reads the devkit layout: ``{data_root}/{version}/lidarseg.json`` (records with
    ``sample_data_token`` and ``filename``), ``{version}/category.json`` (``name`` and the
    lidarseg ``index`` of each category) and the per-sweep ``{data_root}/{filename}``
    (``lidarseg/{version}/{token}_lidarseg.bin``, one uint8 category index per point, in the
    order of the ``.pcd.bin``). Current frame only (labels of other sweeps would need their
    own points, which accumulation does not keep apart).

    NOT TESTED ON REAL LIDARSEG FILES: none are available here; the tests write files in
    this layout for the bundled keyframes.

    Raises:
        FileNotFoundError: missing ``lidarseg.json`` / ``category.json`` / label file.
        ValueError: a label file whose length differs from the point count, or an index
            with no category.
    """

    kind = "semantic"
    name = "lidarseg"
    needs_images = False

    def __init__(self, data_root: str, version: str, min_depth: float = 0.1):
        root = Path(data_root)
        table = root / version / "lidarseg.json"
        cats = root / version / "category.json"
        for p in (table, cats):
            if not p.is_file():
                raise FileNotFoundError(f"lidarseg backend: {p} does not exist (nuScenes-lidarseg is not installed in {root})")
        self.root = root
        self.files = {r["sample_data_token"]: r["filename"] for r in json.loads(table.read_text())}
        categories = json.loads(cats.read_text())
        lut = np.full(256, -1, dtype=np.int64)
        for c in categories:
            if "index" not in c:
                raise ValueError(f"{cats}: category {c.get('name')!r} has no lidarseg 'index' (not a lidarseg category table)")
            occ = LIDARSEG_TO_OCC3D.get(c["name"], None)
            lut[int(c["index"])] = -1 if occ is None else occ
        self.lut = lut
        self.min_depth = min_depth
        self.version = version

    def manifest(self) -> dict:
        return dict(backend=self.name, checkpoint=None, checkpoint_sha256=None,
                    backend_config=dict(version=self.version, label_map="LIDARSEG_TO_OCC3D"))

    def predict(self, sample: PseudoSample, out_hw: tuple[int, int]) -> tuple[np.ndarray, dict]:
        if sample.lidar_token is None:
            raise ValueError("lidarseg backend: the sample has no LiDAR sample_data token (lidarseg exists for nuScenes only)")
        if sample.lidar_token not in self.files:
            raise FileNotFoundError(f"lidarseg.json has no record for LiDAR sample_data {sample.lidar_token} of sample {sample.token}")
        path = self.root / self.files[sample.lidar_token]
        if not path.is_file():
            raise FileNotFoundError(f"lidarseg label file {path} of sample {sample.token} does not exist")
        raw = np.fromfile(path, dtype=np.uint8)
        if raw.size != len(sample.points_ego):
            raise ValueError(f"lidarseg label file {path} has {raw.size} labels for {len(sample.points_ego)} LiDAR points")
        labels = self.lut[raw]
        K = scale_intrinsics(sample.K, sample.src_hw, out_hw)
        maps = []
        for v in range(len(sample.cameras)):
            _, lab = project_nearest(sample.points_ego, K[v], sample.T_ego_cam[v], out_hw, values=labels,
                                     min_depth=self.min_depth)
            maps.append(lab)
        maps = np.stack(maps)
        return maps, dict(labelled_fraction=float((maps >= 0).mean()))
