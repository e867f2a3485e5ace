"""Benchmark of the evaluation metrics on realistic synthetic Occ3D scenes.

`run(device, samples)` returns ms per sample for the Occ3D mIoU update and for RayIoU
(query rays, marching of prediction and GT from up to 8 origins, counting); with
`openocc=True` also for the OpenOcc metric (the same scenes relabelled to the OpenOcc
class order, random per-voxel flows: RayIoU plus the flow read and AVE sums). The scenes: a
driveable ground plane at z-index 1-2 with sidewalks, parked cars, buildings along both
sides, trees; the prediction is the GT with shifted objects, dropped and spurious voxels.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval.occ3d import OCC3D_CLASS_NAMES, Occ3DMetric  # noqa: E402
from eval.openocc import OPENOCC_CLASS_NAMES, OpenOccMetric  # noqa: E402
from eval.rayiou import RayIoUMetric  # noqa: E402

FREE = 17


def synthetic_scene(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pred, gt, origins) for one realistic street scene on the 200 x 200 x 16 grid."""
    gt = np.full((200, 200, 16), FREE, np.uint8)
    gt[:, :, :2] = 14  # terrain below everything
    gt[:, 80:120, 1] = 11  # road along x
    gt[:, 70:80, 1:3] = 13  # sidewalks
    gt[:, 120:130, 1:3] = 13
    for side in (rng.integers(40, 68), rng.integers(132, 160)):
        for x0 in range(0, 200, int(rng.integers(25, 40))):
            gt[x0 : x0 + int(rng.integers(10, 22)), side : side + 12, 2 : int(rng.integers(8, 16))] = 15
    for _ in range(12):  # trees
        x, y = int(rng.integers(0, 195)), int(rng.choice([rng.integers(60, 70), rng.integers(130, 140)]))
        gt[x : x + 4, y : y + 4, 4:10] = 16
    for _ in range(20):  # cars and a few trucks on the road
        x, y = int(rng.integers(0, 190)), int(rng.integers(82, 114))
        cls = 4 if rng.random() < 0.8 else 10
        gt[x : x + 11, y : y + 5, 2:6] = cls
    pred = gt.copy()
    noise = rng.random(gt.shape)
    pred[(noise < 0.05) & (gt != FREE)] = FREE
    pred[(noise > 0.995) & (gt == FREE)] = 16
    pred = np.roll(pred, 1, axis=0)
    xs = np.linspace(-30, 30, 8) + rng.normal(0, 0.5, 8)
    origins = np.stack([xs, rng.normal(0, 0.3, 8), np.full(8, 1.84)], 1)
    return pred, gt, origins


def to_openocc(labels: np.ndarray) -> np.ndarray:
    """Occ3D labels -> OpenOcc labels by class name ('others' has no twin: manmade)."""
    lookup = np.array(
        [OPENOCC_CLASS_NAMES.index(n) if n in OPENOCC_CLASS_NAMES else OPENOCC_CLASS_NAMES.index("manmade")
         for n in OCC3D_CLASS_NAMES],
        dtype=np.uint8,
    )
    return lookup[labels]


def run_openocc(device: str, samples: int, backend: str) -> dict:
    """ms per sample for the OpenOcc metric on relabelled synthetic scenes with flows."""
    rng = np.random.default_rng(1)
    scenes = []
    for _ in range(samples):
        pred, gt, origins = synthetic_scene(rng)
        gt_flow = rng.normal(0, 2, gt.shape + (2,)).astype(np.float32)
        pred_flow = gt_flow + rng.normal(0, 0.5, gt.shape + (2,)).astype(np.float32)
        scenes.append((to_openocc(pred), to_openocc(gt), origins, pred_flow, gt_flow))
    metric = OpenOccMetric(device=device, backend=backend)
    start = time.perf_counter()
    for scene in scenes:
        metric.update(*scene)
    ms = (time.perf_counter() - start) * 1000 / samples
    result = metric.compute()
    return {"openocc_ms_per_sample": ms, "OpenOcc_RayIoU": result["RayIoU"], "mAVE": result["mAVE"],
            "OccScore": result["OccScore"]}


def run(device: str = "cpu", samples: int = 3, backend: str = "torch", openocc: bool = False) -> dict:
    """ms per sample for mIoU and RayIoU on `samples` synthetic scenes (8 origins each)."""
    rng = np.random.default_rng(0)
    scenes = [synthetic_scene(rng) for _ in range(samples)]
    miou = Occ3DMetric()
    start = time.perf_counter()
    for pred, gt, _ in scenes:
        miou.update(pred, gt, gt != FREE)
    miou_ms = (time.perf_counter() - start) * 1000 / samples
    ray = RayIoUMetric(device=device, backend=backend)
    ray.update(*scenes[0])  # warm-up (ray cache, kernel build)
    ray = RayIoUMetric(device=device, backend=backend)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for pred, gt, origins in scenes:
        ray.update(pred, gt, origins)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    ray_ms = (time.perf_counter() - start) * 1000 / samples
    result = {
        "device": device,
        "backend": backend,
        "samples": samples,
        "threads": torch.get_num_threads(),
        "miou_ms_per_sample": miou_ms,
        "rayiou_ms_per_sample": ray_ms,
        "rays_per_sample": 8 * 14040,
        "occ3d_val_minutes_estimate": (miou_ms + ray_ms) * 6019 / 60000,
        "RayIoU": ray.compute()["RayIoU"],
        "mIoU": miou.compute()["mIoU"],
    }
    if openocc:
        result.update(run_openocc(device, samples, backend))
    return result


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--backend", default="torch", choices=("torch", "cpp", "cuda"))
    parser.add_argument("--openocc", action="store_true", help="also time the OpenOcc metric (RayIoU + mAVE)")
    a = parser.parse_args()
    print(json.dumps(run(a.device, a.samples, a.backend, a.openocc), indent=2))
