"""Datasets yielding :class:`selfsup.data.frames.Frames` (nuScenes, DDAD)."""
