"""Every model trains under bf16 autocast (what accelerate's mixed_precision="bf16" does on a
GPU): one forward + backward of each tiny config under ``torch.autocast("cpu", torch.bfloat16)``
with finite loss and gradients. Renderers, NeuS alpha and the voxelizer run in float32 inside
the autocast region (``render.precision``)."""

from __future__ import annotations

from pathlib import Path

import fiddle as fdl
import pytest
import torch

from selfsup.data.frames import collate_frames
from selfsup.training.config import apply_overrides, load_config

REPO = Path(__file__).resolve().parents[2]

SDF_TINY = [
    "train_data.dataset.image_hw=(48,88)", "model.encoder.out_channels=16", "model.representation.resolution=(24,24,4)",
    "model.representation.feat_channels=16", "model.representation.plane_channels=8", "model.representation.hidden=16",
    "model.renderer.num_samples=8", "model.rays_hw=(6,8)",
]  # fmt: skip
GAUSSIAN_TINY = [
    "train_data.dataset.image_hw=(48,88)", "model.decoder.num_gaussians=64", "model.render_hw=(12,22)",
]  # fmt: skip
BEV_TINY = [
    "train_data.dataset.image_hw=(48,88)", "model.encoder.out_channels=16", "model.lift.in_channels=16",
    "model.lift.out_channels=4", "model.bev_encoder.in_channels=4", "model.bev_encoder.channels=(4,8,8)",
    "model.bev_encoder.out_channels=4", "model.head.in_channels=4", "model.head.hidden=4",
]  # fmt: skip
# One entry per tiny config: a new tiny config must be added here (checked below).
TINY_CONFIGS = {
    "bev_tiny.py": BEV_TINY,
    "gaussian_ddad_tiny.py": GAUSSIAN_TINY,
    "sdf_ddad_tiny.py": SDF_TINY,
    "sdf_ddad_tiny_lidar.py": SDF_TINY,
    "sdf_ddad_tiny_tall.py": SDF_TINY,
}


# Variants of a covered config that need generated files (same model class as their base).
NEEDS_GENERATED_FILES = {"gaussian_ddad_tiny_pseudo.py", "sdf_ddad_tiny_keypoints.py"}  # pseudo-label folders (tests/pseudo generates them)


def test_every_tiny_config_is_covered():
    found = {p.name for p in (REPO / "config").glob("*tiny*.py")} - NEEDS_GENERATED_FILES
    assert found == set(TINY_CONFIGS), f"add the new tiny configs to TINY_CONFIGS: {sorted(found - set(TINY_CONFIGS))}"


@pytest.fixture(scope="module")
def batches():
    cache = {}

    def get(cfg):
        key = repr(cfg.train_data)
        if key not in cache:
            cache[key] = collate_frames([fdl.build(cfg.train_data)[0]])
        return cache[key]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_forward_backward_under_bf16_autocast(name, batches):
    cfg = apply_overrides(load_config(REPO / "config" / name), TINY_CONFIGS[name])
    torch.manual_seed(0)
    model = fdl.build(cfg.model)
    model.train()
    batch = batches(cfg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch)
    assert torch.isfinite(out.loss), out.terms
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(g is None or torch.isfinite(g).all() for g in grads)
    # The autocast region really was bf16 for the networks (so the test tests something).
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert y.dtype == torch.bfloat16
