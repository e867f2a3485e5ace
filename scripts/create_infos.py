"""Cache the nuScenes index so training does not re-walk the devkit tables at each start.

Usage::

    python scripts/create_infos.py --data-root data/nuscenes --version v1.0-trainval \
        --split train --out data/nuscenes/selfsup_infos_train.pkl [--with-sweeps]

The file holds :func:`selfsup.data.nuscenes.build_index` (tokens, scene names,
timestamps, file paths relative to the data root, 4x4 calibrations and ego poses,
prev / next links) and is written atomically (temporary file, then ``os.replace``).
Pass it to ``NuScenesFrames(..., infos_path=...)``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from selfsup.data.nuscenes import SPLITS, build_index, open_devkit, save_index  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True, help="nuScenes data root (holds samples/ and <version>/)")
    parser.add_argument("--version", default="v1.0-trainval", help="table folder, e.g. v1.0-trainval or v1.0-mini")
    parser.add_argument("--split", default="train", choices=SPLITS, help="nuscenes.utils.splits name, or 'all'")
    parser.add_argument("--out", required=True, type=Path, help="output .pkl")
    parser.add_argument("--with-sweeps", action="store_true",
                        help="also index non-keyframe camera / LiDAR sample_data (neighbour_source='sweeps')")
    args = parser.parse_args(argv)
    nusc = open_devkit(args.data_root, args.version)
    index = build_index(nusc, args.split, with_sweeps=args.with_sweeps)
    save_index(index, args.out)
    print(f"wrote {args.out}: {len(index['samples'])} samples, {len(index['sample_data'])} sample_data "
          f"({args.version}, split {args.split})")


if __name__ == "__main__":
    main()
