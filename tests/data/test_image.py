"""ResizeCrop: pixel convention checked against PIL's own resampling of a linear ramp."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from selfsup.data.image import ResizeCrop


def _ramp(h: int, w: int) -> Image.Image:
    """Mode-F image whose value is the source column index u (a ramp survives bilinear resizing)."""
    return Image.fromarray(np.tile(np.arange(w, dtype=np.float32), (h, 1)), mode="F")


def test_gaussianflowocc_plan():
    t = ResizeCrop.plan((900, 1600), (256, 704), resize_scale=0.44)
    assert t.resized_hw == (396, 704) and t.top == 140 and t.left == 0 and t.out_hw == (256, 704)


def test_intrinsics_follow_the_resampled_pixels():
    """Project a 3D point with K and K': the output pixel must show the source pixel."""
    K = np.array([[1266.4, 0.0, 816.3], [0.0, 1266.4, 491.5], [0.0, 0.0, 1.0]])
    t = ResizeCrop.plan((900, 1600), (200, 320), resize_scale=0.25, crop_top=10)  # 225x400 -> 200x320
    assert (t.top, t.left) == (10, 40)
    cols = np.asarray(t.image(_ramp(900, 1600)))
    rows = np.asarray(t.image(_ramp(1600, 900).transpose(Image.Transpose.TRANSPOSE)))
    K2 = t.intrinsics(K)
    rng = np.random.default_rng(0)
    for _ in range(20):
        X = np.array([rng.uniform(-3, 3), rng.uniform(-1, 2), rng.uniform(5, 30)])
        u, v, _ = K @ X / X[2]
        u2, v2, _ = K2 @ X / X[2]
        # K' is in the continuous convention: pixel j spans [j, j + 1), centre j + 0.5.
        i, j = int(np.floor(v2)), int(np.floor(u2))
        if not (2 <= i < 198 and 2 <= j < 318):
            continue
        # The ramp is linear, so its value at the rounded pixel plus the sub-pixel slope is u.
        assert cols[i, j] + (u2 - j - 0.5) * 4 == pytest.approx(u, abs=0.05)
        assert rows[i, j] + (v2 - i - 0.5) * 4 == pytest.approx(v, abs=0.05)


def test_identity_and_errors():
    t = ResizeCrop.plan((900, 1600))
    # no resize: only the half-pixel shift from calibration (integer centres) to continuous coordinates
    assert t.is_identity and np.allclose(t.intrinsics(np.eye(3)), [[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    with pytest.raises(ValueError, match="smaller than image_hw"):
        ResizeCrop.plan((900, 1600), (500, 704), resize_scale=0.44)
    with pytest.raises(ValueError, match="crop_top"):
        ResizeCrop.plan((900, 1600), (256, 704), resize_scale=0.44, crop_top=141)
