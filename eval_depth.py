"""Depth of a trained model vs LiDAR (SelfOcc protocol): AbsRel, SqRel, RMSE, RMSE log,
delta < 1.25 / 1.25^2 / 1.25^3 in [1e-3, 80] m, raw and median-scaled, per camera and overall.

    python eval_depth.py --py-config CFG --resume-from CKPT [--json-out FILE] [--save-maps DIR]
    python eval_depth.py --py-config CFG --init --constant-baseline     # untrained + constant depth

Depth is rendered at the config's ``eval.depth_hw`` (or ``--depth-hw H W``) in ray chunks;
each LiDAR point of the current frame is compared with the pixel it falls in.

``--protocol gaussianflowocc`` / ``gaussianflowocc_exact``: GaussianFlowOcc's own depth
evaluation (accumulated depth, LiDAR <= 40 m, bilinear sampling, raw only; averaged per
sample, or pooled over all points with ``_exact``), see
``selfsup.evaluation.evaluate_depth_gaussianflowocc``. Gaussian models only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from selfsup.evaluation import (
    DEPTH_PROTOCOLS,
    evaluate_depth,
    evaluate_depth_gaussianflowocc,
    format_depth_table,
    median_lidar_depth,
)
from selfsup.io import atomic_path, atomic_write_text
from selfsup.training.build import add_model_args, build_for_eval
from selfsup.visualize import colorize_depth


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--depth-hw", type=int, nargs=2, default=None, metavar=("H", "W"))
    p.add_argument("--max-samples", type=int, default=None)
    p.add_argument("--constant-baseline", action="store_true",
                   help="also score a constant depth (the median LiDAR depth of the evaluated images)")
    p.add_argument("--protocol", default="selfocc", choices=DEPTH_PROTOCOLS,
                   help="selfocc (default): per image, raw + median-scaled; gaussianflowocc[_exact]: its own")
    p.add_argument("--json-out", default=None)
    p.add_argument("--save-maps", default=None, help="folder for rendered depth PNGs of the first sample")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    exp = build_for_eval(args)
    hw = tuple(args.depth_hw or exp.eval.depth_hw)
    data = exp.eval_data
    indices = list(range(len(data)))[: args.max_samples]
    limits = dict(min_depth=exp.eval.min_depth, max_depth=exp.eval.max_depth)
    if args.protocol != "selfocc":
        res = evaluate_depth_gaussianflowocc(exp.model, data, hw, exact=args.protocol.endswith("exact"),
                                             device=args.device, indices=indices)  # fmt: skip
        print(format_depth_table(res, f"depth, {args.protocol} protocol, at {hw[0]}x{hw[1]}"))
        out = {"protocol": args.protocol, "model": {"overall": res["overall"]}, "depth_hw": list(hw),
               "num_samples": len(indices)}  # fmt: skip
        if args.json_out:
            atomic_write_text(args.json_out, json.dumps(out, indent=1))
        return out
    res = evaluate_depth(exp.model, data, hw, device=args.device, indices=indices, keep_maps=bool(args.save_maps), **limits)
    print(format_depth_table(res, f"depth ({'initial' if args.init else args.resume_from}) at {hw[0]}x{hw[1]}"))
    out = {"model": {"overall": res["overall"], "per_camera": res["per_camera"]}, "depth_hw": list(hw),
           "num_samples": len(indices)}
    if args.constant_baseline:
        c = median_lidar_depth(data, hw, indices=indices, **limits)
        base = evaluate_depth(exp.model, data, hw, device=args.device, indices=indices, constant_depth=c, **limits)
        print(format_depth_table(base, f"constant depth {c:.2f} m"))
        out["constant_baseline"] = {"depth_m": c, "overall": base["overall"], "per_camera": base["per_camera"]}
    if args.save_maps and res["maps"]:
        save_depth_maps(res["maps"][0], data.cameras if hasattr(data, "cameras") else None, Path(args.save_maps))
    if args.json_out:
        atomic_write_text(args.json_out, json.dumps(out, indent=1))
    return out


def save_depth_maps(maps: np.ndarray, names, folder: Path) -> None:
    """One PNG per camera plus a mosaic of all cameras."""
    folder.mkdir(parents=True, exist_ok=True)
    images = [colorize_depth(m) for m in maps]
    for v, img in enumerate(images):
        with atomic_path(folder / f"depth_{names[v] if names else v}.png") as tmp:
            iio.imwrite(tmp, img, extension=".png")
    with atomic_path(folder / "depth_all.png") as tmp:
        iio.imwrite(tmp, np.concatenate(images, axis=1), extension=".png")


if __name__ == "__main__":
    main()
