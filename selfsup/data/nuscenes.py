"""nuScenes multi-camera frames (nuscenes-devkit tables or a cached index) as :class:`Frames`.

The devkit tables are walked once into a compact *index* (:func:`build_index`): per
keyframe the sample token, scene name, timestamps, file paths relative to the data root,
4x4 calibrations and ego poses, and prev / next links. ``scripts/create_infos.py`` pickles
that index so training does not re-walk the tables at each start; :class:`NuScenesFrames`
reads either and yields identical samples.

Reference frame of a frame t: the ego pose at the LiDAR (keyframe) time for keyframes,
the ego pose of the first configured camera for camera sweeps. Each camera's own ego pose
(it is captured up to ~45 ms away from the LiDAR) is folded into ``T_ego_cam``.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from selfsup.camera import pose_matrix
from selfsup.data.frames import SEMANTIC_UNLABELLED, Frames
from selfsup.data.neighbours import RandomNeighbours, draw_of
from selfsup.data.image import ResizeCrop, load_valid_mask, open_image, to_float_chw
from selfsup.data.occ_gt import attach_occ_gt
from selfsup.io import atomic_write_bytes
from selfsup.pseudo.storage import is_png_folder

NUSCENES_CAMERAS: tuple[str, ...] = (
    "CAM_FRONT_LEFT",
    "CAM_FRONT",
    "CAM_FRONT_RIGHT",
    "CAM_BACK_LEFT",
    "CAM_BACK",
    "CAM_BACK_RIGHT",
)
LIDAR = "LIDAR_TOP"
DEVKIT_TABLES: tuple[str, ...] = (
    "category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor",
    "ego_pose", "log", "scene", "sample", "sample_data", "sample_annotation", "map",
)
# GaussianFlowOcc's pseudo labels: one file {dir}/{scene_name}/{sample_token}.npy per keyframe,
# np.save of all six cameras at the original 900 x 1600, in two different camera orders.
# Depth: Metric3D ViT-L, float16 camera z in metres (clamped to [0, 300]), cameras in this
# order (tools/generate_m3d_nusc.py, `cams`).
PSEUDO_DEPTH_CAMERAS: tuple[str, ...] = NUSCENES_CAMERAS
# Semantics: Grounded-SAM, int8, cameras in this order (groundedsam/generate_grounded_sam.py,
# `camera_names`; the loader's `save_order`). Values 1-16 are already Occ3D classes (the
# prompt groups are mapped through its `nusc_v2_to_v1` table, e.g. car -> 4, barrier -> 1);
# 0 is sky / nothing detected and -1 an image without any detection: both unlabelled here.
# Occ3D class 0 ('others') never occurs.
PSEUDO_SEMANTIC_CAMERAS: tuple[str, ...] = (
    "CAM_FRONT", "CAM_FRONT_LEFT", "CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT", "CAM_FRONT_RIGHT",
)
INDEX_FORMAT = 1
SPLITS = ("train", "val", "test", "mini_train", "mini_val", "all")


def _pose(rotation_wxyz, translation) -> np.ndarray:
    return pose_matrix(rotation_wxyz, translation)


def open_devkit(data_root: str, version: str):
    """Load ``nuscenes.nuscenes.NuScenes`` after checking that every table file exists.

    Raises:
        FileNotFoundError: naming the missing data root, version folder or table file.
        KeyError: if the tables reference a token that does not exist.
    """
    table_root = Path(data_root) / version
    if not table_root.is_dir():
        raise FileNotFoundError(f"nuScenes version folder {table_root} does not exist (data_root={data_root!r}, version={version!r})")
    for name in DEVKIT_TABLES:
        if not (table_root / f"{name}.json").is_file():
            raise FileNotFoundError(f"nuScenes table '{name}' is missing: {table_root / (name + '.json')} does not exist")
    from nuscenes.nuscenes import NuScenes

    try:
        return NuScenes(version=version, dataroot=str(data_root), verbose=False)
    except KeyError as e:
        raise KeyError(f"nuScenes tables in {table_root} reference an unknown token {e}") from None


def _get(nusc, table: str, token: str, referenced_by: str) -> dict:
    try:
        return nusc.get(table, token)
    except KeyError:
        raise KeyError(f"nuScenes table '{table}' has no token '{token}' (referenced by {referenced_by})") from None


def split_scene_names(nusc, split: str) -> list[str]:
    """Scene names of ``split`` present in the loaded tables, in table order.

    ``"all"`` is every scene of the tables; the others come from ``nuscenes.utils.splits``.

    Raises:
        ValueError: for an unknown split or one with no scene in these tables.
    """
    names = [s["name"] for s in nusc.scene]
    if split == "all":
        return names
    from nuscenes.utils.splits import create_splits_scenes

    splits = create_splits_scenes()
    if split not in splits:
        raise ValueError(f"unknown nuScenes split {split!r}; expected one of {sorted(splits) + ['all']}")
    wanted = set(splits[split])
    chosen = [n for n in names if n in wanted]
    if not chosen:
        raise ValueError(f"split {split!r} has no scene in version {nusc.version!r} at {nusc.dataroot} (scenes there: {names})")
    return chosen


def _sample_data_record(nusc, sd: dict) -> dict:
    cs = _get(nusc, "calibrated_sensor", sd["calibrated_sensor_token"], f"sample_data {sd['token']}")
    ep = _get(nusc, "ego_pose", sd["ego_pose_token"], f"sample_data {sd['token']}")
    K = np.array(cs["camera_intrinsic"], dtype=np.float64) if cs["camera_intrinsic"] else None
    return dict(
        token=sd["token"],
        channel=sd["channel"],
        filename=sd["filename"],
        timestamp=int(sd["timestamp"]),
        is_key_frame=bool(sd["is_key_frame"]),
        sample_token=sd["sample_token"],
        prev=sd["prev"],
        next=sd["next"],
        T_ego_sensor=_pose(cs["rotation"], cs["translation"]),
        T_global_ego=_pose(ep["rotation"], ep["translation"]),
        K=K,
        hw=(int(sd["height"]), int(sd["width"])),
    )


def build_index(nusc, split: str, with_sweeps: bool = False) -> dict[str, Any]:
    """Walk the devkit tables once into a compact, picklable index of ``split``.

    Args:
        nusc: a loaded ``NuScenes``.
        split: a ``nuscenes.utils.splits`` name or ``"all"``.
        with_sweeps: also store every non-keyframe camera / LiDAR sample_data of the
            chosen scenes (needed for ``neighbour_source="sweeps"``).

    Returns:
        ``dict(format, version, split, with_sweeps, samples, sample_data, scene_lidar)``:
        ``samples`` a list in scene / time order of dicts with ``token``, ``scene_name``,
        ``timestamp`` (us), ``prev``, ``next`` and ``data`` (channel -> sample_data token);
        ``sample_data`` token -> dict with ``filename`` (relative to the data root),
        ``timestamp`` (us), ``T_ego_sensor`` and ``T_global_ego`` (float64 4x4), ``K``
        (3x3 or None), ``prev`` / ``next``; ``scene_lidar`` scene name -> LiDAR
        sample_data tokens in time order.

    Raises:
        KeyError: naming the table and token of a dangling reference.
    """
    samples: list[dict] = []
    sample_data: dict[str, dict] = {}
    scene_lidar: dict[str, list[str]] = {}
    for name in split_scene_names(nusc, split):
        scene = next(s for s in nusc.scene if s["name"] == name)
        token = scene["first_sample_token"]
        scene_sd: list[str] = []
        while token:
            sample = _get(nusc, "sample", token, f"scene {name}")
            data = {}
            for channel, sd_token in sample["data"].items():
                if channel != LIDAR and not channel.startswith("CAM_"):
                    continue
                sd = _get(nusc, "sample_data", sd_token, f"sample {token}")
                sample_data[sd_token] = _sample_data_record(nusc, sd)
                scene_sd.append(sd_token)
                data[channel] = sd_token
                if with_sweeps:
                    for direction in ("prev", "next"):
                        link = sd[direction]
                        while link and link not in sample_data:
                            sweep = _get(nusc, "sample_data", link, f"sample_data {sd_token}")
                            if sweep["is_key_frame"]:
                                break
                            sample_data[link] = _sample_data_record(nusc, sweep)
                            scene_sd.append(link)
                            link = sweep[direction]
            if LIDAR not in data:
                raise KeyError(f"sample {token} of {name} has no {LIDAR} sample_data")
            samples.append(dict(token=token, scene_name=name, timestamp=int(sample["timestamp"]),
                                prev=sample["prev"], next=sample["next"], data=data))
            token = sample["next"]
        lidar_tokens = {t for t in scene_sd if sample_data[t]["channel"] == LIDAR}
        scene_lidar[name] = sorted(lidar_tokens, key=lambda t: sample_data[t]["timestamp"])
    return dict(format=INDEX_FORMAT, version=nusc.version, split=split, with_sweeps=with_sweeps,
                samples=samples, sample_data=sample_data, scene_lidar=scene_lidar)


def save_index(index: dict, path: str | os.PathLike) -> None:
    """Pickle ``index`` atomically (:func:`selfsup.io.atomic_write_bytes`)."""
    atomic_write_bytes(path, pickle.dumps(index, protocol=pickle.HIGHEST_PROTOCOL))


def load_index(path: str | os.PathLike, version: str | None = None, split: str | None = None) -> dict:
    """Load an index written by :func:`save_index` and check it matches ``version`` / ``split``.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if it is not an index of this format, version or split.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"nuScenes infos file {path} does not exist (write it with scripts/create_infos.py)")
    with open(path, "rb") as f:
        index = pickle.load(f)
    if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT:
        raise ValueError(f"{path} is not a selfsup nuScenes index of format {INDEX_FORMAT}")
    for key, want in (("version", version), ("split", split)):
        if want is not None and index[key] != want:
            raise ValueError(f"{path} indexes {key} {index[key]!r}, expected {want!r}")
    return index


class NuScenesFrames(Dataset):
    """nuScenes keyframes with temporal neighbours, yielding :class:`Frames`.

    Neighbours missing at a scene boundary: with ``allow_missing_neighbours=True``
    (default) the nearest available frame in that direction is used (the current
    frame itself if there is none) and ``frame_offsets`` holds the offset actually
    used, so a repeat shows as offset 0; with ``False`` only keyframes that have every
    requested neighbour are indexed.

    Args:
        data_root: nuScenes data root (holds ``samples/`` and ``<version>/``).
        version: table version folder, e.g. ``"v1.0-trainval"``, ``"v1.0-mini"``.
        split: ``"train"``, ``"val"``, ``"mini_train"``, ``"mini_val"``, ... (from
            ``nuscenes.utils.splits``) or ``"all"`` (every scene in the tables).
        neighbours: frame offsets after the current frame, e.g. ``(-1, 1)``; or a
            :class:`~selfsup.data.neighbours.RandomNeighbours`: a seeded, resumable draw
            of ``num`` distinct valid frames in a window per step (GaussianFlowOcc: 6 of
            -6..6); samples with fewer valid frames in the window are not indexed, and
            nothing is clamped or repeated.
        neighbour_source: ``"keyframes"`` (offsets count 2 Hz keyframes) or
            ``"sweeps"`` (offsets count ~12 Hz camera sample_data along each camera's
            ``prev`` / ``next`` links; needs an index with sweeps).
        image_hw, resize_scale, crop_top: output size and resize / crop, see
            :meth:`selfsup.data.image.ResizeCrop.plan` (``None`` keeps 900x1600).
        cameras: camera channels, in output order.
        load_lidar: load LiDAR points; if False ``points_ego`` holds ``[0, 3]`` tensors.
        infos_path: index pickled by ``scripts/create_infos.py``; the devkit is not
            loaded then.
        ego_mask_dir: folder with ``<CAMERA>_mask.png`` (255 = scene); ``None`` marks
            every pixel valid.
        allow_missing_neighbours: see above.
        pseudo_depth_dir: folder of pseudo depth, fills ``Frames.depth_maps`` for every
            frame: either written by ``scripts/generate_pseudo_depth.py`` (has a
            ``manifest.json``; one uint16 PNG per camera, see :mod:`selfsup.pseudo.storage`)
            or GaussianFlowOcc's Metric3D files (``{scene_name}/{sample_token}.npy``,
            float16 ``[6, 900, 1600]``, metres). None: no depth maps.
        pseudo_semantic_dir: folder of pseudo semantics, fills ``Frames.semantic_maps``
            (Occ3D classes, 255 = unlabelled): ``scripts/generate_pseudo_semantics.py``
            PNGs (``manifest.json``) or GaussianFlowOcc's Grounded-SAM ``.npy`` files (same
            layout, int8). None: no semantic maps.
        gt_dir: Occ3D voxel GT root (``{gt_dir}/{scene_name}/{sample_token}/labels.npz``,
            usually ``{data_root}/gts``); fills the ``Frames.occ_*`` fields of the current
            keyframe. None: no voxel GT.

    Pseudo maps are resized and cropped exactly like the images (same
    :class:`~selfsup.data.image.ResizeCrop`) with *nearest* sampling at pixel centres, for
    depth too, so every value is one Metric3D predicted (GaussianFlowOcc resizes depth
    bilinearly, which blends foreground and background depths at object edges). The files
    exist per keyframe only, so they need ``neighbour_source="keyframes"``.

    Raises:
        FileNotFoundError: missing data root, table, infos file, image, point cloud, mask
            or pseudo-label file.
        KeyError: unknown token in the tables.
        ValueError: bad split, camera, neighbour source or image size; pseudo labels with
            ``neighbour_source="sweeps"``; a pseudo-label file of the wrong shape or dtype.
    """

    def __init__(
        self,
        data_root: str,
        version: str = "v1.0-trainval",
        split: str = "train",
        neighbours: tuple[int, ...] | RandomNeighbours = (-1, 1),
        neighbour_source: str = "keyframes",
        image_hw: tuple[int, int] | None = None,
        resize_scale: float | None = None,
        crop_top: int | None = None,
        cameras: tuple[str, ...] = NUSCENES_CAMERAS,
        load_lidar: bool = True,
        infos_path: str | None = None,
        ego_mask_dir: str | None = None,
        allow_missing_neighbours: bool = True,
        pseudo_depth_dir: str | None = None,
        pseudo_semantic_dir: str | None = None,
        gt_dir: str | None = None,
    ) -> None:
        if neighbour_source not in ("keyframes", "sweeps"):
            raise ValueError(f"neighbour_source must be 'keyframes' or 'sweeps', got {neighbour_source!r}")
        if neighbour_source == "sweeps" and (pseudo_depth_dir or pseudo_semantic_dir):
            raise ValueError("pseudo depth / semantic files exist per keyframe only; use neighbour_source='keyframes'")
        self.neighbour_draw = neighbours if isinstance(neighbours, RandomNeighbours) else None
        if self.neighbour_draw is None and 0 in neighbours:
            raise ValueError(f"neighbours are offsets other than 0 (frame 0 is always the current one), got {neighbours}")
        self.data_root = Path(data_root)
        self.version = version
        self.cameras = tuple(cameras)
        self.neighbours = () if self.neighbour_draw is not None else tuple(int(n) for n in neighbours)
        self.neighbour_source = neighbour_source
        self.load_lidar = load_lidar
        self.ego_mask_dir = None if ego_mask_dir is None else Path(ego_mask_dir)
        self.allow_missing_neighbours = allow_missing_neighbours
        self.pseudo_depth_dir = None if pseudo_depth_dir is None else Path(pseudo_depth_dir)
        self.pseudo_semantic_dir = None if pseudo_semantic_dir is None else Path(pseudo_semantic_dir)
        self.gt_dir = None if gt_dir is None else Path(gt_dir)
        self._png_readers: dict = {}  # selfsup.pseudo PNG-format readers, by kind
        if infos_path is not None:
            self.index = load_index(infos_path, version=version, split=split)
        else:
            nusc = open_devkit(data_root, version)
            self.index = build_index(nusc, split, with_sweeps=neighbour_source == "sweeps")
        if neighbour_source == "sweeps" and not self.index["with_sweeps"]:
            raise ValueError(f"neighbour_source='sweeps' needs an index with sweeps (create_infos.py --with-sweeps); {infos_path} has none")
        self.sample_data = self.index["sample_data"]
        self._by_token = {s["token"]: s for s in self.index["samples"]}
        for cam in self.cameras:
            if cam not in self.index["samples"][0]["data"]:
                raise ValueError(f"camera {cam!r} is not in the nuScenes tables; expected names like {NUSCENES_CAMERAS}")
        first_cam = self.sample_data[self.index["samples"][0]["data"][self.cameras[0]]]
        self.transform = ResizeCrop.plan(first_cam["hw"], image_hw, resize_scale, crop_top)
        if self.neighbour_draw is not None:
            need = self.neighbour_draw.num
            self.samples = [s for s in self.index["samples"] if len(self._draw_candidates(s)) >= need]
        else:
            self.samples = [s for s in self.index["samples"] if allow_missing_neighbours or self._has_all_neighbours(s)]
        if not self.samples:
            raise ValueError(
                f"no nuScenes sample of split {split!r} has all neighbours {self.neighbours}; "
                "pass allow_missing_neighbours=True to clamp them"
            )

    def __len__(self) -> int:
        return len(self.samples)

    def index_of(self, token: str) -> int:
        """Dataset position of a sample token.

        Raises:
            KeyError: naming the token if it is not in this dataset.
        """
        for i, s in enumerate(self.samples):
            if s["token"] == token:
                return i
        raise KeyError(f"sample token {token!r} is not in this nuScenes dataset ({len(self.samples)} samples)")

    def lidar_poses(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """LiDAR poses for RayIoU origins (``eval.rayiou.scene_lidar_origins_ego``): the
        current keyframe's ``T_global_ego`` and ``T_ego_lidar``, ``T_global_lidar`` of
        every keyframe of its scene in time order (float64; those in this index), and the
        current keyframe's position among them."""
        sample = self.samples[i]
        keys = [s for s in self.index["samples"] if s["scene_name"] == sample["scene_name"]]
        keys.sort(key=lambda s: s["timestamp"])
        lidar = [self.sample_data[s["data"][LIDAR]] for s in keys]
        T_global_lidar = np.stack([sd["T_global_ego"] @ sd["T_ego_sensor"] for sd in lidar])
        current = [s["token"] for s in keys].index(sample["token"])
        return lidar[current]["T_global_ego"], lidar[current]["T_ego_sensor"], T_global_lidar, current

    # -- neighbours ---------------------------------------------------------------------
    def _walk_sample(self, sample: dict, offset: int) -> tuple[dict, int]:
        """Follow prev / next keyframe links up to |offset| steps; returns (sample, steps taken)."""
        key = "next" if offset > 0 else "prev"
        steps = 0
        while steps < abs(offset) and sample[key] and sample[key] in self._by_token:
            sample = self._by_token[sample[key]]
            steps += 1
        return sample, steps * (1 if offset > 0 else -1)

    def _walk_sd(self, token: str, offset: int) -> list[str]:
        key = "next" if offset > 0 else "prev"
        chain = [token]
        while len(chain) <= abs(offset):
            nxt = self.sample_data[chain[-1]][key]
            if not nxt or nxt not in self.sample_data:
                break
            chain.append(nxt)
        return chain

    def _has_offset(self, sample: dict, off: int) -> bool:
        if self.neighbour_source == "keyframes":
            return self._walk_sample(sample, off)[1] == off
        return all(len(self._walk_sd(sample["data"][c], off)) == abs(off) + 1 for c in self.cameras)

    def _has_all_neighbours(self, sample: dict) -> bool:
        return all(self._has_offset(sample, off) for off in self.neighbours)

    def _draw_candidates(self, sample: dict) -> list[int]:
        return self.neighbour_draw.candidates(lambda off: self._has_offset(sample, off))

    def neighbour_offsets(self, index: int) -> tuple[int, ...]:
        """The requested neighbour offsets of sample ``index`` (drawn for ``RandomNeighbours``
        from the draw number of a :class:`~selfsup.data.neighbours.DrawIndex`; fixed offsets
        are clamped at scene ends by ``_frame``)."""
        if self.neighbour_draw is None:
            return self.neighbours
        return self.neighbour_draw.choose(self._draw_candidates(self.samples[index]), int(index), draw_of(index))

    def _frame(self, sample: dict, offset: int) -> dict:
        """Sample_data tokens of one frame: reference pose, cameras and LiDAR."""
        if self.neighbour_source == "keyframes" or offset == 0:
            target, used = self._walk_sample(sample, offset) if offset else (sample, 0)
            lidar = target["data"][LIDAR]
            return dict(offset=used, ref=lidar, cams=[target["data"][c] for c in self.cameras], lidar=lidar,
                        sample=target["token"])
        chains = [self._walk_sd(sample["data"][c], offset) for c in self.cameras]
        steps = min(len(ch) for ch in chains) - 1
        cams = [ch[steps] for ch in chains]
        used = steps * (1 if offset > 0 else -1)
        if used == 0:
            return self._frame(sample, 0)
        ref_time = self.sample_data[cams[0]]["timestamp"]
        lidar = min(self.index["scene_lidar"][sample["scene_name"]],
                    key=lambda t: abs(self.sample_data[t]["timestamp"] - ref_time))
        return dict(offset=used, ref=cams[0], cams=cams, lidar=lidar, sample=None)

    # -- loading -----------------------------------------------------------------------
    def _points(self, sd: dict, T_ego_global: np.ndarray) -> np.ndarray:
        path = self.data_root / sd["filename"]
        if not path.is_file():
            raise FileNotFoundError(f"LiDAR file {path} of sample_data {sd['token']} does not exist")
        raw = np.fromfile(path, dtype=np.float32)
        if raw.size % 5:
            raise ValueError(f"LiDAR file {path} holds {raw.size} floats, expected N x 5 (x y z intensity ring)")
        xyz = raw.reshape(-1, 5)[:, :3].astype(np.float64)
        T = T_ego_global @ sd["T_global_ego"] @ sd["T_ego_sensor"]
        return xyz @ T[:3, :3].T + T[:3, 3]

    def _pseudo_file(self, folder: Path, kind: str, scene_name: str, token: str, cameras: tuple[str, ...]) -> np.ndarray:
        """The ``[V, H, W]`` rows of ``self.cameras`` of one keyframe's pseudo-label file.

        Raises:
            FileNotFoundError: the file does not exist.
            ValueError: unreadable file, wrong shape or dtype.
        """
        path = folder / scene_name / f"{token}.npy"
        if not path.is_file():
            raise FileNotFoundError(f"pseudo {kind} file {path} of sample {token} does not exist")
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise ValueError(f"pseudo {kind} file {path} is not a readable .npy array: {e}") from None
        expected = (len(cameras), *self.transform.src_hw)
        if arr.shape != expected:
            raise ValueError(f"pseudo {kind} file {path} has shape {arr.shape}, expected {expected} (cameras {cameras})")
        want = np.floating if kind == "depth" else np.integer
        if not np.issubdtype(arr.dtype, want):
            raise ValueError(f"pseudo {kind} file {path} has dtype {arr.dtype}, expected {want.__name__}")
        return arr[[cameras.index(c) for c in self.cameras]]

    def _pseudo_png(self, kind: str, folder: Path, scene_name: str, token: str) -> np.ndarray:
        """Maps in the ``selfsup.pseudo`` PNG format (``scripts/generate_pseudo_*.py``)."""
        from selfsup.pseudo.storage import PseudoLabelReader, load_transformed

        if kind not in self._png_readers:
            self._png_readers[kind] = PseudoLabelReader(folder, kind)
        return load_transformed(self._png_readers[kind], scene_name, token, self.cameras, self.transform)

    def _pseudo_depth(self, scene_name: str, token: str) -> np.ndarray:
        """float32 ``[V, h, w]`` metres (0 = unknown) at the output image size."""
        if is_png_folder(self.pseudo_depth_dir):
            return self._pseudo_png("depth", self.pseudo_depth_dir, scene_name, token)
        raw = self._pseudo_file(self.pseudo_depth_dir, "depth", scene_name, token, PSEUDO_DEPTH_CAMERAS)
        raw = np.nan_to_num(raw.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0).clip(min=0.0)
        return np.stack([np.asarray(self.transform.mask(Image.fromarray(d))) for d in raw])

    def _pseudo_semantics(self, scene_name: str, token: str) -> np.ndarray:
        """int16 ``[V, h, w]`` Occ3D classes (255 = unlabelled) at the output image size."""
        if is_png_folder(self.pseudo_semantic_dir):
            return self._pseudo_png("semantic", self.pseudo_semantic_dir, scene_name, token)
        raw = self._pseudo_file(self.pseudo_semantic_dir, "semantic", scene_name, token, PSEUDO_SEMANTIC_CAMERAS)
        labels = np.where((raw >= 1) & (raw <= 16), raw, SEMANTIC_UNLABELLED).astype(np.uint8)
        return np.stack([np.asarray(self.transform.mask(Image.fromarray(m))) for m in labels]).astype(np.int16)

    def __getitem__(self, i: int) -> Frames:
        sample = self.samples[i]
        frames = [self._frame(sample, 0)] + [self._frame(sample, off) for off in self.neighbour_offsets(i)]
        images, Ks, T_ego_cam, T_global_ego, stamps, points = [], [], [], [], [], []
        for fr in frames:
            ref = self.sample_data[fr["ref"]]
            T_ego_global = np.linalg.inv(ref["T_global_ego"])
            T_global_ego.append(ref["T_global_ego"])
            stamps.append(ref["timestamp"] / 1e6)
            imgs, ks, tcs = [], [], []
            for cam, tok in zip(self.cameras, fr["cams"]):
                sd = self.sample_data[tok]
                img = open_image(self.data_root / sd["filename"], f"{cam} of sample {sample['token']}")
                imgs.append(to_float_chw(self.transform.image(img)))
                ks.append(self.transform.intrinsics(sd["K"]))
                tcs.append(T_ego_global @ sd["T_global_ego"] @ sd["T_ego_sensor"])
            images.append(np.stack(imgs))
            Ks.append(np.stack(ks))
            T_ego_cam.append(np.stack(tcs))
            pts = self._points(self.sample_data[fr["lidar"]], T_ego_global) if self.load_lidar else np.zeros((0, 3))
            points.append(torch.from_numpy(pts.astype(np.float32)))
        h, w = self.transform.out_hw
        if self.ego_mask_dir is None:
            masks = torch.ones(len(self.cameras), h, w, dtype=torch.bool)
        else:
            masks = torch.from_numpy(np.stack([
                load_valid_mask(self.ego_mask_dir / f"{cam}_mask.png", self.transform) for cam in self.cameras]))
        depth_maps = semantic_maps = None
        if self.pseudo_depth_dir is not None:
            depth_maps = torch.from_numpy(np.stack([self._pseudo_depth(sample["scene_name"], fr["sample"]) for fr in frames]))
        if self.pseudo_semantic_dir is not None:
            semantic_maps = torch.from_numpy(
                np.stack([self._pseudo_semantics(sample["scene_name"], fr["sample"]) for fr in frames])
            )
        out = Frames(
            images=torch.from_numpy(np.stack(images)),
            K=torch.from_numpy(np.stack(Ks).astype(np.float32)),
            T_ego_cam=torch.from_numpy(np.stack(T_ego_cam).astype(np.float32)),
            T_global_ego=torch.from_numpy(np.stack(T_global_ego).astype(np.float32)),
            timestamps=torch.tensor(stamps, dtype=torch.float64),
            frame_offsets=torch.tensor([fr["offset"] for fr in frames], dtype=torch.int64),
            valid_masks=masks,
            depth_maps=depth_maps,
            semantic_maps=semantic_maps,
            points_ego=points,
            tokens=sample["token"],
            scene_names=sample["scene_name"],
            camera_names=self.cameras,
        )
        return out if self.gt_dir is None else attach_occ_gt(out, self.gt_dir)
