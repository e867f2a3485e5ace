"""Occ3D-format ground truth of one keyframe, and a parallel, resumable run over a source.

Per keyframe (see :mod:`selfsup.occ_gt.aggregate`, :mod:`~selfsup.occ_gt.voxelize`,
:mod:`~selfsup.occ_gt.raycast`): aggregate the window's points into the keyframe's ego
frame, label voxels by majority, cast every ray for ``mask_lidar``, cast camera rays for
``mask_camera`` (intersected with ``mask_lidar``; all zero for a source without cameras:
evaluate such GT without ``--use-mask``), write ``labels.npz`` (``semantics``,
``mask_lidar``, ``mask_camera``, uint8 (200, 200, 16), compressed) and ``lidar_origins.npy``.
Files are written atomically (temporary file + ``os.replace``; ``labels.npz`` last, so a
sample is complete exactly when its ``labels.npz`` exists) and complete samples are
skipped on a rerun.
"""

from __future__ import annotations

import json
import os
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from eval.rayiou import scene_lidar_origins_ego
from selfsup.constants import OCC3D_FREE
from selfsup.grid import OCC3D_GRID, VoxelGrid
from selfsup.io import atomic_path
from selfsup.occ_gt.aggregate import aggregate
from selfsup.occ_gt.paths import LABELS_FILE, ORIGINS_FILE, gt_sample_dir
from selfsup.occ_gt.raycast import camera_visibility, lidar_visibility
from selfsup.occ_gt.sources import SceneRecord, read_source
from selfsup.occ_gt.voxelize import densify, voxel_index, voxel_labels


@dataclass(frozen=True)
class GenerationConfig:
    """Options of the generator (the CLI flags of ``scripts/generate_occ_gt.py``).

    Attributes:
        window: frames before and after the target that are aggregated (None = the whole
            scene). Frames are the source's LiDAR frames: keyframes for ``nuscenes``, the 11
            keyframes of ``lidarseg-frames``, the samples of a DDAD scene.
        box_margin: metres every box is grown by for the static / object split.
        unlabelled_class: class of a voxel holding only unlabelled points (0 = others).
        camera_stride: pixel spacing of the camera rays of ``mask_camera``.
        ground_align: re-align other frames' static points vertically
            (:mod:`selfsup.occ_gt.aggregate`); None (default) = on exactly when the scene's ego
            poses carry no height (every z translation 0, as in nuScenes), else off.
        densify: hole filling of unobserved voxels (:func:`selfsup.occ_gt.voxelize.densify`);
            off by default.
        densify_iterations, densify_min_neighbours: its parameters.
    """

    window: Optional[int] = None
    box_margin: float = 0.2
    unlabelled_class: int = 0
    camera_stride: int = 8
    ground_align: Optional[bool] = None
    densify: bool = False
    densify_iterations: int = 1
    densify_min_neighbours: int = 4
    grid: VoxelGrid = field(default=OCC3D_GRID)


@dataclass
class SampleGT:
    """Ground truth of one keyframe (arrays uint8 [X, Y, Z]) and its statistics."""

    scene_name: str
    token: str
    semantics: np.ndarray
    mask_lidar: np.ndarray
    mask_camera: np.ndarray
    lidar_origins: np.ndarray  # float64 [K, 3]
    stats: dict


def scene_origins(scene: SceneRecord, index: int) -> np.ndarray:
    """LiDAR positions of the scene's keyframes in frame ``index``'s ego frame ([K, 3]),
    computed as the RayIoU reference does (:func:`eval.rayiou.scene_lidar_origins_ego`)."""
    keys = scene.keyframe_indices()
    T_global_lidar = np.stack([scene.frames[k].T_global_ego @ scene.frames[k].T_ego_lidar for k in keys])
    fr = scene.frames[index]
    return scene_lidar_origins_ego(fr.T_global_ego, fr.T_ego_lidar, T_global_lidar, keys.index(index))


def generate_sample(
    scene: SceneRecord, index: int, config: GenerationConfig = GenerationConfig(), cache: Optional[dict] = None
) -> SampleGT:
    """Ground truth of frame ``index`` of ``scene`` (see the module docstring).

    Raises:
        FileNotFoundError / ValueError: from the readers (missing or malformed frame files).
    """
    t0 = time.perf_counter()
    grid = config.grid
    ground_align = config.ground_align
    if ground_align is None:
        ground_align = not scene.poses_have_height()
    agg = aggregate(scene, index, config.window, config.box_margin, ground_align, cache)
    semantics = voxel_labels(agg.xyz, agg.labels, grid, config.unlabelled_class)
    t1 = time.perf_counter()
    has_ray = ~np.isnan(agg.origins[:, 0])
    seen = lidar_visibility(agg.xyz[has_ray], agg.origins[has_ray], grid)
    idx, inside = voxel_index(agg.xyz, grid)
    point_voxels = np.zeros(grid.shape, bool)
    point_voxels[tuple(idx[inside].T)] = True
    mask_lidar = seen | point_voxels
    if config.densify:
        semantics = densify(semantics, mask_lidar & (semantics == OCC3D_FREE), config.densify_iterations,
                            config.densify_min_neighbours)
    t2 = time.perf_counter()
    cameras = scene.frames[index].cameras
    if cameras:
        mask_camera = camera_visibility(semantics != OCC3D_FREE, cameras, grid, config.camera_stride) & mask_lidar
    else:
        mask_camera = np.zeros(grid.shape, bool)
    t3 = time.perf_counter()
    occupied = semantics != OCC3D_FREE
    stats = dict(
        points=int(len(agg)), points_in_grid=int(inside.sum()), rays=int(has_ray.sum()),
        frames=int(np.unique(agg.frame).size), cameras=len(cameras), ground_align=bool(ground_align),
        occupied_fraction=float(occupied.mean()), mask_lidar_fraction=float(mask_lidar.mean()),
        mask_camera_fraction=float(mask_camera.mean()),
        seconds=dict(aggregate_voxelize=t1 - t0, mask_lidar=t2 - t1, mask_camera=t3 - t2, total=t3 - t0),
    )
    return SampleGT(scene.name, scene.frames[index].token, semantics, mask_lidar.astype(np.uint8),
                    mask_camera.astype(np.uint8), scene_origins(scene, index), stats)


def write_sample(gt: SampleGT, out_dir: str | os.PathLike) -> Path:
    """Write ``labels.npz`` (compressed) and ``lidar_origins.npy`` atomically; returns the
    labels path (see :func:`selfsup.occ_gt.paths.gt_label_path`)."""
    folder = gt_sample_dir(out_dir, gt.scene_name, gt.token)
    with atomic_path(folder / ORIGINS_FILE) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, gt.lidar_origins.astype(np.float64))
    with atomic_path(folder / LABELS_FILE) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, semantics=gt.semantics.astype(np.uint8), mask_lidar=gt.mask_lidar.astype(np.uint8),
                                mask_camera=gt.mask_camera.astype(np.uint8))
    for p in (folder / ORIGINS_FILE, folder / LABELS_FILE):
        os.chmod(p, 0o644)
    return folder / LABELS_FILE


def is_complete(path: Path) -> bool:
    """Whether a labels.npz exists and holds the three Occ3D arrays."""
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False
    return {"semantics.npy", "mask_lidar.npy", "mask_camera.npy"} <= names


# ----------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class SourceSpec:
    source: str
    data_root: str
    version: str = "v1.0-mini"
    scenes: Optional[tuple[str, ...]] = None


_WORKER: dict = {}


def _load_scenes(spec: SourceSpec) -> dict[str, SceneRecord]:
    return {s.name: s for s in read_source(spec.source, spec.data_root, spec.version, list(spec.scenes) if spec.scenes else None)}


def _worker_init(spec: SourceSpec, config: GenerationConfig, out_dir: str) -> None:
    import torch

    torch.set_num_threads(1)
    _WORKER.update(scenes=_load_scenes(spec), config=config, out_dir=out_dir, cache_scene=None, cache={})


def _run_task(task: tuple[str, int]) -> dict:
    scene_name, index = task
    scenes, config = _WORKER["scenes"], _WORKER["config"]
    if _WORKER["cache_scene"] != scene_name:  # keep one scene's loaded points per worker
        _WORKER.update(cache_scene=scene_name, cache={})
    scene = scenes[scene_name]
    try:
        gt = generate_sample(scene, index, config, _WORKER["cache"])
        write_sample(gt, _WORKER["out_dir"])
    except (FileNotFoundError, ValueError, KeyError) as err:
        return dict(scene=scene_name, token=scene.frames[index].token, error=f"{type(err).__name__}: {err}")
    return dict(scene=scene_name, token=gt.token, **gt.stats)


def plan_tasks(scenes: dict[str, SceneRecord], samples: Optional[list[str]] = None) -> list[tuple[str, int]]:
    """(scene, frame index) of every keyframe to generate, scene by scene.

    Raises:
        KeyError: a requested sample token that is no keyframe of the chosen scenes.
    """
    tasks = [(name, i) for name, sc in scenes.items() for i in sc.keyframe_indices()]
    if samples:
        by_token = {scenes[n].frames[i].token: (n, i) for n, i in tasks}
        unknown = [t for t in samples if t not in by_token]
        if unknown:
            raise KeyError(f"unknown sample token(s) {unknown}: not keyframes of scenes {sorted(scenes)}")
        tasks = [by_token[t] for t in samples]
    return tasks


def run_generation(
    spec: SourceSpec,
    out_dir: str | os.PathLike,
    config: GenerationConfig = GenerationConfig(),
    samples: Optional[list[str]] = None,
    num_workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    keep_going: bool = False,
) -> dict:
    """Generate the ground truth of every keyframe of a source; returns the summary.

    Samples whose ``labels.npz`` is complete are skipped (unless ``overwrite``). With
    ``num_workers > 1`` keyframes run in that many processes (spawned; one torch thread
    each), tasks ordered scene by scene so a worker mostly reuses one scene's loaded points.
    The summary (samples written / skipped / failed, seconds per sample, mean occupied and
    seen fractions, per-sample statistics) is returned and written to
    ``{out_dir}/generation_summary.json``.

    Raises:
        KeyError / FileNotFoundError / ValueError: unknown scene or token, unreadable source;
            a failed sample unless ``keep_going`` (then it is counted as failed).
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    start = time.perf_counter()
    scenes = _load_scenes(spec)
    tasks = plan_tasks(scenes, samples)
    todo, skipped = [], []
    for name, i in tasks:
        token = scenes[name].frames[i].token
        if not overwrite and is_complete(gt_sample_dir(out_dir, name, token) / LABELS_FILE):
            skipped.append(token)
        else:
            todo.append((name, i))
    results: list[dict] = []
    bar = tqdm(total=len(todo), desc=f"occ GT {spec.source}", unit="sample", disable=not progress)
    if num_workers <= 1 or len(todo) <= 1:
        _WORKER.update(scenes=scenes, config=config, out_dir=str(out_dir), cache_scene=None, cache={})
        try:
            for task in todo:
                res = _run_task(task)
                results.append(res)
                bar.update(1)
                if "error" in res and not keep_going:
                    break
        finally:
            _WORKER.clear()
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(num_workers, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                                 initargs=(spec, config, str(out_dir))) as pool:
            for res in pool.map(_run_task, todo, chunksize=max(1, len(todo) // (4 * num_workers))):
                results.append(res)
                bar.update(1)
    bar.close()
    failed = [r for r in results if "error" in r]
    done = [r for r in results if "error" not in r]
    wall = time.perf_counter() - start

    def mean(key):
        return float(np.mean([r[key] for r in done])) if done else float("nan")

    summary = dict(
        source=spec.source, data_root=str(spec.data_root), out_dir=str(out_dir), num_workers=num_workers,
        config=asdict(config),
        samples=len(tasks), written=len(done), skipped=len(skipped), failed=len(failed),
        wall_seconds=wall,
        seconds_per_sample=float(np.mean([r["seconds"]["total"] for r in done])) if done else float("nan"),
        wall_seconds_per_written_sample=wall / len(done) if done else float("nan"),
        occupied_fraction=mean("occupied_fraction"), mask_lidar_fraction=mean("mask_lidar_fraction"),
        mask_camera_fraction=mean("mask_camera_fraction"), per_sample=results,
    )
    if results:
        out_dir.mkdir(parents=True, exist_ok=True)
        from selfsup.io import atomic_write_text

        atomic_write_text(out_dir / "generation_summary.json", summary_json(summary))
    if failed and not keep_going:
        raise RuntimeError(f"{len(failed)} sample(s) failed: {failed[0]['token']}: {failed[0]['error']}")
    return summary


def _nan_to_none(value):
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(v) for v in value]
    return value


def summary_json(summary: dict) -> str:
    """Strict JSON of a summary (NaN -> null)."""
    return json.dumps(_nan_to_none(summary), indent=2, allow_nan=False, default=float)


def format_summary(summary: dict) -> str:
    """A short human-readable summary of :func:`run_generation`'s result."""
    lines = [
        f"source {summary['source']}: {summary['samples']} keyframes, {summary['written']} written, "
        f"{summary['skipped']} skipped (already complete), {summary['failed']} failed",
        f"seconds per sample {summary['seconds_per_sample']:.2f} (compute), "
        f"wall {summary['wall_seconds']:.1f} s with {summary['num_workers']} worker(s)",
        f"mean occupied {100 * summary['occupied_fraction']:.2f} %, mask_lidar {100 * summary['mask_lidar_fraction']:.2f} %, "
        f"mask_camera {100 * summary['mask_camera_fraction']:.2f} % of the grid",
    ]
    for r in summary["per_sample"]:
        if "error" in r:
            lines.append(f"  FAILED {r['scene']} {r['token']}: {r['error']}")
        else:
            lines.append(
                f"  {r['scene']} {r['token']}: {r['frames']} frames, {r['points']} points, occupied "
                f"{100 * r['occupied_fraction']:.2f} %, lidar {100 * r['mask_lidar_fraction']:.2f} %, "
                f"camera {100 * r['mask_camera_fraction']:.2f} %, {r['seconds']['total']:.2f} s")
    return "\n".join(lines)
