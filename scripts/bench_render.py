"""Benchmark Gaussian splatting: throughput of ``render.gaussians.rasterize_gaussians``.

``run(device)`` renders a synthetic driving-like scene (Gaussians scattered around the ego
car, six outward-looking cameras like nuScenes at 96 x 176) with 16-channel features plus
depth, and reports per backend and scene size: ms per forward render (no autograd), ms per
forward + backward (wall clock and process CPU time), Gaussians x pixels per second
(N x C x H x W / wall time) for both, and peak memory (CUDA: peak
allocated by torch; CPU: the process's peak resident set, a coarse upper bound).

    python scripts/bench_render.py            # CPU, torch backend
    python scripts/bench_render.py --device cuda   # gsplat and torch on the GPU
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from render.gaussians import rasterize_gaussians  # noqa: E402

NUM_CAMERAS = 6
WIDTH, HEIGHT = 176, 96
CHANNELS = 16


def make_scene(n: int, device: str, seed: int = 0) -> list[torch.Tensor]:
    """n Gaussians in [-25, 25] x [-25, 25] x [-1, 4] m (ego frame), six cameras at the origin."""
    g = torch.Generator().manual_seed(seed)
    lo = torch.tensor([-25.0, -25.0, -1.0])
    hi = torch.tensor([25.0, 25.0, 4.0])
    means = lo + (hi - lo) * torch.rand(n, 3, generator=g)
    quats = torch.randn(n, 4, generator=g)
    scales = 0.1 + 0.5 * torch.rand(n, 3, generator=g)
    opacities = 0.05 + 0.9 * torch.rand(n, generator=g)
    features = torch.randn(n, CHANNELS, generator=g)
    fov = math.radians(70.0)
    f = 0.5 * WIDTH / math.tan(0.5 * fov)
    views, ks = [], []
    for c in range(NUM_CAMERAS):
        yaw = 2 * math.pi * c / NUM_CAMERAS
        # OpenCV axes in the ego frame (x forward, y left, z up): z along the yaw, y down.
        z_axis = torch.tensor([math.cos(yaw), math.sin(yaw), 0.0])
        x_axis = torch.tensor([math.sin(yaw), -math.cos(yaw), 0.0])
        y_axis = torch.tensor([0.0, 0.0, -1.0])
        t_cam_ego = torch.eye(4)
        t_cam_ego[:3, :3] = torch.stack([x_axis, y_axis, z_axis])
        t_cam_ego[:3, 3] = -t_cam_ego[:3, :3] @ torch.tensor([0.0, 0.0, 1.5])
        views.append(t_cam_ego)
        ks.append(torch.tensor([[f, 0.0, WIDTH / 2], [0.0, f, HEIGHT / 2], [0.0, 0.0, 1.0]]))
    tensors = [means, quats, scales, opacities, features, torch.stack(views), torch.stack(ks)]
    return [t.to(device) for t in tensors]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _time(fn, device: str, repeats: int, warm_up: bool = True) -> tuple[float, float]:
    """(wall seconds, process CPU seconds summed over threads) per call, after a warm-up."""
    if warm_up:
        fn()  # warm-up (CUDA kernels, allocator)
    _sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - wall) / repeats, (time.process_time() - cpu) / repeats


def bench_one(n: int, backend: str, device: str, repeats: int) -> dict:
    scene = make_scene(n, device)
    leaves = [t.clone().requires_grad_() for t in scene[:5]]
    cams = scene[5:]
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()

    def forward():
        with torch.no_grad():
            return rasterize_gaussians(*scene, WIDTH, HEIGHT, backend=backend)

    def forward_backward():
        out = rasterize_gaussians(*leaves, *cams, WIDTH, HEIGHT, backend=backend)
        (out.features.square().mean() + out.depth.mean() + out.alpha.mean()).backward()

    out = forward()
    fwd, fwd_cpu = _time(forward, device, repeats)
    fwd_bwd, fwd_bwd_cpu = _time(forward_backward, device, repeats)
    work = n * NUM_CAMERAS * WIDTH * HEIGHT
    result = dict(
        backend=backend,
        device=device,
        gaussians=n,
        cameras=NUM_CAMERAS,
        height=HEIGHT,
        width=WIDTH,
        channels=CHANNELS,
        visible_pairs=int((out.radii > 0).all(-1).sum()),
        tile_intersections=int(out.gaussians_per_tile.sum()),
        forward_ms=1e3 * fwd,
        forward_backward_ms=1e3 * fwd_bwd,
        forward_cpu_ms=1e3 * fwd_cpu,
        forward_backward_cpu_ms=1e3 * fwd_bwd_cpu,
        forward_gaussian_pixels_per_s=work / fwd,
        forward_backward_gaussian_pixels_per_s=work / fwd_bwd,
    )
    if device.startswith("cuda"):
        result["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        # ru_maxrss is in KiB on Linux; the peak of the whole process so far.
        result["process_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


# GaussianFlowOcc's training render: 10,000 Gaussians, 6 cameras at 256 x 704, the current
# frame and 6 neighbours (7 times), one rasterization per time with that time's means.
PUBLISHED = dict(gaussians=10_000, cameras=6, times=7, height=256, width=704, channels=16)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_published(backend: str, device: str, repeats: int = 1) -> dict:
    """One training step's rendering at GaussianFlowOcc's scale (``PUBLISHED``): per time a
    6-camera rasterization of the Gaussians moved by a per-time offset (as its flow does),
    16 semantic channels + depth; ms for forward (no autograd) and forward + backward of
    all 7 times, and peak memory (CUDA: peak allocated; CPU: the growth of the process's
    peak resident set during this benchmark, a coarse bound)."""
    p = PUBLISHED
    global WIDTH, HEIGHT, CHANNELS
    saved = (WIDTH, HEIGHT, CHANNELS)
    WIDTH, HEIGHT, CHANNELS = p["width"], p["height"], p["channels"]
    try:
        scene = make_scene(p["gaussians"], device)
    finally:
        WIDTH, HEIGHT, CHANNELS = saved
    g = torch.Generator().manual_seed(1)
    offsets = [torch.zeros(1, 3)] + [0.3 * torch.randn(1, 3, generator=g) for _ in range(p["times"] - 1)]
    offsets = [o.to(device) for o in offsets]
    leaves = [t.clone().requires_grad_() for t in scene[:5]]
    cams = scene[5:]
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    rss0 = _peak_rss_mb()

    def render_all(tensors, grad: bool):
        total = 0.0
        for off in offsets:
            out = rasterize_gaussians(tensors[0] + off, *tensors[1:5], *cams, p["width"], p["height"], backend=backend)
            total = total + out.features.square().mean() + out.accumulated_depth.mean()
        if grad:
            total.backward()
        return total

    def forward():
        with torch.no_grad():
            render_all(scene, False)

    # On CUDA warm up first (kernels, allocator); on a CPU a step takes minutes and needs none.
    warm = device.startswith("cuda")
    fwd, fwd_cpu = _time(forward, device, repeats, warm_up=warm)
    fwd_bwd, fwd_bwd_cpu = _time(lambda: render_all(leaves, True), device, repeats, warm_up=warm)
    result = dict(backend=backend, device=device, **p, forward_ms=1e3 * fwd, forward_backward_ms=1e3 * fwd_bwd,
                  forward_cpu_ms=1e3 * fwd_cpu, forward_backward_cpu_ms=1e3 * fwd_bwd_cpu)  # fmt: skip
    if device.startswith("cuda"):
        result["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        result["peak_rss_growth_mb"] = _peak_rss_mb() - rss0
        result["process_peak_rss_mb"] = _peak_rss_mb()
    return result


def run(
    device: str = "cpu", sizes: tuple[int, ...] = (2000, 10000), repeats: int = 3, published: bool = True
) -> dict:
    """Benchmark the torch backend on ``device`` and, on CUDA, gsplat too; with
    ``published`` also one training step's rendering at GaussianFlowOcc's scale
    (``bench_published``; minutes on a CPU, timed once after a warm-up).

    Returns {"results": [one dict per (backend, size)], "published": [one per backend],
    "threads": torch threads}.
    """
    backends = ["torch"] + (["gsplat"] if device.startswith("cuda") else [])
    results = [bench_one(n, b, device, repeats) for b in backends for n in sizes]
    extra = {"published": [bench_published(b, device) for b in backends]} if published else {}
    # CPU numbers on a shared machine: compare *_cpu_ms (CPU time) when the load is high.
    return dict(
        results=results, **extra, threads=torch.get_num_threads(), torch=torch.__version__,
        load_average_1min=os.getloadavg()[0],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 10000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--published-only", action="store_true", help="only the GaussianFlowOcc-scale step")
    args = parser.parse_args()
    if args.published_only:
        backends = ["torch"] + (["gsplat"] if args.device.startswith("cuda") else [])
        print(json.dumps({"published": [bench_published(b, args.device) for b in backends],
                          "threads": torch.get_num_threads(), "load_average_1min": os.getloadavg()[0]}, indent=2))
        return
    print(json.dumps(run(args.device, tuple(args.sizes), args.repeats), indent=2))


if __name__ == "__main__":
    main()
