"""The training configs consume generated pseudo labels: a tiny Gaussian run on the bundled
DDAD scene with LiDAR-accumulated pseudo depth and (tiny random) Mask2Former semantics."""

from __future__ import annotations

import math

import fiddle as fdl
import pytest

from tests.pseudo.conftest import DDAD, REPO, run_cli

CAMS = ("CAMERA_01", "CAMERA_05")


@pytest.mark.slow
def test_gaussian_pseudo_config_trains_on_generated_labels(tiny_models, tmp_path):
    from selfsup.training.config import apply_overrides, load_config
    from selfsup.training.loop import train

    dep, sem = tmp_path / "dep", tmp_path / "sem"
    base = ("--data-root", DDAD, "--scenes", "scene_02", "--cameras", *CAMS)
    assert run_cli("depth", *base, "--out-dir", dep, "--backend", "lidar", "--accumulate", "1",
                   "--out-scale", "0.25")["written"] == 3
    assert run_cli("semantic", *base, "--out-dir", sem, "--backend", "segmenter", "--checkpoint",
                   tiny_models["mask2former"], "--out-scale", "0.0625")["written"] == 3
    cfg = load_config(REPO / "config/gaussian_ddad_tiny_pseudo.py")
    apply_overrides(cfg, [
        f"train_data.dataset.pseudo_depth_dir={dep}", f"train_data.dataset.pseudo_semantic_dir={sem}",
        f"train_data.dataset.cameras={CAMS}", "train_data.dataset.image_hw=(32,56)", "model.render_hw=(8,14)",
        "model.encoder.out_channels=16", "model.decoder.num_gaussians=64", "model.decoder.embed_dims=16",
        "model.decoder.feat_channels=16", "model.decoder.num_blocks=1", "model.decoder.num_heads=2",
        "model.decoder.num_inducing=8", "model.flow.embed_dims=16", "model.flow.hidden_dims=16",
        "train.steps=3", "train.log_every=1", "train.ckpt_every=0", "train.image_every=0",
    ])
    # the base config trains on frames 0 and 2 with one drawn neighbour each: 2 frames per sample
    assert fdl.build(cfg.train_data)[0].depth_maps.shape[:3] == (2, 2, 32)
    summary = train(cfg, tmp_path / "work")
    last = summary["history"][-1]
    assert math.isfinite(last["loss/depth"]) and last["loss/depth"] > 0
    assert math.isfinite(last["loss/semantic"]) and last["loss/semantic"] > 0
