"""Novel depth synthesis (SelfOcc protocol): render the current frame's representation at
the camera poses of its neighbouring frames and score against their LiDAR, binned by the
distance between the frames (ceil, metres).

    python eval_novel_depth.py --py-config CFG --resume-from CKPT [--depth-hw H W] [--json-out FILE]

The neighbours are the dataset's configured ``neighbours`` (e.g. ``--set
val_data.neighbours=(-2,-1,1,2)``); a neighbour clamped to the current frame at a scene
boundary is skipped. Metrics: AbsRel, SqRel, RMSE, RMSE log, delta < 1.25^k in
[1e-3, 80] m, raw and median-scaled, per bin and overall.
"""

from __future__ import annotations

import argparse
import json

from pathlib import Path

import imageio.v3 as iio
import numpy as np

from selfsup.evaluation import evaluate_novel_depth, novel_depth_baselines
from selfsup.io import atomic_path
from selfsup.io import atomic_write_text
from selfsup.visualize import colorize_depth
from selfsup.training.build import add_model_args, build_for_eval

NAMES = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--depth-hw", type=int, nargs=2, default=None, metavar=("H", "W"))
    p.add_argument("--max-samples", type=int, default=None)
    p.add_argument("--baselines", action="store_true",
                   help="also score copying the current frames' LiDAR into the target cameras, and a constant depth")
    p.add_argument("--save-maps", default=None, help="folder for PNGs: rendered, LiDAR-copy and target depth per image")
    p.add_argument("--json-out", default=None)
    return p.parse_args(argv)


def format_bins(result: dict) -> str:
    lines = [f"{'':20s}{'images':>8s}" + "".join(f"{n:>10s}" for n in NAMES)]
    for kind in ("raw", "median"):
        if kind not in result:
            continue
        rows = [("all", result[kind]["all"])] + [(f"<= {k} m", v) for k, v in sorted(result[kind]["bins"].items())]
        for name, m in rows:
            lines.append(f"{kind + ' ' + name:20s}{m['num_images']:8d}" + "".join(f"{m[n]:10.4f}" for n in NAMES))
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    exp = build_for_eval(args)
    hw = tuple(args.depth_hw or exp.eval.depth_hw)
    data = exp.eval_data
    indices = list(range(len(data)))[: args.max_samples]
    rendered: list | None = [] if args.save_maps else None
    result = evaluate_novel_depth(exp.model, data, hw, exp.eval.min_depth, exp.eval.max_depth, args.device, indices,
                                  keep_maps=rendered)  # fmt: skip
    if not result:
        raise SystemExit("no neighbour frame to render: configure the dataset with neighbours, e.g. (-1, 1)")
    print("model")
    print(format_bins(result))
    out = {"novel_depth": result, "depth_hw": list(hw)}
    if args.baselines:
        base = novel_depth_baselines(data, hw, exp.eval.min_depth, exp.eval.max_depth, indices,
                                     keep_maps=bool(args.save_maps))  # fmt: skip
        print(f"baseline: copy the current frames' LiDAR (coverage {100 * base['coverage']:.1f} % of the target points, "
              "scored on those)")
        print(format_bins(base["lidar_copy"]))
        print(f"baseline: LiDAR copy, uncovered pixels filled with the constant {base['constant_depth_m']:.2f} m")
        print(format_bins(base["lidar_copy_filled"]))
        print(f"baseline: constant {base['constant_depth_m']:.2f} m (median LiDAR depth of the current frames)")
        print(format_bins(base["constant"]))
        out["baselines"] = {k: v for k, v in base.items() if k != "maps"}
        if args.save_maps:
            save_maps(Path(args.save_maps), rendered, base["maps"])
    elif args.save_maps:
        save_maps(Path(args.save_maps), rendered, [])
    if args.json_out:
        atomic_write_text(args.json_out, json.dumps(out, indent=1))
    return out if args.baselines else result


def save_maps(folder: Path, rendered: list, baseline_maps: list) -> None:
    """One mosaic PNG per target frame of a sample: rows rendered / LiDAR copy / target LiDAR,
    one column per camera (turbo colour map, 0-60 m, black = no depth)."""
    folder.mkdir(parents=True, exist_ok=True)
    per_image = [[colorize_depth(r) for r in rendered]]
    if baseline_maps:
        per_image.append([colorize_depth(m["lidar_copy"]) for m in baseline_maps])
        per_image.append([colorize_depth(m["target"]) for m in baseline_maps])
    cams = 6 if len(rendered) % 6 == 0 else len(rendered)
    for k in range(0, len(rendered), cams):
        rows = [np.concatenate(r[k : k + cams], axis=1) for r in per_image if len(r) >= k + cams]
        with atomic_path(folder / f"novel_depth_{k // cams}.png") as tmp:
            iio.imwrite(tmp, np.concatenate(rows, axis=0), extension=".png")


if __name__ == "__main__":
    main()
