"""Side-by-side bird's-eye views of Occ3D ground truth and prediction folders, one PNG.

    python scripts/compare_occ.py --gt-dir GT --pred NAME=DIR [NAME=DIR ...] --out FILE.png

Rows: every GT/{scene}/{token}/labels.npz; columns: the GT, then each prediction folder
(same layout, e.g. written by ``eval_iou.py --save-occ-path``). Each tile is
``selfsup.visualize.bev_occupancy`` (highest occupied class per column, ego x up), with a
white 2-pixel gap between tiles; the column order is printed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gt-dir", type=Path, required=True)
    p.add_argument("--pred", nargs="+", default=[], metavar="NAME=DIR")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    import imageio.v3 as iio

    from selfsup.data.occ_gt import load_occ_gt
    from selfsup.io import atomic_path
    from selfsup.visualize import bev_occupancy

    preds = [item.split("=", 1) for item in args.pred]
    if any(len(x) != 2 for x in preds):
        raise SystemExit("compare_occ.py: --pred takes NAME=DIR")
    files = sorted(args.gt_dir.glob("*/*/labels.npz"))
    if not files:
        raise SystemExit(f"compare_occ.py: no */*/labels.npz under {args.gt_dir}")
    rows = []
    for f in files:
        rel = f.relative_to(args.gt_dir)
        tiles = [bev_occupancy(load_occ_gt(f, ("semantics",))["semantics"])]
        for _, folder in preds:
            tiles.append(bev_occupancy(load_occ_gt(Path(folder) / rel, ("semantics",))["semantics"]))
        gap = np.full((tiles[0].shape[0], 2, 3), 255, np.uint8)
        rows.append(np.concatenate(sum(([t, gap] for t in tiles), [])[:-1], axis=1))
    hgap = np.full((2, rows[0].shape[1], 3), 255, np.uint8)
    image = np.concatenate(sum(([r, hgap] for r in rows), [])[:-1], axis=0)
    with atomic_path(args.out) as tmp:
        iio.imwrite(tmp, image, extension=".png")
    print(f"{args.out}: rows {[str(f.relative_to(args.gt_dir).parent) for f in files]}, columns {['GT'] + [n for n, _ in preds]}")
    return args.out


if __name__ == "__main__":
    main()
