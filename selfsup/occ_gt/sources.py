"""Readers of the ground-truth sources into one scene record.

A :class:`SceneRecord` is what the generator needs of a driving log: per LiDAR frame (time
order) its token, time, ego pose, LiDAR calibration, a loader of its points (and per-point
Occ3D labels where the data has them), its 3D boxes with instance ids in that frame's ego
frame, and, where the source has cameras, the cameras of the frame. Three sources:

- ``lidarseg-frames``: a folder like ``scene-0006_lidarseg_11keyframes/`` (``frames.json`` +
  ``frame_XX.npz``; see ``data/samples/ATTRIBUTION.md``): LiDAR points with per-point Occ3D
  labels, boxes in the LIDAR_TOP frame as (x, y, z of the box *bottom* centre, size along the
  box's local x, size along local y, height, yaw counter-clockwise about z), a box token per
  box that is the same in every frame the object appears in (it is the instance key), no
  cameras. The sample token of a frame is its LIDAR_TOP sample_data token.
- ``nuscenes``: a nuscenes-devkit data root (keyframes; LIDAR_TOP ``.pcd.bin`` N x 5, boxes from
  ``sample_annotation`` with their ``instance_token``, category names mapped to Occ3D classes,
  six cameras). The sample token is the nuScenes sample token.
- ``ddad``: TRI DGP scenes (``selfsup/data/ddad.py`` reads them the same way): LiDAR
  ``point_cloud/LIDAR/<t>.npz``, boxes ``bounding_box_3d/LIDAR/<t>.json`` (centre pose in the
  LiDAR frame, ``length`` / ``width`` / ``height`` along the box x / y / z, ``instance_id``,
  ``class_id`` of the scene ontology), six cameras. The sample token is
  ``f"{scene}/{time_us}"``, exactly what :class:`selfsup.data.ddad.DDADFrames` yields.

Frames are 4 x 4 ``T_dst_src``; ego x forward, y left, z up; metres; camera frames OpenCV.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from selfsup.constants import SEMANTIC_UNLABELLED
from selfsup.occ_gt.boxes import Box, box_from_bottom_center_yaw

UNLABELLED = SEMANTIC_UNLABELLED  # per-point label of a point the data gives no class (255)

# nuScenes category name (prefix) -> Occ3D class; the nuScenes-lidarseg / Occ3D grouping
# (detection classes 1-10, everything else annotated with a box is `others` = 0).
NUSCENES_CATEGORY_TO_OCC3D: tuple[tuple[str, int], ...] = (
    ("movable_object.barrier", 1),
    ("vehicle.bicycle", 2),
    ("vehicle.bus", 3),
    ("vehicle.car", 4),
    ("vehicle.construction", 5),
    ("vehicle.motorcycle", 6),
    ("human.pedestrian.adult", 7),
    ("human.pedestrian.child", 7),
    ("human.pedestrian.construction_worker", 7),
    ("human.pedestrian.police_officer", 7),
    ("movable_object.trafficcone", 8),
    ("vehicle.trailer", 9),
    ("vehicle.truck", 10),
)

# DDAD ontology name -> Occ3D class (names of the bundled scene ontology).
DDAD_CLASS_TO_OCC3D: dict[str, int] = {
    "Person": 7,
    "Truck": 10,
    "Car": 4,
    "Bus/RV/Caravan": 3,
    "Motorcycle": 6,
    "Bicycle": 2,
    "Trailer": 9,
    "Towed Object": 9,
    "Wheeled Slow": 0,
    "Train": 0,
}


def nuscenes_category_to_occ3d(name: str) -> int:
    """Occ3D class of a nuScenes category name (``others`` = 0 for any other category)."""
    for prefix, label in NUSCENES_CATEGORY_TO_OCC3D:
        if name == prefix or name.startswith(prefix + "."):
            return label
    return 0


@dataclass(frozen=True)
class Camera:
    """One camera of a frame: pixel intrinsics (pixel centres at +0.5), camera -> ego."""

    name: str
    K: np.ndarray  # float64 [3, 3], continuous pixel coordinates
    T_ego_cam: np.ndarray  # float64 [4, 4], OpenCV camera -> ego frame of the LiDAR frame
    hw: tuple[int, int]


@dataclass
class LidarFrame:
    """One LiDAR frame of a scene.

    Attributes:
        token: sample token of the frame (see the module docstring per source).
        time_us: LiDAR time, microseconds.
        T_global_ego: ego -> global (world) at the LiDAR time.
        T_ego_lidar: LiDAR -> ego.
        load: returns (points [N, 3] float64 in the LiDAR frame, labels [N] uint8 Occ3D
            class or 255 = unlabelled); raises FileNotFoundError / ValueError naming the file.
        boxes: annotated boxes in this frame's ego frame.
        cameras: cameras of the frame (empty where the source has none).
        is_keyframe: whether ground truth is generated for this frame.
    """

    token: str
    time_us: int
    T_global_ego: np.ndarray
    T_ego_lidar: np.ndarray
    load: Callable[[], tuple[np.ndarray, np.ndarray]]
    boxes: list[Box] = field(default_factory=list)
    cameras: list[Camera] = field(default_factory=list)
    is_keyframe: bool = True
    has_point_labels: bool = False


@dataclass
class SceneRecord:
    """Frames of one scene in time order, and how to recognise the ego car's own returns.

    Attributes:
        name: scene name (the first directory level of the output).
        frames: LiDAR frames, time order.
        ego_box: (x_min, y_min, z_min, x_max, y_max, z_max) in the ego frame, metres: LiDAR
            returns inside it are the ego vehicle's own body and are removed.
    """

    name: str
    frames: list[LidarFrame]
    ego_box: tuple[float, float, float, float, float, float]

    def poses_have_height(self) -> bool:
        """False when every ego pose has z translation 0 (nuScenes logs: poses are 2-D)."""
        return any(abs(float(f.T_global_ego[2, 3])) > 0.0 for f in self.frames)

    def keyframe_indices(self) -> list[int]:
        return [i for i, f in enumerate(self.frames) if f.is_keyframe]

    def index_of(self, token: str) -> int:
        """Index of the frame with this sample token.

        Raises:
            KeyError: naming the token and the scene.
        """
        for i, f in enumerate(self.frames):
            if f.token == token:
                return i
        raise KeyError(f"sample token {token!r} is not a frame of scene {self.name!r}")


# nuScenes: the Renault Zoe (4.08 m x 1.73 m, ego origin at the rear axle); the roof-mounted
# LiDAR sees the roof and the bonnet. The ground below the car (z < 0.25 m) is kept.
NUSCENES_EGO_BOX = (-1.2, -1.1, 0.25, 3.3, 1.1, 2.5)
# DDAD: the bundled clouds hold no return of the car itself (none above 0.25 m within 4 m of
# the vehicle origin); the box only guards against one.
DDAD_EGO_BOX = (-1.2, -1.1, 0.25, 3.8, 1.1, 2.2)


def _pose_wxyz(rotation_wxyz, translation) -> np.ndarray:
    from selfsup.camera import pose_matrix

    return pose_matrix(rotation_wxyz, translation)


def _load_npz_points(path: Path, what: str, points_key: str, labels_key: Optional[str]):
    if not path.is_file():
        raise FileNotFoundError(f"{what}: point file {path} does not exist")
    try:
        with np.load(path) as data:
            pts = np.asarray(data[points_key])
            labels = np.asarray(data[labels_key]) if labels_key else None
    except KeyError as err:
        raise ValueError(f"{what}: point file {path} has no array {err}") from err
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(f"{what}: point file {path} is not a readable npz ({err})") from err
    if pts.ndim != 2 or pts.shape[1] < 3:
        raise ValueError(f"{what}: {path} `{points_key}` has shape {pts.shape}, expected N x >=3")
    if labels is None:
        labels = np.full(pts.shape[0], UNLABELLED, np.uint8)
    elif labels.shape != (pts.shape[0],):
        raise ValueError(f"{what}: {path} `{labels_key}` has shape {labels.shape}, expected ({pts.shape[0]},)")
    elif labels.size and int(labels.max()) > 16:
        raise ValueError(f"{what}: {path} `{labels_key}` holds {int(labels.max())}, expected Occ3D classes 0..16")
    return pts[:, :3].astype(np.float64), labels.astype(np.uint8)


# --------------------------------------------------------------------- lidarseg-frames


def read_lidarseg_frames(root: str | Path, scene_name: Optional[str] = None) -> SceneRecord:
    """The ``lidarseg-frames`` source: one scene folder (``frames.json`` + ``frame_XX.npz``).

    Args:
        root: the folder itself (e.g. ``data/samples/nuscenes_raw/scene-0006_lidarseg_11keyframes``).
        scene_name: default: the folder name up to its first ``_`` (``scene-0006``).

    Raises:
        FileNotFoundError: no folder / ``frames.json``; (when loaded) a missing frame file.
        ValueError: a malformed frame entry or box array, a box without a token (instance).
    """
    root = Path(root)
    meta_path = root / "frames.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"lidarseg-frames: {meta_path} does not exist (--data-root must be the scene folder)")
    with open(meta_path) as f:
        meta = json.load(f)
    entries = meta.get("frames") if isinstance(meta, dict) else None
    if not entries:
        raise ValueError(f"lidarseg-frames: {meta_path} has no non-empty `frames` list")
    name = scene_name or root.name.split("_")[0]
    frames = []
    for k, e in enumerate(entries):
        what = f"lidarseg-frames {meta_path} frame {k}"
        try:
            index = int(e.get("index", k))
            token = str(e["lidar_sample_data_token"])
            T_global_ego = _pose_wxyz(e["ego_pose"]["rotation_wxyz"], e["ego_pose"]["translation"])
            cal = e["lidar_calibrated_sensor"]
            T_ego_lidar = _pose_wxyz(cal["rotation_wxyz"], cal["translation"])
            box_tokens = list(e["box_annotation_tokens"])
            box_classes = [int(c) for c in e["box_classes"]]
            time_us = int(e["timestamp_us"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{what}: missing or malformed field {err}") from err
        path = root / f"frame_{index:02d}.npz"
        frames.append(LidarFrame(
            token=token, time_us=time_us, T_global_ego=T_global_ego, T_ego_lidar=T_ego_lidar,
            load=_LidarsegLoader(path, what), boxes=_lidarseg_boxes(path, what, box_tokens, box_classes, T_ego_lidar),
            has_point_labels=True,
        ))
    frames.sort(key=lambda f: f.time_us)
    return SceneRecord(name=name, frames=frames, ego_box=NUSCENES_EGO_BOX)


class _LidarsegLoader:
    def __init__(self, path: Path, what: str) -> None:
        self.path, self.what = path, what

    def __call__(self):
        return _load_npz_points(self.path, self.what, "points", "labels")


def _lidarseg_boxes(path: Path, what: str, tokens: list, classes: list, T_ego_lidar: np.ndarray) -> list[Box]:
    """Boxes of one lidarseg frame in its ego frame (bottom-centre / yaw rows of ``boxes``)."""
    for i, t in enumerate(tokens):
        if not isinstance(t, str) or not t:
            raise ValueError(f"{what}: box {i} has no annotation token (instance id), got {t!r}")
    if len(tokens) != len(classes):
        raise ValueError(f"{what}: {len(tokens)} box tokens but {len(classes)} box classes")
    if not path.is_file():
        raise FileNotFoundError(f"{what}: point file {path} does not exist")
    with np.load(path) as data:
        if "boxes" not in data.files:
            raise ValueError(f"{what}: {path} has no `boxes` array")
        arr = np.asarray(data["boxes"], dtype=np.float64)
    arr = arr.reshape(-1, 7) if arr.size else np.zeros((0, 7))
    if arr.shape[0] != len(tokens):
        raise ValueError(f"{what}: {path} holds {arr.shape[0]} boxes but frames.json lists {len(tokens)} tokens")
    return [
        box_from_bottom_center_yaw(row[:3], row[3:6], row[6], label=cls, instance=tok).transformed(T_ego_lidar)
        for row, tok, cls in zip(arr, tokens, classes)
    ]


# ----------------------------------------------------------------------------- nuScenes


def read_nuscenes(data_root: str | Path, version: str, scenes: Optional[list[str]] = None) -> list[SceneRecord]:
    """The ``nuscenes`` source: keyframes of a nuscenes-devkit root.

    Points: ``LIDAR_TOP`` ``.pcd.bin`` (N x 5), unlabelled (semantics from boxes). Boxes:
    ``sample_annotation`` (global frame, size = width, length, height) with their
    ``instance_token``. Cameras: the six ``CAM_*`` of the keyframe with their own ego pose
    folded into ``T_ego_cam`` (as :class:`selfsup.data.nuscenes.NuScenesFrames`).

    Raises:
        FileNotFoundError: missing root / tables (naming them).
        KeyError: an unknown scene name, an annotation without an instance token.
    """
    from selfsup.data.nuscenes import LIDAR, build_index, open_devkit

    nusc = open_devkit(str(data_root), version)
    index = build_index(nusc, "all")
    names = [s["name"] for s in nusc.scene]
    wanted = names if not scenes else list(scenes)
    for s in wanted:
        if s not in names:
            raise KeyError(f"nuScenes scene {s!r} is not in {data_root}/{version} (scenes: {names})")
    sd = index["sample_data"]
    records = []
    for scene in wanted:
        frames = []
        for sample in (x for x in index["samples"] if x["scene_name"] == scene):
            lidar = sd[sample["data"][LIDAR]]
            T_global_ego = lidar["T_global_ego"]
            T_ego_global = np.linalg.inv(T_global_ego)
            cams = []
            for ch, tok in sorted(sample["data"].items()):
                if not ch.startswith("CAM_"):
                    continue
                c = sd[tok]
                K = c["K"].copy()
                K[0, 2] += 0.5  # calibration puts pixel centres at integers
                K[1, 2] += 0.5
                cams.append(Camera(ch, K, T_ego_global @ c["T_global_ego"] @ c["T_ego_sensor"], c["hw"]))
            boxes = []
            for ann_token in nusc.get("sample", sample["token"])["anns"]:
                ann = nusc.get("sample_annotation", ann_token)
                inst = ann.get("instance_token")
                if not inst:
                    raise KeyError(f"nuScenes sample_annotation {ann_token} (sample {sample['token']}) has no instance_token")
                cat = nusc.get("category", nusc.get("instance", inst)["category_token"])["name"]
                w, l, h = ann["size"]
                T_global_box = _pose_wxyz(ann["rotation"], ann["translation"])
                boxes.append(Box(T_ego_global @ T_global_box, np.array([l, w, h], float),
                                 nuscenes_category_to_occ3d(cat), inst))
            path = Path(data_root) / lidar["filename"]
            frames.append(LidarFrame(
                token=sample["token"], time_us=int(lidar["timestamp"]), T_global_ego=T_global_ego,
                T_ego_lidar=lidar["T_ego_sensor"], load=_PcdBinLoader(path, f"nuScenes sample {sample['token']}"),
                boxes=boxes, cameras=cams,
            ))
        records.append(SceneRecord(name=scene, frames=frames, ego_box=NUSCENES_EGO_BOX))
    return records


class _PcdBinLoader:
    def __init__(self, path: Path, what: str) -> None:
        self.path, self.what = path, what

    def __call__(self):
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.what}: LiDAR file {self.path} does not exist")
        raw = np.fromfile(self.path, dtype=np.float32)
        if raw.size % 5:
            raise ValueError(f"{self.what}: LiDAR file {self.path} holds {raw.size} floats, expected N x 5")
        pts = raw.reshape(-1, 5)[:, :3].astype(np.float64)
        return pts, np.full(pts.shape[0], UNLABELLED, np.uint8)


# --------------------------------------------------------------------------------- DDAD


def read_ddad(root: str | Path, scenes: Optional[list[str]] = None) -> list[SceneRecord]:
    """The ``ddad`` source: DGP scene folders under ``root`` (e.g. ``data/samples/ddad/test_scene``).

    Poses, calibration and cameras are read by :class:`selfsup.data.ddad.DDADFrames`; boxes
    from each LiDAR datum's ``bounding_box_3d`` annotation file.

    Raises:
        FileNotFoundError: missing scene folder, JSON, point cloud or box file.
        KeyError: a box without ``instance_id`` or with a class the ontology lacks.
    """
    from selfsup.data.ddad import DDADFrames, _load_json, _pose

    root = Path(root)
    if not scenes:
        scenes = sorted(p.name for p in root.iterdir() if p.is_dir() and list(p.glob("scene_*.json")))
        if not scenes:
            raise FileNotFoundError(f"ddad: no scene folder with a scene_*.json under {root}")
    records = []
    for scene in scenes:
        ds = DDADFrames(str(root), scene, neighbours=(), allow_missing_neighbours=True, load_lidar=False)
        folder = root / scene
        ontology_files = sorted((folder / "ontology").glob("*.json"))
        classes: dict[int, str] = {}
        for p in ontology_files:
            for item in _load_json(p, "DDAD ontology").get("items", []):
                classes[int(item["id"])] = item["name"]
        scene_json = _load_json(sorted(folder.glob("scene_*.json"))[0], "DDAD scene file")
        box_files = {}
        for d in scene_json["data"]:
            pc = d.get("datum", {}).get("point_cloud")
            if pc is not None and d["id"]["name"] == "LIDAR":
                ann = pc.get("annotations", {})
                box_files[pc["filename"]] = ann.get("1")  # DGP annotation type 1 = bounding_box_3d
        frames = []
        for fr in ds.scenes[scene]:
            rel = str(Path(fr["lidar_path"]).relative_to(folder))
            what = f"DDAD {scene} LiDAR {rel}"
            boxes = []
            box_rel = box_files.get(rel)
            if box_rel:
                for i, a in enumerate(_load_json(folder / box_rel, "DDAD box file").get("annotations", [])):
                    if "instance_id" not in a:
                        raise KeyError(f"DDAD box file {folder / box_rel}: box {i} has no instance_id")
                    cid = int(a.get("class_id", 0))
                    if cid not in classes:
                        raise KeyError(f"DDAD box file {folder / box_rel}: box {i} class_id {cid} not in the ontology {classes}")
                    b = a["box"]
                    T_lidar_box = _pose(b["pose"], f"DDAD box file {folder / box_rel} box {i}")
                    box = Box(T_lidar_box, np.array([b["length"], b["width"], b["height"]], float),
                              DDAD_CLASS_TO_OCC3D.get(classes[cid], 0), str(a["instance_id"]))
                    boxes.append(box.transformed(fr["T_ego_lidar"]))
            T_ego_world = np.linalg.inv(fr["T_world_ego"])
            cams = []
            for cam in ds.cameras:
                c = fr["cams"][cam]
                K = c["K"].copy()
                K[0, 2] += 0.5
                K[1, 2] += 0.5
                cams.append(Camera(cam, K, T_ego_world @ c["T_world_cam"], c["hw"]))
            frames.append(LidarFrame(
                token=f"{scene}/{fr['time_us']}", time_us=int(fr["time_us"]), T_global_ego=fr["T_world_ego"],
                T_ego_lidar=fr["T_ego_lidar"], load=_DDADLoader(Path(fr["lidar_path"]), what), boxes=boxes, cameras=cams,
            ))
        records.append(SceneRecord(name=scene, frames=frames, ego_box=DDAD_EGO_BOX))
    return records


class _DDADLoader:
    def __init__(self, path: Path, what: str) -> None:
        self.path, self.what = path, what

    def __call__(self):
        return _load_npz_points(self.path, self.what, "data", None)


SOURCES = ("lidarseg-frames", "nuscenes", "ddad")


def read_source(source: str, data_root: str | Path, version: str = "v1.0-mini",
                scenes: Optional[list[str]] = None) -> list[SceneRecord]:
    """Scenes of one source (see the module docstring).

    Raises:
        ValueError: unknown source; the readers' errors otherwise.
    """
    if source == "lidarseg-frames":
        rec = read_lidarseg_frames(data_root)
        if scenes and list(scenes) != [rec.name]:
            raise KeyError(f"lidarseg-frames: {data_root} holds scene {rec.name!r}, not {scenes}")
        return [rec]
    if source == "nuscenes":
        return read_nuscenes(data_root, version, scenes)
    if source == "ddad":
        return read_ddad(data_root, scenes)
    raise ValueError(f"unknown source {source!r}; expected one of {SOURCES}")
