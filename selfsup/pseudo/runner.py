"""Generate pseudo labels for a whole dataset split: sharded, resumable, atomic.

``scripts/generate_pseudo_depth.py`` and ``scripts/generate_pseudo_semantics.py`` are thin
CLIs over :func:`main`. What a run does:

1. Builds the sample source (nuScenes devkit root / index, or DDAD scenes) and the backend
   (which checks and loads its local checkpoint before anything is written).
2. Writes ``manifest.json`` (rank 0), or checks that an existing one describes the same
   labels (backend, checkpoint hash, scale / classes, cameras, image size); a different run
   into the same folder is refused unless ``--overwrite``.
3. Shards the samples over the processes of ``accelerate launch --num_processes N``
   (process r takes samples r, r + N, r + 2N, ...; on CPU-only machines the script re-runs
   itself under ``torch.distributed.run``, see :mod:`selfsup.training.launch`), so no sample
   is written twice and the union is the split.
4. Skips complete samples (every camera file present; ``--overwrite`` redoes them), deletes
   temporary files a killed run left, predicts, and writes each camera's PNG atomically.
5. Shows a progress bar per process (samples/s and ETA) and ends with a summary (printed
   as JSON and written to ``summary.json``): samples written / skipped / failed (with the
   failures' errors), bytes per written sample, seconds per sample, backend statistics
   (e.g. Depth Anything's LiDAR scale and AbsRel).

A failing sample (unreadable image, missing LiDAR file, ...) stops the run with an error
naming it, or with ``--keep-going`` is counted and skipped; the exit status is then 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from eval.occ3d import OCC3D_CLASS_NAMES
from selfsup.constants import NUM_SEMANTIC_CLASSES
from selfsup.pseudo import storage

# manifest fields that must agree for a run to add to / resume an existing folder
COMPATIBLE_FIELDS = ("format", "kind", "backend", "backend_config", "checkpoint_sha256", "depth_scale", "class_names",
                     "encoding", "cameras", "source_hw", "image_hw")
DEPTH_BACKENDS = ("lidar", "depth_anything", "triangulation")
SEMANTIC_BACKENDS = ("grounded_sam", "segmenter", "lidarseg")


def code_version() -> str:
    """``git describe``-like commit of this checkout (``+dirty`` when modified), or the package version."""
    repo = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        import selfsup

        return f"selfsup {getattr(selfsup, '__version__', 'unknown')}"


def build_parser(kind: str) -> argparse.ArgumentParser:
    backends = DEPTH_BACKENDS if kind == "depth" else SEMANTIC_BACKENDS
    p = argparse.ArgumentParser(
        description=f"Generate pseudo {kind} labels (one PNG per camera) for a dataset split. "
                    "Run with `accelerate launch --num_processes N` to shard over N processes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-root", required=True, help="nuScenes data root, or a folder of DDAD / DGP scene folders")
    p.add_argument("--dataset", default="auto", choices=("auto", "nuscenes", "ddad"))
    p.add_argument("--version", default="v1.0-trainval", help="nuScenes table version")
    p.add_argument("--split", default=None, help="nuScenes split (train, val, mini_train, all, ...; default train) or "
                                                 "DDAD split (train / val / test from scene_dataset*.json)")
    p.add_argument("--infos", default=None, help="nuScenes index pickled by scripts/create_infos.py (skips the devkit)")
    p.add_argument("--scenes", nargs="*", default=None, help="only these scene names / folders")
    p.add_argument("--cameras", nargs="*", default=None, help="camera names (default: all six of the dataset)")
    p.add_argument("--out-dir", required=True, help="output folder (manifest.json + {scene}/{sample}/{CAMERA}.png)")
    p.add_argument("--backend", required=True, choices=backends)
    p.add_argument("--checkpoint", default=None, help="local checkpoint folder of the network backend")
    p.add_argument("--batch-size", type=int, default=6, help="images per forward pass")
    p.add_argument("--out-scale", type=float, default=1.0, help="store maps at this fraction of the image size")
    p.add_argument("--num-workers", type=int, default=0, help="data-loading worker processes per generator process")
    p.add_argument("--overwrite", action="store_true", help="regenerate complete samples; replace a different manifest")
    p.add_argument("--keep-going", action="store_true", help="count failing samples and continue (exit status 2)")
    p.add_argument("--limit", type=int, default=None, help="only the first N samples of the split (before sharding)")
    if kind == "depth":
        p.add_argument("--accumulate", type=int, default=0,
                       help="lidar: also project the LiDAR of N neighbouring frames on each side (ego-motion compensated)")
        p.add_argument("--max-depth", type=float, default=250.0, help="lidar, triangulation: drop points farther than this (m)")
        p.add_argument("--align", default="none", choices=("none", "lidar_median"),
                       help="depth_anything: per-image median scale alignment to the current frame's LiDAR")
        p.add_argument("--neighbours", type=int, default=1, help="triangulation: frames on each side matched against")
        p.add_argument("--min-views", type=int, default=1,
                       help="triangulation: neighbours that must triangulate a keypoint (2: static-world check)")
        p.add_argument("--sift-scale", type=float, default=1.0, help="triangulation: image scale for SIFT detection")
        p.add_argument("--ego-mask-dir", default=None,
                       help="triangulation: folder of <CAMERA>_mask.png (255 = scene); no keypoint on the ego car")
    else:
        p.add_argument("--sam-checkpoint", default=None, help="grounded_sam: local SAM checkpoint folder")
        p.add_argument("--label-map", default=None, help="segmenter: JSON {class name: Occ3D id or null}")
        p.add_argument("--class-info", default=None, help="segmenter (OneFormer): local class-info JSON")
        p.add_argument("--box-threshold", type=float, default=0.20, help="grounded_sam (GaussianFlowOcc: 0.20)")
        p.add_argument("--text-threshold", type=float, default=0.20, help="grounded_sam (GaussianFlowOcc: 0.20)")
    return p


def build_backend(kind: str, args: argparse.Namespace, device):
    """The backend named by ``args.backend`` (loads and checks its checkpoint)."""
    needs_ckpt = args.backend in ("depth_anything", "grounded_sam", "segmenter")
    if needs_ckpt and not args.checkpoint:
        raise ValueError(f"--backend {args.backend} needs --checkpoint DIR (a local transformers checkpoint folder)")
    if args.backend == "lidar":
        from selfsup.pseudo.lidar import LidarDepthBackend

        return LidarDepthBackend(accumulate=args.accumulate, max_depth=args.max_depth)
    if args.backend == "depth_anything":
        from selfsup.pseudo.depth_anything import DepthAnythingBackend

        return DepthAnythingBackend(args.checkpoint, batch_size=args.batch_size, device=device, align=args.align)
    if args.backend == "grounded_sam":
        from selfsup.pseudo.grounded_sam import GroundedSamBackend

        return GroundedSamBackend(args.checkpoint, args.sam_checkpoint, batch_size=args.batch_size, device=device,
                                  box_threshold=args.box_threshold, text_threshold=args.text_threshold)
    if args.backend == "segmenter":
        from selfsup.pseudo.segmenter import SegmenterBackend

        return SegmenterBackend(args.checkpoint, batch_size=args.batch_size, device=device, label_map=args.label_map,
                                class_info=args.class_info)
    if args.backend == "triangulation":
        from selfsup.pseudo.triangulation import TriangulationBackend

        return TriangulationBackend(neighbours=args.neighbours, min_views=args.min_views, max_depth=args.max_depth,
                                    scale=args.sift_scale)
    if args.backend == "lidarseg":
        from selfsup.pseudo.lidar import LidarsegBackend

        return LidarsegBackend(args.data_root, args.version)
    raise ValueError(f"unknown backend {args.backend!r}")


def make_manifest(kind: str, backend, source, out_hw: tuple[int, int]) -> dict:
    m = dict(format=storage.FORMAT, kind=kind, cameras=list(source.cameras), source_hw=list(source.src_hw),
             image_hw=list(out_hw), dataset=source.describe(), code_version=code_version())
    m.update(backend.manifest())
    if kind == "depth":
        m.update(depth_scale=storage.DEPTH_SCALE, class_names=None,
                 encoding="uint16 PNG, value = round(depth_m * depth_scale), 0 = no depth (camera z)")
    else:
        m.update(depth_scale=None, class_names=list(OCC3D_CLASS_NAMES[:NUM_SEMANTIC_CLASSES]),  # 0-16, no "free"
                 encoding="uint8 PNG, value = Occ3D class id + 1, 0 = unlabelled")
    return json.loads(json.dumps(m))  # plain JSON types, comparable with a re-read manifest


def _check_compatible(old: dict, new: dict, out_dir: Path) -> None:
    for k in COMPATIBLE_FIELDS:
        if old.get(k) != new.get(k):
            raise ValueError(f"{out_dir / storage.MANIFEST} describes different labels: {k!r} is {old.get(k)!r} there and "
                             f"{new.get(k)!r} now; use another --out-dir or --overwrite")
    if old.get("dataset", {}).get("type") != new["dataset"]["type"]:
        raise ValueError(f"{out_dir / storage.MANIFEST} holds labels of a {old.get('dataset', {}).get('type')!r} dataset, "
                         f"not {new['dataset']['type']!r}")


def prepare_out_dir(out_dir: Path, manifest: dict, overwrite: bool, state) -> None:
    """Check an existing manifest (every rank, before any barrier, so all ranks fail alike),
    then rank 0 writes the new or merged one (scenes: union)."""
    old = None
    if (out_dir / storage.MANIFEST).is_file() and not overwrite:
        old = storage.read_manifest(out_dir)
        _check_compatible(old, manifest, out_dir)
    if state.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        if old is not None:
            scenes = list(dict.fromkeys(list(old["dataset"].get("scenes", [])) + list(manifest["dataset"].get("scenes", []))))
            manifest = dict(old, dataset=dict(old["dataset"], scenes=scenes), code_version=manifest["code_version"])
        storage.write_manifest(out_dir, manifest)
    state.wait_for_everyone()


class _ShardItems:
    """Map-style dataset over this process's samples: loads one, or says why not.

    Returns ``(i, scene, token, status, payload)``: status "skip" (complete), "ok"
    (payload = PseudoSample) or "error" (payload = message). Errors are returned, not
    raised, so a DataLoader worker survives a corrupt file and ``--keep-going`` applies.
    """

    def __init__(self, source, indices, out_dir: Path, accumulate: int, overwrite: bool, images: bool):
        self.source, self.indices, self.out_dir = source, indices, out_dir
        self.accumulate, self.overwrite, self.images = accumulate, overwrite, images

    def __len__(self):
        return len(self.indices)

    def complete(self, scene, token) -> bool:
        return all(storage.camera_path(self.out_dir, scene, token, c).is_file() for c in self.source.cameras)

    def __getitem__(self, k):
        i = self.indices[k]
        scene, token = self.source.key(i)
        if not self.overwrite and self.complete(scene, token):
            return i, scene, token, "skip", None
        try:
            return i, scene, token, "ok", self.source.load(i, accumulate=self.accumulate, images=self.images)
        except Exception as e:  # noqa: BLE001 - reported per sample below
            return i, scene, token, "error", f"{type(e).__name__}: {e}"


def _first(batch):
    return batch[0]


def _aggregate_stats(stats: list[dict]) -> dict:
    """Backend statistics over samples: means of scalars, median / percentiles of lists."""
    out: dict = {}
    keys = sorted({k for s in stats for k in s})
    for k in keys:
        vals = []
        for s in stats:
            v = s.get(k)
            vals.extend(v if isinstance(v, list) else [v])
        arr = np.array([v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))], dtype=np.float64)
        if arr.size == 0:
            continue
        out[k] = dict(mean=float(arr.mean()), median=float(np.median(arr)), p10=float(np.percentile(arr, 10)),
                      p90=float(np.percentile(arr, 90)), n=int(arr.size))
    if "scale" in out:
        s = np.array([v for st in stats for v in st.get("scale", []) if not math.isnan(v)])
        out["scale_error_abs_log"] = dict(mean=float(np.abs(np.log(s)).mean()), median=float(np.median(np.abs(np.log(s)))),
                                          n=int(s.size))
    return out


def generate(kind: str, args: argparse.Namespace) -> dict:
    """Run one generation (see module doc); returns the summary (on every rank)."""
    from accelerate import PartialState
    from accelerate.utils import gather_object
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from selfsup.pseudo.sources import build_source
    from selfsup.training.launch import finish_distributed, print_line_atomic

    import torch

    state = PartialState(cpu=not torch.cuda.is_available())  # N CPU processes form one gloo group
    if int(os.environ.get("WORLD_SIZE", "1")) != state.num_processes:
        raise RuntimeError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but accelerate formed {state.num_processes} process(es); "
                           "the processes would not know of each other and write the same samples")
    backend = build_backend(kind, args, state.device)
    source = build_source(args.dataset, args.data_root, version=args.version, split=args.split,
                          scenes=tuple(args.scenes) if args.scenes else None,
                          cameras=tuple(args.cameras) if args.cameras else None, infos_path=args.infos,
                          neighbours=getattr(backend, "neighbours", 0), ego_mask_dir=getattr(args, "ego_mask_dir", None))
    if not 0 < args.out_scale <= 1:
        raise ValueError(f"--out-scale must lie in (0, 1], got {args.out_scale}")
    out_hw = (max(1, round(source.src_hw[0] * args.out_scale)), max(1, round(source.src_hw[1] * args.out_scale)))
    out_dir = Path(args.out_dir)
    prepare_out_dir(out_dir, make_manifest(kind, backend, source, out_hw), args.overwrite, state)

    n_total = len(source) if args.limit is None else min(len(source), args.limit)
    mine = list(range(state.process_index, n_total, state.num_processes))
    items = _ShardItems(source, mine, out_dir, getattr(args, "accumulate", 0), args.overwrite,
                        images=backend.needs_images)
    loader = DataLoader(items, batch_size=1, shuffle=False, num_workers=args.num_workers, collate_fn=_first)
    counts = dict(written=0, skipped=0, failed=0)
    failures, stats, bytes_written, seconds = [], [], 0, 0.0
    bar = tqdm(total=len(mine), unit="sample", desc=f"{kind} {args.backend} [{state.process_index}/{state.num_processes}]",
               position=state.process_index, dynamic_ncols=True, file=sys.stderr)
    t_last = time.perf_counter()
    for i, scene, token, status, payload in loader:
        sdir = storage.sample_dir(out_dir, scene, token)
        storage.remove_stale_tmp(sdir)
        try:
            if status == "skip":
                counts["skipped"] += 1
                continue
            if status == "error":
                raise RuntimeError(payload)
            maps, st = backend.predict(payload, out_hw)
            if maps.shape != (len(source.cameras), *out_hw):
                raise RuntimeError(f"backend returned maps of shape {maps.shape}, expected {(len(source.cameras), *out_hw)}")
            size = 0
            for cam, m in zip(source.cameras, maps):
                png = storage.encode_depth(m) if kind == "depth" else storage.encode_semantic(m)
                size += storage.write_png_atomic(storage.camera_path(out_dir, scene, token, cam), png)
            counts["written"] += 1
            bytes_written += size
            stats.append(st)
            now = time.perf_counter()
            seconds += now - t_last
        except Exception as e:
            message = f"sample {i} ({scene} / {token}): {e}"
            if not args.keep_going:
                bar.close()
                raise RuntimeError(f"pseudo-{kind} generation failed at {message} (use --keep-going to skip failing samples)") from e
            counts["failed"] += 1
            failures.append(dict(index=i, scene=scene, token=token, error=str(e)))
            tqdm.write(f"FAILED {message}", file=sys.stderr)
        finally:
            t_last = time.perf_counter()
            bar.set_postfix(counts, refresh=False)
            bar.update(1)
    bar.close()

    local = dict(counts=counts, failures=failures, stats=stats, bytes=bytes_written, seconds=seconds)
    gathered = gather_object([local]) if state.num_processes > 1 else [local]
    total = {k: sum(g["counts"][k] for g in gathered) for k in counts}
    written = max(total["written"], 1)
    summary = dict(
        kind=kind, backend=args.backend, out_dir=str(out_dir), processes=state.num_processes, samples=n_total, **total,
        failures=[f for g in gathered for f in g["failures"]],
        bytes_per_sample=sum(g["bytes"] for g in gathered) / written if total["written"] else None,
        seconds_per_sample=sum(g["seconds"] for g in gathered) / written if total["written"] else None,
        backend_stats=_aggregate_stats([s for g in gathered for s in g["stats"]]),
    )
    if state.is_main_process:
        from selfsup.io import atomic_write_text

        atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        print_line_atomic(json.dumps(summary))
    finish_distributed(state)
    return summary


def main(kind: str, argv=None) -> int:
    """CLI entry: returns the exit status (0 ok, 2 some samples failed under --keep-going)."""
    args = build_parser(kind).parse_args(argv)
    summary = generate(kind, args)
    return 2 if summary["failed"] else 0
