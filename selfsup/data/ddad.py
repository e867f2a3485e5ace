"""DDAD scenes in the TRI DGP JSON format as :class:`Frames`.

A DGP scene folder holds ``scene_<hash>.json`` (samples, and one datum per sensor and
sample with ``pose`` = sensor -> world, translation + quaternion ``qw qx qy qz``),
``calibration/<key>.json`` (per sensor: ``intrinsics`` fx fy cx cy skew and
``extrinsics`` = sensor -> vehicle pose), ``rgb/<CAMERA>/<t>.jpg`` and
``point_cloud/LIDAR/<t>.npz`` (``data``: N x 4 X Y Z INTENSITY in the LiDAR frame).

Ego frame: the DGP vehicle frame, ``T_world_vehicle = T_world_lidar @ inv(T_vehicle_lidar)``
from the LIDAR datum of each sample (the sample / reference time is the LiDAR time).
It is x forward, y left, z up with the origin on the ground; checked on the bundled
scene_02: the front camera CAMERA_01 looks along ego (1.00, 0.07, -0.01), CAMERA_05 (mounted
at y = +0.46 m) along (0.62, 0.78, -0.02), i.e. front-left; the vehicle z axis is
(-0.03, 0.01, 0.999) in world; cameras sit 1.53-1.58 m above the origin and the lowest LiDAR
returns (2nd percentile) have z = -0.04 m, the ground. Each camera datum has its own pose
(its capture time is ~90 ms before the LiDAR); ``T_ego_cam = inv(T_world_vehicle) @
T_world_cam`` folds that motion in (3 cm here, the ego drives slowly). Camera frames are
OpenCV; LiDAR points projected with these poses land inside every camera's image with
median depths 13-26 m.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from selfsup.camera import pose_matrix
from selfsup.data.frames import Frames
from selfsup.data.image import ResizeCrop, load_valid_mask, open_image, to_float_chw
from selfsup.data.neighbours import RandomNeighbours, TargetFrames, draw_of
from selfsup.data.occ_gt import attach_occ_gt

DDAD_CAMERAS: tuple[str, ...] = ("CAMERA_01", "CAMERA_05", "CAMERA_06", "CAMERA_07", "CAMERA_08", "CAMERA_09")
LIDAR = "LIDAR"
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _pose(p: dict, what: str) -> np.ndarray:
    """DGP protobuf-JSON pose ``{translation: {x,y,z}, rotation: {qw,qx,qy,qz}}`` -> 4x4."""
    try:
        t, q = p["translation"], p["rotation"]
        rotation_wxyz = (q["qw"], q["qx"], q["qy"], q["qz"])
        translation = (t.get("x", 0.0), t.get("y", 0.0), t.get("z", 0.0))
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{what}: pose needs translation.x/y/z and rotation.qw/qx/qy/qz, got {p!r}") from e
    return pose_matrix(rotation_wxyz, translation)


def _microseconds(iso: str) -> int:
    """DGP ISO-8601 timestamp (``2464-11-12T01:04:10.027900Z``) -> integer microseconds."""
    dt = datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    delta = dt - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def _load_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    with open(path) as f:
        return json.load(f)


class DDADFrames(Dataset):
    """Samples of DGP / DDAD scenes with temporal neighbours, yielding :class:`Frames`.

    Neighbours count samples of the same scene (DDAD samples are 10 Hz; the bundled test
    scene has 3 samples 1.0 s apart). By default only samples that have every requested
    neighbour are indexed (with ``(-1, 1)`` the bundled scene_02 gives 1 sample, its
    middle one); ``allow_missing_neighbours=True`` indexes every sample and clamps a
    missing neighbour to the nearest existing sample in that direction (the current one
    at worst), ``frame_offsets`` holding the offset actually used.

    Args:
        root: folder holding the scene folders (``data/samples/ddad/test_scene``).
        scene: scene folder name or a tuple of them.
        cameras: DGP camera names, in output order.
        neighbours: sample offsets of the neighbour frames, e.g. ``(-1, 1)``; or a
            :class:`~selfsup.data.neighbours.RandomNeighbours` (a seeded, resumable draw of
            ``num`` distinct valid frames in a window per step, GaussianFlowOcc's sampling;
            samples with fewer valid frames are not indexed); or a
            :class:`~selfsup.data.neighbours.TargetFrames` (absolute sample indices, e.g. a
            held-out frame; samples whose current frame is a target are not indexed).
        current_frames: sample indices (time order, per scene) that may be the current
            frame; None: all.
        exclude_frames: sample indices never loaded, neither as current frame nor as
            neighbour (held out); not with ``allow_missing_neighbours``.
        image_hw, resize_scale, crop_top: output size and resize / crop, see
            :meth:`selfsup.data.image.ResizeCrop.plan` (``None`` keeps 1216x1936).
        load_lidar: load LiDAR points; if False ``points_ego`` holds ``[0, 3]`` tensors.
        ego_mask_dir: folder with ``<CAMERA>_mask.png`` (255 = scene); ``None`` marks
            every pixel valid.
        allow_missing_neighbours: see above.
        pseudo_depth_dir: folder written by ``scripts/generate_pseudo_depth.py`` (PNG per
            camera + ``manifest.json``, see :mod:`selfsup.pseudo.storage`); fills
            ``Frames.depth_maps`` (metres, 0 = unknown) of every frame. None: no depth maps.
        pseudo_semantic_dir: folder written by ``scripts/generate_pseudo_semantics.py``;
            fills ``Frames.semantic_maps`` (Occ3D classes, 255 = unlabelled). None: none.

    Pseudo maps are resized and cropped like the images (same ``ResizeCrop``, nearest
    sampling, as in :class:`~selfsup.data.nuscenes.NuScenesFrames`); their sample ids are
    ``Frames.tokens`` (``scene/time_us``).
        gt_dir: folder of Occ3D-format voxel GT (``scripts/generate_occ_gt.py`` output,
            ``{gt_dir}/{scene}/{timestamp}/labels.npz``, see
            :func:`selfsup.occ_gt.paths.gt_label_path`); fills the ``Frames.occ_*`` fields of
            the current frame. None: no voxel GT.

    Raises:
        FileNotFoundError: missing scene folder / JSON, calibration, image, point cloud or
            voxel GT file.
        KeyError: a camera or datum missing from a sample.
        ValueError: malformed pose / intrinsics, bad image size, no usable sample.
    """

    def __init__(
        self,
        root: str,
        scene: str | tuple[str, ...] = "scene_02",
        cameras: tuple[str, ...] = DDAD_CAMERAS,
        neighbours: tuple[int, ...] | RandomNeighbours | TargetFrames = (-1, 1),
        image_hw: tuple[int, int] | None = None,
        resize_scale: float | None = None,
        crop_top: int | None = None,
        load_lidar: bool = True,
        ego_mask_dir: str | None = None,
        allow_missing_neighbours: bool = False,
        current_frames: tuple[int, ...] | None = None,
        exclude_frames: tuple[int, ...] = (),
        pseudo_depth_dir: str | None = None,
        pseudo_semantic_dir: str | None = None,
        gt_dir: str | None = None,
    ) -> None:
        self.neighbour_spec = neighbours if isinstance(neighbours, (RandomNeighbours, TargetFrames)) else None
        if self.neighbour_spec is None and 0 in neighbours:
            raise ValueError(f"neighbours are offsets other than 0 (frame 0 is always the current one), got {neighbours}")
        if exclude_frames and allow_missing_neighbours:
            raise ValueError("DDADFrames: exclude_frames cannot be combined with allow_missing_neighbours (clamping)")
        self.root = Path(root)
        self.cameras = tuple(cameras)
        self.neighbours = () if self.neighbour_spec is not None else tuple(int(n) for n in neighbours)
        self.exclude_frames = frozenset(int(f) for f in exclude_frames)
        self.load_lidar = load_lidar
        self.ego_mask_dir = None if ego_mask_dir is None else Path(ego_mask_dir)
        self.gt_dir = None if gt_dir is None else Path(gt_dir)
        # pseudo labels (selfsup.pseudo PNG format), opened at the first __getitem__
        self.pseudo_dirs = {k: d for k, d in (("depth", pseudo_depth_dir), ("semantic", pseudo_semantic_dir)) if d is not None}
        self._pseudo_readers: dict = {}
        scenes = (scene,) if isinstance(scene, str) else tuple(scene)
        self.scenes = {name: self._read_scene(name) for name in scenes}
        hw = {fr["cams"][c]["hw"] for frames in self.scenes.values() for fr in frames for c in self.cameras}
        if len(hw) != 1:
            raise ValueError(f"DDAD cameras {self.cameras} have different image sizes {sorted(hw)}")
        self.transform = ResizeCrop.plan(hw.pop(), image_hw, resize_scale, crop_top)
        self.items: list[tuple[str, int]] = []
        for name, frames in self.scenes.items():
            for i in range(len(frames)):
                if (current_frames is not None and i not in current_frames) or i in self.exclude_frames:
                    continue
                if allow_missing_neighbours or self._has_neighbours(i, len(frames)):
                    self.items.append((name, i))
        if not self.items:
            raise ValueError(
                f"no DDAD sample of {scenes} has all neighbours {neighbours} (current_frames={current_frames}, "
                f"exclude_frames={tuple(exclude_frames)}); pass allow_missing_neighbours=True to clamp offsets"
            )

    def _valid(self, j: int, n: int) -> bool:
        return 0 <= j < n and j not in self.exclude_frames

    def _has_neighbours(self, i: int, n: int) -> bool:
        spec = self.neighbour_spec
        if isinstance(spec, RandomNeighbours):
            return len(spec.candidates(lambda o: self._valid(i + o, n))) >= spec.num
        if isinstance(spec, TargetFrames):
            return i not in spec.frames and all(0 <= f < n for f in spec.frames)
        return all(self._valid(i + o, n) for o in self.neighbours)

    def neighbour_offsets(self, index: int) -> tuple[int, ...]:
        """The neighbour offsets sample ``index`` carries (drawn for ``RandomNeighbours``
        from the draw number of a :class:`~selfsup.data.neighbours.DrawIndex`)."""
        name, idx = self.items[index]
        n = len(self.scenes[name])
        spec = self.neighbour_spec
        if isinstance(spec, RandomNeighbours):
            return spec.choose(spec.candidates(lambda o: self._valid(idx + o, n)), int(index), draw_of(index))
        if isinstance(spec, TargetFrames):
            return tuple(f - idx for f in spec.frames)
        return tuple(min(max(idx + o, 0), n - 1) - idx for o in self.neighbours)

    def cache_key(self, index: int) -> tuple[int, tuple[int, ...]]:
        """What identifies the loaded sample: (index, neighbour offsets) (for ``CachedDataset``)."""
        return int(index), self.neighbour_offsets(index)

    def _read_scene(self, name: str) -> list[dict]:
        folder = self.root / name
        found = sorted(folder.glob("scene_*.json")) if folder.is_dir() else []
        if len(found) != 1:
            raise FileNotFoundError(f"DDAD scene folder {folder} must hold exactly one scene_*.json, found {len(found)}")
        scene = _load_json(found[0], "DDAD scene file")
        data = {d["key"]: d for d in scene["data"]}
        calibs: dict[str, dict] = {}
        frames = []
        for s_i, sample in enumerate(scene["samples"]):
            key = sample["calibration_key"]
            if key not in calibs:
                cal = _load_json(folder / "calibration" / f"{key}.json", "DDAD calibration file")
                calibs[key] = {
                    n: (i, _pose(e, f"{name} calibration {key} extrinsics of {n}"))
                    for n, i, e in zip(cal["names"], cal["intrinsics"], cal["extrinsics"])
                }
            cal = calibs[key]
            by_name = {data[k]["id"]["name"]: data[k] for k in sample["datum_keys"] if k in data}
            what = f"{name} sample {s_i}"
            for needed in (LIDAR, *self.cameras):
                if needed not in by_name:
                    raise KeyError(f"{what} has no datum {needed!r} (it has {sorted(by_name)})")
                if needed not in cal:
                    raise KeyError(f"{what}: calibration {key} has no sensor {needed!r}")
            lidar = by_name[LIDAR]["datum"]["point_cloud"]
            T_world_lidar = _pose(lidar["pose"], f"{what} LIDAR datum")
            T_world_ego = T_world_lidar @ np.linalg.inv(cal[LIDAR][1])
            cams = {}
            for cam in self.cameras:
                img = by_name[cam]["datum"]["image"]
                intr = cal[cam][0]
                try:
                    K = np.array([[intr["fx"], intr.get("skew", 0.0), intr["cx"]], [0.0, intr["fy"], intr["cy"]], [0.0, 0.0, 1.0]])
                except KeyError as e:
                    raise ValueError(f"{what}: intrinsics of {cam} need fx fy cx cy, got {intr!r}") from e
                cams[cam] = dict(
                    path=folder / img["filename"], hw=(int(img["height"]), int(img["width"])), K=K,
                    T_world_cam=_pose(img["pose"], f"{what} {cam} datum"),
                )
            frames.append(dict(
                time_us=_microseconds(by_name[LIDAR]["id"]["timestamp"]), T_world_ego=T_world_ego,
                T_ego_lidar=cal[LIDAR][1], lidar_path=folder / lidar["filename"], cams=cams,
            ))
        return sorted(frames, key=lambda f: f["time_us"])

    def __len__(self) -> int:
        return len(self.items)

    def lidar_poses(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """LiDAR poses for RayIoU origins (``eval.rayiou.scene_lidar_origins_ego``): the
        current sample's ``T_world_ego`` and ``T_ego_lidar``, ``T_world_lidar`` of every
        sample of its scene in time order (float64), and the current sample's position."""
        name, idx = self.items[i]
        frames = self.scenes[name]
        T_world_lidar = np.stack([f["T_world_ego"] @ f["T_ego_lidar"] for f in frames])
        return frames[idx]["T_world_ego"], frames[idx]["T_ego_lidar"], T_world_lidar, idx

    def _points(self, frame: dict) -> np.ndarray:
        path = frame["lidar_path"]
        if not path.is_file():
            raise FileNotFoundError(f"DDAD LiDAR file {path} does not exist")
        try:
            xyz = np.load(path)["data"][:, :3].astype(np.float64)
        except (KeyError, ValueError, OSError) as e:
            raise ValueError(f"DDAD LiDAR file {path}: expected an npz with 'data' of shape N x >=3 ({e})") from e
        T = frame["T_ego_lidar"]
        return xyz @ T[:3, :3].T + T[:3, 3]

    def __getitem__(self, i: int) -> Frames:
        name, idx = self.items[i]
        frames = self.scenes[name]
        chosen = [idx] + [idx + o for o in self.neighbour_offsets(i)]
        images, Ks, T_ego_cam, T_world_ego, stamps, points = [], [], [], [], [], []
        for j in chosen:
            fr = frames[j]
            T_ego_world = np.linalg.inv(fr["T_world_ego"])
            imgs, ks, tcs = [], [], []
            for cam in self.cameras:
                c = fr["cams"][cam]
                imgs.append(to_float_chw(self.transform.image(open_image(c["path"], f"DDAD {name} {cam}"))))
                ks.append(self.transform.intrinsics(c["K"]))
                tcs.append(T_ego_world @ c["T_world_cam"])
            images.append(np.stack(imgs))
            Ks.append(np.stack(ks))
            T_ego_cam.append(np.stack(tcs))
            T_world_ego.append(fr["T_world_ego"])
            stamps.append(fr["time_us"] / 1e6)
            pts = self._points(fr) if self.load_lidar else np.zeros((0, 3))
            points.append(torch.from_numpy(pts.astype(np.float32)))
        h, w = self.transform.out_hw
        if self.ego_mask_dir is None:
            masks = torch.ones(len(self.cameras), h, w, dtype=torch.bool)
        else:
            masks = torch.from_numpy(np.stack([
                load_valid_mask(self.ego_mask_dir / f"{cam}_mask.png", self.transform) for cam in self.cameras]))
        pseudo = self._pseudo_maps(name, [f"{name}/{frames[j]['time_us']}" for j in chosen])
        sample = Frames(
            images=torch.from_numpy(np.stack(images)),
            K=torch.from_numpy(np.stack(Ks).astype(np.float32)),
            T_ego_cam=torch.from_numpy(np.stack(T_ego_cam).astype(np.float32)),
            T_global_ego=torch.from_numpy(np.stack(T_world_ego).astype(np.float32)),
            timestamps=torch.tensor(stamps, dtype=torch.float64),
            frame_offsets=torch.tensor([j - idx for j in chosen], dtype=torch.int64),
            valid_masks=masks,
            depth_maps=pseudo.get("depth"),
            semantic_maps=pseudo.get("semantic"),
            points_ego=points,
            tokens=f"{name}/{frames[idx]['time_us']}",
            scene_names=name,
            camera_names=self.cameras,
        )
        return sample if self.gt_dir is None else attach_occ_gt(sample, self.gt_dir)

    def _pseudo_maps(self, name: str, tokens: list[str]) -> dict:
        """``{"depth": [T, V, h, w] float32, "semantic": [T, V, h, w] int16}`` of the configured readers."""
        from selfsup.pseudo.storage import PseudoLabelReader, load_transformed

        out = {}
        for kind, folder in self.pseudo_dirs.items():
            if kind not in self._pseudo_readers:
                self._pseudo_readers[kind] = PseudoLabelReader(folder, kind)
            reader = self._pseudo_readers[kind]
            out[kind] = torch.from_numpy(np.stack([load_transformed(reader, name, tok, self.cameras, self.transform)
                                                   for tok in tokens]))
        return out
