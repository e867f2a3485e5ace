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

from selfsup.evaluation import evaluate_novel_depth
from selfsup.io import atomic_write_text
from selfsup.training.build import add_model_args, build_for_eval

NAMES = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--depth-hw", type=int, nargs=2, default=None, metavar=("H", "W"))
    p.add_argument("--max-samples", type=int, default=None)
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
    result = evaluate_novel_depth(exp.model, data, hw, exp.eval.min_depth, exp.eval.max_depth, args.device, indices)
    if not result:
        raise SystemExit("no neighbour frame to render: configure the dataset with neighbours, e.g. (-1, 1)")
    print(format_bins(result))
    if args.json_out:
        atomic_write_text(args.json_out, json.dumps({"novel_depth": result, "depth_hw": list(hw)}, indent=1))
    return result


if __name__ == "__main__":
    main()
