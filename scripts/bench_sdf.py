"""Rays per second of the SDF tri-plane model: training (forward + backward of one step) and
evaluation depth rendering, for the dense-grid field and the per-sample decoder field.

    python scripts/bench_sdf.py [--device cpu|cuda] [--steps 3]

Uses ``config/sdf_ddad_tiny.py`` on the bundled DDAD sample. Training rays/s = rays per
step (cameras x ``rays_hw``) / seconds per optimiser step (forward, backward, AdamW);
evaluation rays/s = pixels rendered per second by ``render_depth``; the seconds one image at
SelfOcc's 450 x 800 would take follow from it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import fiddle as fdl
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from selfsup.camera import scale_intrinsics  # noqa: E402
from selfsup.data.frames import collate_frames  # noqa: E402
from selfsup.training.config import apply_overrides, load_config  # noqa: E402
from selfsup.training.launch import flush_denormals  # noqa: E402

MODES = {
    "grid": ["model.field_resolution=(100,100,16)"],
    # The same with the two neighbouring cameras of each camera, at every frame, as extra
    # photometric sources (8 sources instead of 2).
    "grid_spatial": ["model.field_resolution=(100,100,16)", "model.spatial_sources=2"],
    # The same with every sample matched by its own 3 x 3 patch (model.photometric_patch).
    "grid_patch": ["model.field_resolution=(100,100,16)", "model.photometric_patch=3"],
    # The prior pull lives on the decoded grid: off without one.
    "per_sample": ["model.field_resolution=None", "model.renderer.num_samples=48", "model.loss_weights.prior=0"],
}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def run(device: str = "cpu", steps: int = 3, eval_hw: tuple[int, int] = (96, 176), modes=tuple(MODES)) -> dict:
    out = {}
    for mode in modes:
        cfg = apply_overrides(load_config(str(REPO / "config/sdf_ddad_tiny.py")), MODES[mode])
        ftz = flush_denormals(fdl.build(cfg.train).flush_denormal)  # as the training loop does
        torch.manual_seed(0)
        exp = fdl.build(cfg)
        model = exp.model.to(device)
        batch = collate_frames([exp.train_data[0]]).to(device)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        V = batch.images.shape[2]
        rays_per_step = V * model.rays_hw[0] * model.rays_hw[1]
        model.train()

        def step():
            loss = model(batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        step()  # warm-up (and the cached lifting / search of a frozen encoder)
        _sync(device)
        tic = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(device)
        step_s = (time.perf_counter() - tic) / steps
        model.eval()
        K = scale_intrinsics(batch.K[:, 0], tuple(batch.images.shape[-2:]), eval_hw)
        with torch.no_grad():
            model.render_depth(batch, K[:, :1], batch.T_ego_cam[:, 0, :1], 8, 8)
            _sync(device)
            tic = time.perf_counter()
            model.render_depth(batch, K, batch.T_ego_cam[:, 0], *eval_hw)
            _sync(device)
            eval_s = time.perf_counter() - tic
        eval_rays = V * eval_hw[0] * eval_hw[1]
        rate = eval_rays / eval_s
        out[mode] = {
            "samples_per_ray_train": model.renderer.num_samples,
            "train_rays_per_step": rays_per_step,
            "train_seconds_per_step": round(step_s, 3),
            "train_rays_per_s": round(rays_per_step / step_s, 1),
            "eval_hw": list(eval_hw),
            "eval_rays_per_s": round(rate, 1),
            "eval_seconds_per_450x800_image": round(450 * 800 / rate, 2),
            "threads": torch.get_num_threads(),
            "flush_denormal": ftz,
        }
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args(argv)
    print(json.dumps(run(args.device, args.steps), indent=1))


if __name__ == "__main__":
    main()
