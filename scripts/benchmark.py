"""Speed and memory benchmarks, JSON out (targets live here, not in timed tests).

    python scripts/benchmark.py eval   [--device cpu|cuda] [--json-out FILE]
    python scripts/benchmark.py render [--device cpu|cuda] [--json-out FILE]
    python scripts/benchmark.py sdf    [--device cpu|cuda] [--json-out FILE]
    python scripts/benchmark.py all    [--json-out FILE]   # every benchmark on every device here

eval: ms per sample of Occ3D mIoU and RayIoU on a realistic 200x200x16 case, for each
RayIoU marcher (PyTorch and C++ on CPU, PyTorch and CUDA on GPU) (scripts/bench_eval.py); render: Gaussians x pixels per second of the Gaussian rasterizer
(scripts/bench_render.py); sdf: training and evaluation rendering rays per second of the SDF
tri-plane model, dense-grid and per-sample fields (scripts/bench_sdf.py).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_eval  # noqa: E402
import bench_render  # noqa: E402
import bench_sdf  # noqa: E402

from selfsup.io import atomic_write_text  # noqa: E402

def eval_all_backends(device: str) -> dict:
    """mIoU / RayIoU ms per sample with every RayIoU marcher that runs on ``device``."""
    backends = ("torch", "cpp") if device == "cpu" else ("torch", "cuda")
    return {backend: bench_eval.run(device=device, backend=backend) for backend in backends}


BENCHMARKS = {"eval": eval_all_backends, "render": bench_render.run, "sdf": bench_sdf.run}


def machine() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("which", choices=[*BENCHMARKS, "all"])
    p.add_argument("--device", default=None, help="cpu or cuda (default: every device available)")
    p.add_argument("--json-out", default=None)
    args = p.parse_args(argv)
    names = list(BENCHMARKS) if args.which == "all" else [args.which]
    devices = [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if "cuda" in devices and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    results = {"machine": machine()}
    for name in names:
        results[name] = {dev: BENCHMARKS[name](device=dev) for dev in devices}
    text = json.dumps(results, indent=1)
    print(text)
    if args.json_out:
        atomic_write_text(args.json_out, text + "\n")
    return results


if __name__ == "__main__":
    main()
