"""scripts/bench_sdf.py runs every field mode on the demo config (a config change that breaks
one of them, like the grid-only prior pull did for the per-sample decoder, fails here)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))


@pytest.mark.slow
def test_every_benchmark_mode_trains_and_renders():
    import bench_sdf

    out = bench_sdf.run(steps=1, eval_hw=(8, 12))
    assert set(out) == set(bench_sdf.MODES)
    for mode, r in out.items():
        assert r["train_rays_per_s"] > 0 and r["eval_rays_per_s"] > 0, mode
