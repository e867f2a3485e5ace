"""Train an occupancy model from a py-config.

    accelerate launch train.py --py-config config/sdf_ddad_tiny.py [--work-dir DIR]
        [--set train.steps=200 model.renderer.num_samples=64] [--resume-from CKPT|latest]

Works as plain ``python train.py ...`` too, and with ``accelerate launch --num_processes N``
on CPU-only machines (N processes in one gloo DDP group; see selfsup/training/launch.py).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from selfsup.training.launch import print_line_atomic, relaunch_for_cpu_ddp


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--py-config", required=True, help="config file defining `config = fdl.Config(Experiment, ...)`")
    p.add_argument("--work-dir", default=None, help="output folder (default work_dirs/<config name>)")
    p.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE",
                   help="dotted overrides, e.g. train.steps=200 model.renderer.num_samples=64")
    p.add_argument("--resume-from", default=None, help="checkpoint folder, a work dir, or 'latest'")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    from selfsup.training.config import apply_overrides, load_config
    from selfsup.training.loop import train

    cfg = apply_overrides(load_config(args.py_config), args.overrides)
    work_dir = Path(args.work_dir or Path("work_dirs") / Path(args.py_config).stem)
    summary = train(cfg, work_dir, resume_from=args.resume_from)
    last = summary["history"][-1] if summary["history"] else {}
    print_line_atomic(json.dumps({"work_dir": str(work_dir), "steps": summary["steps"],
                      "num_processes": summary["num_processes"], "distributed_type": summary["distributed_type"],
                      "last": last}))
    return summary


if __name__ == "__main__":
    relaunch_for_cpu_ddp()
    main()
