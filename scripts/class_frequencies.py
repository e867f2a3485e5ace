"""Voxel class frequencies of an Occ3D-format GT folder and the class weights 1 / ln(f + 0.001).

    python scripts/class_frequencies.py --gt-dir GT [--mask mask_camera] [--json-out FILE]

Prints the count of each class (0-16, free = 17) over every GT/{scene}/{token}/labels.npz
(only inside ``--mask`` if given, matching a training protocol with the camera mask) and
the FlashOcc-style weights; ``--json-out`` writes {"counts": [...], "weights": [...],
"mask": ..., "num_files": N} atomically. Paste the counts into a config as
``class_frequencies=(...)`` to train with weights from your own GT (the default is
FlashOcc's Occ3D-nuScenes table, ``selfsup.objectives.voxel.FLASHOCC_OCC3D_FREQUENCIES``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gt-dir", type=Path, required=True)
    p.add_argument("--mask", choices=("mask_camera", "mask_lidar"), default=None)
    p.add_argument("--json-out", type=Path)
    args = p.parse_args(argv)
    from eval.occ3d import OCC3D_CLASS_NAMES
    from selfsup.data.occ_gt import count_class_frequencies
    from selfsup.io import atomic_write_text
    from selfsup.objectives.voxel import class_weights_from_frequencies

    counts = count_class_frequencies(args.gt_dir, args.mask)
    weights = class_weights_from_frequencies(counts.tolist())
    result = {"counts": counts.tolist(), "weights": [round(float(w), 6) for w in weights], "mask": args.mask,
              "num_files": len(list(args.gt_dir.glob("*/*/labels.npz")))}
    for name, c, w in zip(OCC3D_CLASS_NAMES, counts, weights):
        print(f"{name:<22}{int(c):>14d}{float(w):>10.4f}")
    if args.json_out:
        atomic_write_text(args.json_out, json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as err:
        print(f"class_frequencies.py: error: {err}", file=sys.stderr)
        raise SystemExit(2) from err
