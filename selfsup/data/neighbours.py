"""Which neighbouring frames a sample carries: fixed offsets, a seeded random draw, or given frames.

GaussianFlowOcc renders each training sample at the current frame plus 6 frames drawn at
random (without replacement) from the *valid* frames at offsets -6..6 of the same scene
(``GaussianFlowOcc_GeneratePseudoLabelsHorizon``: ``np.random.choice(valid, 6,
replace=False)``). :class:`RandomNeighbours` is that draw, made reproducible and resumable:
the offsets are a pure function of (``seed``, dataset index, draw number), and the draw
number is the sample's global position in the step-indexed data order
(:class:`selfsup.training.sampler.StepBatchSampler` yields :class:`DrawIndex` values that
carry it), so a resumed run draws exactly what the uninterrupted run would have, and every
epoch draws afresh. A plain ``int`` index (evaluation, a DataLoader without our sampler)
uses draw 0: the same frames every time.

Datasets accept ``neighbours=`` either a tuple of offsets (the old behaviour), a
:class:`RandomNeighbours`, or (DDAD only) :class:`TargetFrames`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


class DrawIndex(int):
    """A dataset index that also carries a draw number for the dataset's random choices.

    Behaves as the ``int`` index everywhere (indexing, hashing, equality); ``draw`` is the
    sample's global position in the training data order.
    """

    draw: int

    def __new__(cls, index: int, draw: int) -> "DrawIndex":
        obj = super().__new__(cls, index)
        obj.draw = int(draw)
        return obj

    def __getnewargs__(self) -> tuple[int, int]:  # pickling into DataLoader workers
        return int(self), self.draw

    def __repr__(self) -> str:
        return f"DrawIndex({int(self)}, draw={self.draw})"


def draw_of(index) -> int:
    """The draw number of a dataset index (0 for a plain ``int``)."""
    return getattr(index, "draw", 0)


@dataclass(frozen=True)
class RandomNeighbours:
    """Draw ``num`` distinct valid neighbour offsets from ``window`` for every sample.

    Args:
        window: (first, last) offset, inclusive, e.g. (-6, 6) (GaussianFlowOcc); 0 (the
            current frame, always frame 0 of a sample) is never drawn.
        num: offsets per sample (GaussianFlowOcc: 6). Samples with fewer valid offsets in
            the window are not indexed by the dataset, so every sample has ``1 + num``
            frames and batches collate; nothing is ever duplicated or clamped.
        seed: seeds the draw (combined with the dataset index and the draw number).

    Raises:
        ValueError: ``num < 1`` or an empty window.
    """

    window: tuple[int, int] = (-6, 6)
    num: int = 6
    seed: int = 0

    def __post_init__(self):
        lo, hi = self.window
        if self.num < 1:
            raise ValueError(f"RandomNeighbours: num must be >= 1, got {self.num}")
        if lo > hi or (lo == 0 and hi == 0):
            raise ValueError(f"RandomNeighbours: window must be (first, last) offsets with first <= last, got {self.window}")

    def candidates(self, valid: Callable[[int], bool]) -> list[int]:
        """Offsets of the window (0 excluded) for which ``valid(offset)`` holds, ascending."""
        lo, hi = self.window
        return [o for o in range(lo, hi + 1) if o != 0 and valid(o)]

    def choose(self, candidates: list[int], index: int, draw: int) -> tuple[int, ...]:
        """``num`` of ``candidates`` without replacement, ascending; a pure function of
        (``seed``, ``index``, ``draw``).

        Raises:
            ValueError: fewer than ``num`` candidates.
        """
        if len(candidates) < self.num:
            raise ValueError(
                f"RandomNeighbours: sample {index} has {len(candidates)} valid neighbours {candidates} in "
                f"window {self.window}, needs {self.num}"
            )
        mixed = ((self.seed * 1_000_003 + int(index)) * 1_000_033 + int(draw)) % (2**63 - 1)
        g = torch.Generator().manual_seed(mixed)
        pick = torch.randperm(len(candidates), generator=g)[: self.num]
        return tuple(sorted(candidates[int(i)] for i in pick))


@dataclass(frozen=True)
class TargetFrames:
    """Neighbours given as absolute sample indices of the scene (time order), e.g. a
    held-out frame to score novel views at: ``TargetFrames((1,))`` with
    ``current_frames=(0, 2)`` renders frames 0 and 2's scenes at frame 1's cameras.

    Raises:
        ValueError: no frames given.
    """

    frames: tuple[int, ...]

    def __post_init__(self):
        if not self.frames:
            raise ValueError("TargetFrames: give at least one frame index")
