"""Temporal alignment by ego motion (known translations / rotations), BEVDet4D fusion and
the history buffer's scene-start reset."""

from __future__ import annotations

import math

import pytest
import torch

from selfsup.grid import VoxelGrid
from selfsup.representations.temporal import HistoryBuffer, TemporalConcatFusion, warp_to_current

GRID = VoxelGrid(lower=(-4.0, -4.0, -1.0), upper=(4.0, 4.0, 1.4), voxel_size=0.4)  # 20 x 20 x 6


def pose(yaw: float = 0.0, t=(0.0, 0.0, 0.0)) -> torch.Tensor:
    c, s = math.cos(yaw), math.sin(yaw)
    T = torch.eye(4)
    T[:3, :3] = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    T[:3, 3] = torch.tensor(t)
    return T


def hot(ix: int, iy: int, iz: int | None = None) -> torch.Tensor:
    x = torch.zeros(1, 1, 20, 20, *(() if iz is None else (6,)))
    if iz is None:
        x[0, 0, ix, iy] = 1.0
    else:
        x[0, 0, ix, iy, iz] = 1.0
    return x


def test_identity_warp_is_exact():
    x = torch.randn(1, 3, 20, 20)
    torch.testing.assert_close(warp_to_current(x, torch.eye(4)[None], GRID), x)


def test_translation_moves_static_features_back():
    # The ego drove 1.2 m forward from frame t to frame 0: T_ego0_ego_t translates by -1.2 m,
    # a static cell at x index 15 in frame t sits 3 cells closer (index 12) now.
    T = pose(t=(-1.2, 0.0, 0.0))[None]
    out = warp_to_current(hot(15, 7), T, GRID)
    assert out[0, 0].argmax().item() == 12 * 20 + 7
    torch.testing.assert_close(out.sum(), torch.tensor(1.0))
    vol = warp_to_current(hot(15, 7, 2), pose(t=(-1.2, 0.8, 0.4))[None], GRID)
    assert (vol[0, 0] == vol[0, 0].max()).nonzero().tolist() == [[12, 9, 3]]


def test_rotation_by_ninety_degrees():
    # Frame 0 is frame t rotated by +90 deg about z: a point at (+2.2, 0.2) in frame t lands
    # at (-0.2, +2.2) in frame 0, i.e. cell (15, 10) -> (9, 15).
    out = warp_to_current(hot(15, 10), pose(yaw=math.pi / 2)[None], GRID, mode="nearest")
    assert (out[0, 0] == 1).nonzero().tolist() == [[9, 15]]
    # cells that come from outside the grid read zeros
    shifted = warp_to_current(torch.ones(1, 1, 20, 20), pose(t=(-2.0, 0.0, 0.0))[None], GRID)
    assert float(shifted[0, 0, -1].max()) == 0.0 and float(shifted[0, 0, 0].min()) == 1.0


def test_concat_fusion_shapes_and_count_check():
    fuse = TemporalConcatFusion(4, num_history=2, dim=3)
    out = fuse(torch.randn(1, 4, 20, 20, 6), [torch.randn(1, 4, 20, 20, 6)] * 2)
    assert out.shape == (1, 4, 20, 20, 6)
    with pytest.raises(ValueError, match="history"):
        fuse(torch.randn(1, 4, 20, 20, 6), [])
    assert TemporalConcatFusion(4, 0)(x := torch.randn(1, 4, 20, 20), []) is x


def test_history_buffer_resets_at_scene_start():
    buf = HistoryBuffer(num_history=2, grid=GRID)
    f0 = hot(10, 10)[0][None]
    (h1, h2) = buf.step(f0, torch.eye(4)[None], ["a"])
    torch.testing.assert_close(h1, f0)  # first frame: history refilled with itself
    torch.testing.assert_close(h2, f0)
    f1 = hot(5, 5)
    (h1, h2) = buf.step(f1, pose(t=(1.2, 0.0, 0.0))[None], ["a"])  # ego moved 1.2 m forward
    assert h1[0, 0].argmax().item() == 7 * 20 + 10  # previous frame's cell, 3 cells closer
    f2 = hot(3, 3)
    (h1, h2) = buf.step(f2, pose(t=(50.0, 0.0, 0.0))[None], ["b"])  # a new scene
    torch.testing.assert_close(h1, f2)
    torch.testing.assert_close(h2, f2)
