"""Generate Occ3D-format occupancy ground truth from LiDAR frames and 3D boxes.

Usage::

    python scripts/generate_occ_gt.py --source {nuscenes,ddad,lidarseg-frames} --data-root PATH \
        [--version v1.0-mini] [--scenes NAME ...] [--samples TOKEN ...] --out-dir DIR \
        [--num-workers N] [--window W] [--box-margin 0.2] [--camera-stride 8] \
        [--ground-align auto|on|off] [--densify] [--overwrite] [--keep-going] [--json-out FILE]

Writes ``DIR/{scene_name}/{token_dir}/labels.npz`` (``semantics``, ``mask_lidar``,
``mask_camera``, uint8 (200, 200, 16), ego frame of the keyframe; the Occ3D layout that
``eval_iou.py --gt-dir DIR`` reads) and ``lidar_origins.npy`` beside it; ``token_dir`` is the
sample token, DDAD ids ``scene_02/<time_us>`` without their scene prefix
(:func:`selfsup.occ_gt.paths.gt_label_path`). Complete samples are skipped, files are written
atomically, a progress bar runs, and a summary (samples, seconds per sample, occupied / seen
fractions) is printed and written to ``DIR/generation_summary.json``. The method is described
in :mod:`selfsup.occ_gt` and the README ("Occupancy ground truth").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from selfsup.occ_gt.generate import GenerationConfig, SourceSpec, format_summary, run_generation, summary_json  # noqa: E402
from selfsup.occ_gt.sources import SOURCES  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", required=True, choices=SOURCES)
    p.add_argument("--data-root", required=True, type=Path,
                   help="nuScenes devkit root / DGP folder of scene folders / the lidarseg-frames scene folder")
    p.add_argument("--version", default="v1.0-mini", help="nuScenes table version (nuscenes source)")
    p.add_argument("--scenes", nargs="+", help="scene names (default: all scenes of the source)")
    p.add_argument("--samples", nargs="+", help="only these sample tokens (keyframes of the chosen scenes)")
    p.add_argument("--out-dir", required=True, type=Path)
    p.add_argument("--num-workers", type=int, default=1, help="processes (spawned, one torch thread each)")
    p.add_argument("--window", type=int, default=None,
                   help="frames before / after each keyframe aggregated (default: the whole scene)")
    p.add_argument("--box-margin", type=float, default=0.2, help="metres boxes are grown by for the static / object split")
    p.add_argument("--unlabelled-class", type=int, default=0, help="class of voxels with only unlabelled points (0 = others)")
    p.add_argument("--camera-stride", type=int, default=8, help="pixel spacing of the mask_camera rays")
    p.add_argument("--ground-align", choices=("auto", "on", "off"), default="auto",
                   help="re-align other frames' ground vertically; auto = on when the ego poses have no z (nuScenes)")
    p.add_argument("--densify", action="store_true", help="fill unobserved holes (off by default; see selfsup.occ_gt.voxelize.densify)")
    p.add_argument("--densify-iterations", type=int, default=1)
    p.add_argument("--overwrite", action="store_true", help="regenerate samples that are already complete")
    p.add_argument("--keep-going", action="store_true", help="count failed samples and continue")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json-out", type=Path, help="also write the summary here")
    args = p.parse_args(argv)
    if args.num_workers < 1:
        p.error(f"--num-workers must be >= 1, got {args.num_workers}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    config = GenerationConfig(
        window=args.window, box_margin=args.box_margin, unlabelled_class=args.unlabelled_class,
        camera_stride=args.camera_stride, ground_align={"auto": None, "on": True, "off": False}[args.ground_align], densify=args.densify,
        densify_iterations=args.densify_iterations,
    )
    spec = SourceSpec(args.source, str(args.data_root), args.version, tuple(args.scenes) if args.scenes else None)
    summary = run_generation(spec, args.out_dir, config, samples=args.samples, num_workers=args.num_workers,
                             overwrite=args.overwrite, progress=not args.no_progress, keep_going=args.keep_going)
    print(format_summary(summary))
    if args.json_out is not None:
        from selfsup.io import atomic_write_text

        atomic_write_text(args.json_out, summary_json(summary))
    return summary


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError, KeyError, RuntimeError) as err:
        print(f"generate_occ_gt.py: error: {err}", file=sys.stderr)
        raise SystemExit(2) from err
