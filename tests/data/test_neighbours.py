"""Neighbour-frame choice: seeded random draws of valid frames (no clamped duplicates),
resumable through the step sampler, held-out frames, and the dataset cache keyed by them."""

from __future__ import annotations

import pickle

import pytest
import torch

from selfsup.data.cache import CachedDataset
from selfsup.data.ddad import DDADFrames
from selfsup.data.neighbours import DrawIndex, RandomNeighbours, TargetFrames
from selfsup.data.nuscenes import NuScenesFrames
from selfsup.training.sampler import StepBatchSampler


def ddad(samples_root, **kw) -> DDADFrames:
    args = dict(scene="scene_02", cameras=("CAMERA_01",), image_hw=(14, 24), load_lidar=False)
    args.update(kw)
    return DDADFrames(str(samples_root / "ddad" / "test_scene"), **args)


def test_random_draw_is_distinct_sorted_valid_and_a_pure_function():
    spec = RandomNeighbours(window=(-6, 6), num=6, seed=3)
    cands = spec.candidates(lambda o: -2 <= o <= 6)  # two frames before the current one exist
    assert cands == [-2, -1, 1, 2, 3, 4, 5, 6]
    draws = [spec.choose(cands, index=7, draw=d) for d in range(40)]
    for d in draws:
        assert len(set(d)) == 6 and list(d) == sorted(d) and set(d) <= set(cands) and 0 not in d
    assert draws[5] == spec.choose(cands, index=7, draw=5)  # reproducible
    assert len(set(draws)) > 10  # and different per draw (28 possible subsets)
    assert spec.choose(cands, 7, 5) != RandomNeighbours((-6, 6), 6, seed=4).choose(cands, 7, 5) or \
        spec.choose(cands, 7, 6) != RandomNeighbours((-6, 6), 6, seed=4).choose(cands, 7, 6)
    # every candidate is drawn at about the same rate (6 / 8 of the draws)
    counts = torch.tensor([[o in spec.choose(cands, 0, d) for o in cands] for d in range(400)]).float().mean(0)
    assert ((counts - 0.75).abs() < 0.1).all()
    with pytest.raises(ValueError, match="needs 6"):
        spec.choose(cands[:5], 0, 0)
    with pytest.raises(ValueError, match="num"):
        RandomNeighbours(num=0)


def test_draw_index_is_an_int_that_pickles():
    i = DrawIndex(4, draw=17)
    assert i == 4 and hash(i) == hash(4) and [10, 11, 12, 13, 14][i] == 14
    j = pickle.loads(pickle.dumps(i))
    assert j == 4 and j.draw == 17


def test_ddad_random_neighbours_never_repeat_frames(samples_root):
    # scene_02 has 3 samples: every one has exactly 2 valid frames in -6..6.
    ds = ddad(samples_root, neighbours=RandomNeighbours(window=(-6, 6), num=2, seed=0))
    assert len(ds) == 3
    assert [ds.neighbour_offsets(i) for i in range(3)] == [(1, 2), (-1, 1), (-2, -1)]
    sample = ds[DrawIndex(0, draw=5)]
    assert sample.frame_offsets.tolist() == [0, 1, 2]
    assert len(set(sample.timestamps.tolist())) == 3  # three distinct frames, no clamped repeat
    with pytest.raises(ValueError, match="no DDAD sample"):
        ddad(samples_root, neighbours=RandomNeighbours(window=(-6, 6), num=3))
    one = ddad(samples_root, neighbours=RandomNeighbours(window=(-6, 6), num=1, seed=0))
    drawn = {one.neighbour_offsets(DrawIndex(1, d)) for d in range(30)}
    assert drawn == {(-1,), (1,)}  # the middle sample sees both of its neighbours over the draws


def test_held_out_frame_protocol(samples_root):
    train = ddad(samples_root, current_frames=(0, 2), exclude_frames=(1,),
                 neighbours=RandomNeighbours(window=(-2, 2), num=1))  # fmt: skip
    assert train.items == [("scene_02", 0), ("scene_02", 2)]
    assert [train.neighbour_offsets(i) for i in range(2)] == [(2,), (-2,)]
    frames = train.scenes["scene_02"]
    held_out_time = frames[1]["time_us"] / 1e6
    for i in range(2):
        stamps = train[DrawIndex(i, draw=3)].timestamps.tolist()
        assert held_out_time not in stamps and len(stamps) == 2
    score = ddad(samples_root, current_frames=(0, 2), neighbours=TargetFrames((1,)))
    assert [score.neighbour_offsets(i) for i in range(2)] == [(1,), (-1,)]
    assert score[0].timestamps[1].item() == held_out_time
    with pytest.raises(ValueError, match="exclude_frames"):
        ddad(samples_root, exclude_frames=(1,), allow_missing_neighbours=True)


def test_draws_follow_the_step_sampler_and_resume_exactly(samples_root):
    ds = ddad(samples_root, neighbours=RandomNeighbours(window=(-6, 6), num=1, seed=0))
    full = [[(int(i), ds.neighbour_offsets(i)) for i in batch] for batch in StepBatchSampler(3, 2, steps=12, seed=1)]
    resumed = [[(int(i), ds.neighbour_offsets(i)) for i in batch]
               for batch in StepBatchSampler(3, 2, steps=12, start_step=7, seed=1)]  # fmt: skip
    assert resumed == full[7:]
    middle = {offs for batch in full for i, offs in batch if i == 1}
    assert middle == {(-1,), (1,)}  # the draw changes from epoch to epoch


def test_cache_keys_samples_by_their_neighbours(samples_root):
    ds = CachedDataset(ddad(samples_root, neighbours=RandomNeighbours(window=(-6, 6), num=1, seed=0)))
    seen = {}
    for d in range(12):
        s = ds[DrawIndex(1, d)]
        seen[tuple(s.frame_offsets.tolist())] = s
    assert set(seen) == {(0, -1), (0, 1)}
    assert len(ds._cache) == 2


def test_nuscenes_random_neighbours_need_enough_valid_frames(samples_root):
    # The bundled nuScenes root has one keyframe per scene: no sample has a valid neighbour.
    with pytest.raises(ValueError, match="no nuScenes sample"):
        NuScenesFrames(str(samples_root / "nuscenes"), version="v1.0-mini", split="all", load_lidar=False,
                       neighbours=RandomNeighbours(window=(-6, 6), num=1))  # fmt: skip
