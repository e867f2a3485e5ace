"""Pseudo-label generation: bytes per sample and samples per second (JSON out).

    python scripts/bench_pseudo.py [--full-size] [--json-out FILE]

- storage: bytes per 6-camera nuScenes sample (the bundled keyframes, 900 x 1600) of the PNG
  format vs GaussianFlowOcc's arrays (float16 depth 17.28 MB, int8 classes 8.64 MB): sparse
  LiDAR depth, and a dense depth proxy (the LiDAR depth interpolated linearly over each
  image, smooth surfaces with sharp edges like a network's output; not a network's output).
- tiny: seconds per sample of every backend with tiny random checkpoints on the bundled
  nuScenes keyframes (6 cameras, 900 x 1600, maps at full size), through the generator
  (loading, inference, post-processing, PNG writing).
- full size (``--full-size``): seconds for ONE 900 x 1600 image through each backend with
  random weights of the real architectures (Depth Anything V2 Small, Grounding DINO tiny +
  SAM ViT-B, Mask2Former Swin-T); minutes on a CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from selfsup.pseudo import storage  # noqa: E402

NUSCENES = REPO / "data/samples/nuscenes"
ANCHOR_DEPTH_BYTES = 6 * 900 * 1600 * 2 + 128  # np.save float16 [6, 900, 1600]
ANCHOR_SEMANTIC_BYTES = 6 * 900 * 1600 + 128  # np.save int8


def _generate(kind: str, out: Path, *extra: str) -> dict:
    from selfsup.pseudo.runner import build_parser, generate

    args = build_parser(kind).parse_args(["--data-root", str(NUSCENES), "--version", "v1.0-mini", "--split", "all",
                                          "--out-dir", str(out), *extra])
    return generate(kind, args)


def storage_sizes(tmp: Path) -> dict:
    from scipy.interpolate import griddata

    s = _generate("depth", tmp / "lidar", "--backend", "lidar")
    dense_bytes = []
    for sample_dir in sorted((tmp / "lidar").glob("*/*")):
        total = 0
        for png in sorted(sample_dir.glob("*.png")):
            d = storage.decode_depth(storage.read_png(png, np.uint16))
            v, u = np.nonzero(d)
            gv, gu = np.mgrid[0:900, 0:1600]
            dense = griddata((v, u), d[v, u], (gv, gu), method="linear", fill_value=0.0)
            total += storage.write_png_atomic(tmp / "dense" / png.name, storage.encode_depth(dense))
        dense_bytes.append(total)
    return dict(
        anchor_depth_npy_bytes=ANCHOR_DEPTH_BYTES, anchor_semantic_npy_bytes=ANCHOR_SEMANTIC_BYTES,
        lidar_depth_png_bytes_per_sample=s["bytes_per_sample"],
        dense_depth_proxy_png_bytes_per_sample=float(np.mean(dense_bytes)),
        dense_depth_proxy_ratio_to_anchor=float(np.mean(dense_bytes)) / ANCHOR_DEPTH_BYTES,
    )


def tiny_throughput(tmp: Path) -> dict:
    from selfsup.pseudo import random_checkpoints as rc

    ck = {k: f(tmp / f"ck_{k}") for k, f in rc.TINY.items()}
    runs = {
        "lidar": ("depth", "--backend", "lidar"),
        "lidar_accumulate_1": ("depth", "--backend", "lidar", "--accumulate", "1"),
        "depth_anything": ("depth", "--backend", "depth_anything", "--checkpoint", str(ck["depth_anything"])),
        "grounded_sam": ("semantic", "--backend", "grounded_sam", "--checkpoint", str(ck["grounding_dino"]),
                         "--sam-checkpoint", str(ck["sam"])),
        "segmenter": ("semantic", "--backend", "segmenter", "--checkpoint", str(ck["mask2former"])),
    }
    out = {}
    for name, (kind, *extra) in runs.items():
        s = _generate(kind, tmp / f"tiny_{name}", *extra)
        out[name] = dict(seconds_per_sample=s["seconds_per_sample"], samples_per_s=1.0 / s["seconds_per_sample"],
                         bytes_per_sample=s["bytes_per_sample"])
    return out


def full_size_one_image(tmp: Path) -> dict:
    import torch

    from selfsup.pseudo import random_checkpoints as rc
    from selfsup.pseudo.depth_anything import DepthAnythingBackend
    from selfsup.pseudo.grounded_sam import GroundedSamBackend
    from selfsup.pseudo.segmenter import SegmenterBackend
    from selfsup.pseudo.sources import NuScenesSource

    smp = NuScenesSource(str(NUSCENES), version="v1.0-mini", split="all", cameras=("CAM_FRONT",)).load(0)
    out = {}

    def timed(name, make, n_params):
        folder = tmp / f"full_{name}"
        t0 = time.perf_counter()
        backend = make(folder)
        t_load = time.perf_counter() - t0
        t0 = time.perf_counter()
        maps, _ = backend.predict(smp, smp.src_hw)
        out[name] = dict(seconds_one_image=time.perf_counter() - t0, load_seconds=t_load, parameters_millions=n_params(backend))
        print(name, out[name], file=sys.stderr)

    count = lambda *ms: round(sum(p.numel() for m in ms for p in m.parameters()) / 1e6, 1)  # noqa: E731
    with torch.no_grad():
        timed("depth_anything_v2_small", lambda f: DepthAnythingBackend(str(rc.make_depth_anything_v2_small(f))),
              lambda b: count(b.model))
        timed("grounding_dino_tiny+sam_vit_b", lambda f: GroundedSamBackend(
            str(rc.make_grounding_dino_tiny(f / "gd")), str(rc.make_sam_vit_b(f / "sam")), box_threshold=0.3,
            text_threshold=0.3, max_boxes=40), lambda b: count(b.dino, b.sam))
        timed("mask2former_swin_t", lambda f: SegmenterBackend(str(rc.make_mask2former_swin_t(f))), lambda b: count(b.model))
    return out


def run(device: str = "cpu", full_size: bool = False) -> dict:
    if device != "cpu":
        raise SystemExit("bench_pseudo: CPU only so far (no GPU was available to write the GPU path against)")
    import torch

    res = dict(threads=torch.get_num_threads())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        res["storage"] = storage_sizes(tmp)
        res["tiny"] = tiny_throughput(tmp)
        if full_size:
            res["full_size_one_image"] = full_size_one_image(tmp)
    return res


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full-size", action="store_true")
    p.add_argument("--json-out", default=None)
    a = p.parse_args()
    result = run(full_size=a.full_size)
    text = json.dumps(result, indent=1)
    print(text)
    if a.json_out:
        from selfsup.io import atomic_write_text

        atomic_write_text(a.json_out, text + "\n")
