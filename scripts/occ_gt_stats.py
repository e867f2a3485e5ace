"""Statistics of generated occupancy ground truth side by side with a real Occ3D file.

Usage::

    python scripts/occ_gt_stats.py --gt FILE_OR_DIR ... [--reference data/samples/occ3d/.../labels.npz] \
        [--json-out stats.json] [--png-out bev.png]

For each ``labels.npz`` (a directory means every ``*/*/labels.npz`` under it): occupied
fraction, ``mask_lidar`` / ``mask_camera`` fractions, seen share of the occupied voxels, the
occupied height histogram (share per z index) and class counts
(:func:`selfsup.occ_gt.metrics.label_statistics`). Prints a Markdown table, writes the JSON,
and optionally a PNG with a bird's-eye view per file (semantics, mask_lidar, mask_camera).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from selfsup.occ_gt.generate import summary_json  # noqa: E402
from selfsup.occ_gt.metrics import label_statistics, load_gt  # noqa: E402

DEFAULT_REFERENCE = Path(__file__).resolve().parents[1] / "data/samples/occ3d/29796060110c4163b07f06eff4af0753/labels.npz"


def collect(paths: list[Path]) -> list[Path]:
    files = []
    for p in paths:
        files.extend(sorted(p.glob("*/*/labels.npz")) if p.is_dir() else [p])
    return files


def table(rows: list[tuple[str, dict]]) -> str:
    head = ("| file | occupied % | mask_lidar % | mask_camera % | occupied seen by LiDAR % | "
            "occupied in camera mask % | camera outside LiDAR (voxels) | occupied by z index 0-15 (% of occupied) |")
    lines = [head, "|" + "---|" * 8]
    for name, s in rows:
        hist = " ".join(f"{100 * v:.0f}" for v in s["occupied_height_histogram"])
        lines.append(
            f"| {name} | {100 * s['occupied_fraction']:.2f} | {100 * s['mask_lidar_fraction']:.2f} | "
            f"{100 * s['mask_camera_fraction']:.2f} | {100 * s['occupied_in_mask_lidar']:.1f} | "
            f"{100 * s['occupied_in_mask_camera']:.1f} | {s['mask_camera_outside_mask_lidar']} | {hist} |")
    return "\n".join(lines)


def bev_png(rows: list[tuple[str, dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from selfsup.visualize import bev_occupancy

    fig, axes = plt.subplots(len(rows), 3, figsize=(10.5, 3.6 * len(rows)), squeeze=False)
    for r, (name, arrays) in enumerate(rows):
        axes[r, 0].imshow(bev_occupancy(arrays["semantics"]))
        axes[r, 1].imshow(arrays["mask_lidar"].sum(2)[::-1, ::-1], cmap="gray", vmin=0, vmax=16)
        axes[r, 2].imshow(arrays["mask_camera"].sum(2)[::-1, ::-1], cmap="gray", vmin=0, vmax=16)
        for c, what in enumerate(("semantics (top class)", "mask_lidar (voxels per column)", "mask_camera")):
            axes[r, c].set_title(f"{name}\n{what}", fontsize=7)
            axes[r, c].axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gt", nargs="+", type=Path, required=True, help="labels.npz files or GT directories")
    p.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE, help="a real Occ3D labels.npz")
    p.add_argument("--json-out", type=Path)
    p.add_argument("--png-out", type=Path)
    args = p.parse_args(argv)
    files = collect(args.gt)
    if not files:
        raise SystemExit(f"occ_gt_stats.py: no labels.npz under {args.gt}")
    named = [("Occ3D (real) " + args.reference.parent.name[:8], args.reference)]
    named += [(f"{f.parent.parent.name}/{f.parent.name[:12]}", f) for f in files]
    arrays = [(n, load_gt(f)) for n, f in named]
    stats = [(n, label_statistics(a)) for n, a in arrays]
    print(table(stats))
    result = {"reference": str(args.reference), "files": [str(f) for _, f in named],
              "statistics": {n: s for n, s in stats}}
    if args.json_out:
        from selfsup.io import atomic_write_text

        atomic_write_text(args.json_out, summary_json(result))
    if args.png_out:
        bev_png(arrays, args.png_out)
    return result


if __name__ == "__main__":
    main()
