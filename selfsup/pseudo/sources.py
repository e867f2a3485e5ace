"""Samples to label: the project's datasets seen one keyframe / sample at a time.

A :class:`SampleSource` wraps :class:`~selfsup.data.nuscenes.NuScenesFrames` or
:class:`~selfsup.data.ddad.DDADFrames` built at the original image size with no neighbours,
so the images, intrinsics and poses a generator sees are exactly what training reads
(same pixel convention: ``K`` in continuous coordinates, centres at +0.5). It adds what
generation needs beyond a training sample: the LiDAR of neighbouring frames moved into the
current ego frame (ego-motion compensated through the global poses), and the file
identity (scene, token) of a sample without loading it, for skipping complete samples.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class PseudoSample:
    """Everything a backend may use for one sample (current frame only, no batch dim).

    Attributes:
        scene_name, token: identity of the sample (file layout, see ``storage``).
        cameras: camera names in output order (V).
        images: uint8 RGB ``[V, H, W, 3]`` at the original size, or None if not loaded.
        K: intrinsics ``[V, 3, 3]`` of the original images, continuous pixel coordinates.
        T_ego_cam: camera (OpenCV) -> ego of the current frame, ``[V, 4, 4]``.
        src_hw: original image size (rows, cols).
        points_ego: LiDAR points ``[P, 3]`` of the current frame in its ego frame (metres).
        accumulated_ego: points of the current and the requested neighbouring frames, all
            in the current ego frame, ``[P', 3]`` (== ``points_ego`` without accumulation).
        lidar_token: LiDAR sample_data token of the current frame (nuScenes) or None.
        frames_used: frame offsets whose LiDAR is in ``accumulated_ego``.
        extra: with images, ``"valid_masks"`` (bool ``[V, H, W]``, False on the ego car)
            and ``"neighbours"``: one dict per neighbouring frame the source was built
            with (``neighbours=N``: offsets -N..N; a scene end drops the missing ones) with
            ``offset``, uint8 ``images`` ``[V, H, W, 3]``, ``K`` ``[V, 3, 3]`` (continuous
            pixel coordinates) and ``T_ego_cam`` ``[V, 4, 4]``: that frame's cameras -> the
            *current* ego frame.
    """

    scene_name: str
    token: str
    cameras: tuple[str, ...]
    images: np.ndarray | None
    K: np.ndarray
    T_ego_cam: np.ndarray
    src_hw: tuple[int, int]
    points_ego: np.ndarray
    accumulated_ego: np.ndarray
    lidar_token: str | None = None
    frames_used: tuple[int, ...] = (0,)
    extra: dict = field(default_factory=dict)


class SampleSource(ABC):
    """Base class: ``len()``, ``key(i)`` (cheap) and ``load(i)`` (reads files)."""

    dataset_type: str = ""
    cameras: tuple[str, ...] = ()
    src_hw: tuple[int, int] = (0, 0)

    @abstractmethod
    def __len__(self) -> int:
        """Number of samples."""

    @abstractmethod
    def key(self, i: int) -> tuple[str, str]:
        """(scene_name, token) of sample ``i`` without reading any file."""

    @abstractmethod
    def load(self, i: int, accumulate: int = 0, images: bool = True) -> PseudoSample:
        """Sample ``i`` with the LiDAR of ``accumulate`` neighbouring frames on each side;
        ``images=False`` skips decoding the images (``PseudoSample.images`` is None)."""

    @abstractmethod
    def describe(self) -> dict:
        """Manifest entry of the source (dataset, root, version, scenes)."""

    @staticmethod
    def _from_frames(frames, accumulated: np.ndarray, used: tuple[int, ...], lidar_token=None) -> PseudoSample:
        """From a dataset sample (``Frames``: the current frame first, then any neighbouring
        frames the source's dataset loads, which go to ``extra["neighbours"]``)."""
        images = (frames.images[0].numpy().transpose(0, 2, 3, 1) * 255.0).round().astype(np.uint8)
        pts = frames.points_ego[0].numpy().astype(np.float64)
        extra = dict(valid_masks=frames.valid_masks.numpy().astype(bool), neighbours=[])
        T_ego0_global = np.linalg.inv(frames.T_global_ego[0].numpy().astype(np.float64))
        seen = {0}
        for t in range(1, frames.images.shape[0]):
            offset = int(frames.frame_offsets[t])
            if offset in seen:  # clamped at a scene end
                continue
            seen.add(offset)
            T = T_ego0_global @ frames.T_global_ego[t].numpy().astype(np.float64)
            extra["neighbours"].append(dict(
                offset=offset,
                images=(frames.images[t].numpy().transpose(0, 2, 3, 1) * 255.0).round().astype(np.uint8),
                K=frames.K[t].numpy().astype(np.float64),
                T_ego_cam=T @ frames.T_ego_cam[t].numpy().astype(np.float64),
            ))
        return PseudoSample(
            scene_name=str(frames.scene_names), token=str(frames.tokens), cameras=tuple(frames.camera_names),
            images=images, K=frames.K[0].numpy().astype(np.float64),
            T_ego_cam=frames.T_ego_cam[0].numpy().astype(np.float64), src_hw=tuple(images.shape[1:3]),
            points_ego=pts, accumulated_ego=np.concatenate([pts, accumulated]) if len(accumulated) else pts,
            lidar_token=lidar_token, frames_used=used, extra=extra,
        )

    def _geometry_only(self, scene, token, K, T_ego_cam, pts, accumulated, used, lidar_token=None) -> PseudoSample:
        """Without images: calibration as the dataset computes it (float32 like ``Frames``)."""
        pts = pts.astype(np.float32).astype(np.float64)
        return PseudoSample(
            scene_name=scene, token=token, cameras=self.cameras, images=None,
            K=np.stack(K).astype(np.float32).astype(np.float64), T_ego_cam=np.stack(T_ego_cam).astype(np.float32).astype(np.float64),
            src_hw=tuple(self.src_hw), points_ego=pts,
            accumulated_ego=np.concatenate([pts, accumulated]) if len(accumulated) else pts,
            lidar_token=lidar_token, frames_used=used,
        )


def _offsets(accumulate: int) -> tuple[int, ...]:
    return tuple(o for o in range(-accumulate, accumulate + 1) if o != 0)


class NuScenesSource(SampleSource):
    """nuScenes keyframes of a split (devkit tables or a ``create_infos.py`` index).

    Args:
        data_root, version, split, cameras, infos_path, ego_mask_dir: as :class:`NuScenesFrames`.
        scenes: keep only these scene names (None: the whole split).
        neighbours: keyframes on each side whose images :meth:`load` adds (``PseudoSample.extra``).

    Raises:
        ValueError: ``scenes`` names a scene that is not in the split.
    """

    dataset_type = "nuscenes"

    def __init__(self, data_root: str, version: str = "v1.0-trainval", split: str = "train",
                 scenes: tuple[str, ...] | None = None, cameras: tuple[str, ...] | None = None,
                 infos_path: str | None = None, neighbours: int = 0, ego_mask_dir: str | None = None):
        from selfsup.data.nuscenes import NUSCENES_CAMERAS, NuScenesFrames

        self.ds = NuScenesFrames(data_root, version=version, split=split, neighbours=_offsets(neighbours),
                                 cameras=cameras or NUSCENES_CAMERAS, infos_path=infos_path, load_lidar=True,
                                 allow_missing_neighbours=True, ego_mask_dir=ego_mask_dir)
        self.data_root, self.version, self.split = str(data_root), version, split
        self.cameras = self.ds.cameras
        self.src_hw = self.ds.transform.src_hw
        available = sorted({s["scene_name"] for s in self.ds.samples})
        if scenes:
            missing = [s for s in scenes if s not in available]
            if missing:
                raise ValueError(f"scenes {missing} are not in nuScenes {version} split {split!r} (it has {available})")
        self.scenes = tuple(scenes) if scenes else tuple(available)
        self.indices = [i for i, s in enumerate(self.ds.samples) if s["scene_name"] in self.scenes]

    def __len__(self) -> int:
        return len(self.indices)

    def key(self, i: int) -> tuple[str, str]:
        s = self.ds.samples[self.indices[i]]
        return s["scene_name"], s["token"]

    def load(self, i: int, accumulate: int = 0, images: bool = True) -> PseudoSample:
        from selfsup.data.nuscenes import LIDAR

        j = self.indices[i]
        sample = self.ds.samples[j]
        ref = self.ds.sample_data[sample["data"][LIDAR]]
        T_ego0_global = np.linalg.inv(ref["T_global_ego"])
        extra, used = [], [0]
        for off in _offsets(accumulate):
            target, steps = self.ds._walk_sample(sample, off)
            if steps != off:
                continue  # the scene has no keyframe that far away
            extra.append(self.ds._points(self.ds.sample_data[target["data"][LIDAR]], T_ego0_global))
            used.append(off)
        acc = np.concatenate(extra) if extra else np.zeros((0, 3))
        if images:
            return self._from_frames(self.ds[j], acc, tuple(sorted(used)), lidar_token=sample["data"][LIDAR])
        # NuScenesFrames.__getitem__'s calibration of the current frame, without decoding images
        sds = [self.ds.sample_data[sample["data"][c]] for c in self.cameras]
        K = [self.ds.transform.intrinsics(sd["K"]) for sd in sds]
        T = [T_ego0_global @ sd["T_global_ego"] @ sd["T_ego_sensor"] for sd in sds]
        pts = self.ds._points(ref, T_ego0_global)
        return self._geometry_only(sample["scene_name"], sample["token"], K, T, pts, acc, tuple(sorted(used)),
                                   lidar_token=sample["data"][LIDAR])

    def describe(self) -> dict:
        return dict(type=self.dataset_type, root=self.data_root, version=self.version, split=self.split, scenes=list(self.scenes))


class DDADSource(SampleSource):
    """Samples of DDAD / DGP scenes (every sample, neighbours or not).

    Args:
        root: folder holding the scene folders.
        scenes: scene folder names (None: every folder under ``root`` with a ``scene_*.json``).
        cameras: DGP camera names (None: the six DDAD cameras).
        neighbours: samples on each side whose images :meth:`load` adds (``PseudoSample.extra``).
        ego_mask_dir: ego-car masks (``DDADFrames``), given to backends as ``extra["valid_masks"]``.
    """

    dataset_type = "ddad"

    def __init__(self, root: str, scenes: tuple[str, ...] | None = None, cameras: tuple[str, ...] | None = None,
                 split: str | None = None, neighbours: int = 0, ego_mask_dir: str | None = None):
        from selfsup.data.ddad import DDAD_CAMERAS, DDADFrames

        self.split = split
        if not scenes and split:
            scenes = ddad_split_scenes(root, split)
        if not scenes:
            scenes = tuple(sorted(p.name for p in Path(root).iterdir() if p.is_dir() and any(p.glob("scene_*.json"))))
            if not scenes:
                raise FileNotFoundError(f"no DDAD scene folder (with a scene_*.json) under {root}")
        self.ds = DDADFrames(root, scene=tuple(scenes), cameras=cameras or DDAD_CAMERAS, neighbours=_offsets(neighbours),
                             allow_missing_neighbours=True, load_lidar=True, ego_mask_dir=ego_mask_dir)
        self.root, self.scenes = str(root), tuple(scenes)
        self.cameras = self.ds.cameras
        self.src_hw = self.ds.transform.src_hw

    def __len__(self) -> int:
        return len(self.ds)

    def key(self, i: int) -> tuple[str, str]:
        name, idx = self.ds.items[i]
        return name, f"{name}/{self.ds.scenes[name][idx]['time_us']}"

    def load(self, i: int, accumulate: int = 0, images: bool = True) -> PseudoSample:
        name, idx = self.ds.items[i]
        scene = self.ds.scenes[name]
        T_ego0_world = np.linalg.inv(scene[idx]["T_world_ego"])
        extra, used = [], [0]
        for off in _offsets(accumulate):
            if not 0 <= idx + off < len(scene):
                continue
            fr = scene[idx + off]
            T = T_ego0_world @ fr["T_world_ego"]
            pts = self.ds._points(fr)
            extra.append(pts @ T[:3, :3].T + T[:3, 3])
            used.append(off)
        acc = np.concatenate(extra) if extra else np.zeros((0, 3))
        if images:
            return self._from_frames(self.ds[i], acc, tuple(sorted(used)))
        # DDADFrames.__getitem__'s calibration of the current frame, without decoding images
        fr = scene[idx]
        K = [self.ds.transform.intrinsics(fr["cams"][c]["K"]) for c in self.cameras]
        T = [T_ego0_world @ fr["cams"][c]["T_world_cam"] for c in self.cameras]
        return self._geometry_only(name, self.key(i)[1], K, T, self.ds._points(fr), acc, tuple(sorted(used)))

    def describe(self) -> dict:
        return dict(type=self.dataset_type, root=self.root, split=self.split, scenes=list(self.scenes))


DGP_SPLITS = {"train": "0", "val": "1", "test": "2"}


def ddad_split_scenes(root: str, split: str) -> tuple[str, ...]:
    """Scene folders of a DGP split from the ``scene_dataset*.json`` in ``root``
    (``scene_splits``: 0 train, 1 val, 2 test).

    Raises:
        FileNotFoundError: no ``scene_dataset*.json`` in ``root``.
        ValueError: unknown split, or the file lists none for it.
    """
    import json

    if split not in DGP_SPLITS:
        raise ValueError(f"unknown DDAD split {split!r}; expected one of {sorted(DGP_SPLITS)}")
    found = sorted(Path(root).glob("scene_dataset*.json"))
    if not found:
        raise FileNotFoundError(f"--split {split} needs a scene_dataset*.json in {root} (or pass --scenes)")
    splits = json.loads(found[0].read_text()).get("scene_splits", {})
    files = splits.get(DGP_SPLITS[split], {}).get("filenames", [])
    if not files:
        raise ValueError(f"{found[0]} lists no scene for split {split!r}")
    return tuple(dict.fromkeys(Path(f).parent.name for f in files))


def build_source(dataset: str, data_root: str, version: str | None = None, split: str | None = None,
                 scenes: tuple[str, ...] | None = None, cameras: tuple[str, ...] | None = None,
                 infos_path: str | None = None, neighbours: int = 0, ego_mask_dir: str | None = None) -> SampleSource:
    """A source from CLI arguments; ``dataset`` is "nuscenes", "ddad" or "auto" (a root with
    ``<version>/sample.json`` is nuScenes, one with scene folders is DDAD). ``neighbours`` and
    ``ego_mask_dir``: see :class:`DDADSource`.

    Raises:
        ValueError: unknown dataset type, or "auto" cannot tell.
    """
    root = Path(data_root)
    if dataset == "auto":
        if version and (root / version / "sample.json").is_file():
            dataset = "nuscenes"
        elif root.is_dir() and any(p.is_dir() and any(p.glob("scene_*.json")) for p in root.iterdir()):
            dataset = "ddad"
        else:
            raise ValueError(f"--data-root {root}: neither a nuScenes root with {version}/sample.json nor a folder of "
                             "DDAD scene folders; pass --dataset nuscenes|ddad")
    if dataset == "nuscenes":
        return NuScenesSource(data_root, version=version or "v1.0-trainval", split=split or "train", scenes=scenes,
                              cameras=cameras, infos_path=infos_path, neighbours=neighbours, ego_mask_dir=ego_mask_dir)
    if dataset == "ddad":
        return DDADSource(data_root, scenes=scenes, cameras=cameras, split=split, neighbours=neighbours,
                          ego_mask_dir=ego_mask_dir)
    raise ValueError(f"unknown dataset {dataset!r}; expected 'nuscenes', 'ddad' or 'auto'")
