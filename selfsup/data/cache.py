"""Keep decoded samples in memory: for tiny datasets trained for many steps (the demo)."""

from __future__ import annotations

from torch.utils.data import Dataset

from selfsup.data.frames import Frames


class CachedDataset(Dataset):
    """Wrap a dataset and keep each sample after its first load (decoding a 3-frame,
    6-camera DDAD sample at 1936 x 1216 takes about a second on one core).

    Only for datasets small enough to hold in memory, read with ``num_workers=0``
    (worker processes would each fill their own cache). Samples are returned as stored,
    so callers must not modify them in place.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self._cache: dict = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Frames:
        # A dataset whose samples vary with the draw (random neighbours) names what a
        # sample is: (index, neighbour offsets), a finite set for a tiny dataset.
        key = self.dataset.cache_key(index) if hasattr(self.dataset, "cache_key") else int(index)
        if key not in self._cache:
            self._cache[key] = self.dataset[index]
        return self._cache[key]

    def __getattr__(self, name):
        # Delegate dataset attributes (cameras, index_of, ...) to the wrapped dataset.
        if name in ("dataset", "_cache"):
            raise AttributeError(name)
        return getattr(self.dataset, name)
