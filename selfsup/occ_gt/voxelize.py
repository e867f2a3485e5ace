"""Voxel labels from labelled points, and an optional densification.

Voxel label = the majority class of the labelled points inside it (ties: the smaller class
id); a voxel holding only unlabelled points (label 255, e.g. DDAD / nuScenes points outside
every box) gets ``unlabelled_class`` (default 0, ``others``): it is occupied, so the
geometric IoU counts it, and its class is honest about knowing nothing. Voxels without a
point are free (17).
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Bool, Float, Int64, UInt8

from selfsup.constants import NUM_SEMANTIC_CLASSES, OCC3D_FREE
from selfsup.grid import OCC3D_GRID, VoxelGrid
from selfsup.occ_gt.sources import UNLABELLED

NUM_SEMANTIC = NUM_SEMANTIC_CLASSES  # Occ3D classes 0-16


def voxel_index(
    xyz: Float[np.ndarray, "N 3"], grid: VoxelGrid = OCC3D_GRID
) -> tuple[Int64[np.ndarray, "N 3"], Bool[np.ndarray, "N"]]:
    """Integer voxel index [x, y, z] of each point (floor((p - lower) / size)) and whether it
    lies inside the grid (lower bound included, upper excluded)."""
    idx = np.floor((np.asarray(xyz, np.float64) - np.asarray(grid.lower)) / grid.voxel_size).astype(np.int64)
    inside = np.all((idx >= 0) & (idx < np.asarray(grid.shape)), axis=1)
    return idx, inside


def voxel_labels(
    xyz: Float[np.ndarray, "N 3"],
    labels: UInt8[np.ndarray, "N"],
    grid: VoxelGrid = OCC3D_GRID,
    unlabelled_class: int = 0,
) -> UInt8[np.ndarray, "X Y Z"]:
    """Occ3D semantics [X, Y, Z] (0-16, 17 free) by majority vote of the points per voxel.

    Raises:
        ValueError: labels outside 0..16 and 255, mismatched lengths, a bad unlabelled_class.
    """
    labels = np.asarray(labels)
    if labels.shape != (xyz.shape[0],):
        raise ValueError(f"labels shape {labels.shape} does not match {xyz.shape[0]} points")
    bad = (labels > 16) & (labels != UNLABELLED)
    if bad.any():
        raise ValueError(f"point labels must be Occ3D classes 0..16 or {UNLABELLED}, got {np.unique(labels[bad])}")
    if not 0 <= unlabelled_class <= 16:
        raise ValueError(f"unlabelled_class must be an Occ3D class 0..16, got {unlabelled_class}")
    shape = grid.shape
    idx, inside = voxel_index(xyz, grid)
    flat = np.ravel_multi_index(tuple(idx[inside].T), shape)
    lab = labels[inside].astype(np.int64)
    sem = np.full(int(np.prod(shape)), OCC3D_FREE, np.uint8)
    occupied = np.unique(flat)
    sem[occupied] = unlabelled_class
    known = lab != UNLABELLED
    if known.any():
        cells, inv = np.unique(flat[known], return_inverse=True)
        counts = np.zeros((cells.size, NUM_SEMANTIC), np.int64)
        np.add.at(counts, (inv, lab[known]), 1)
        sem[cells] = counts.argmax(axis=1).astype(np.uint8)  # argmax: first (smallest) class on ties
    return sem.reshape(shape)


def densify(
    semantics: UInt8[np.ndarray, "X Y Z"],
    observed_free: Bool[np.ndarray, "X Y Z"],
    iterations: int = 1,
    min_neighbours: int = 4,
) -> UInt8[np.ndarray, "X Y Z"]:
    """Optional hole filling (off by default in the generator): a free voxel that no LiDAR ray
    crossed (``observed_free`` False) and that has at least ``min_neighbours`` occupied
    voxels among its 6 face neighbours becomes occupied with their majority class; repeated
    ``iterations`` times. Observed free space is never filled, so it cannot grow objects into
    space a beam went through; it closes gaps between sparse LiDAR rings on walls and ground.
    """
    sem = semantics.copy()
    for _ in range(iterations):
        occ = sem != OCC3D_FREE
        counts = np.zeros(sem.shape + (NUM_SEMANTIC,), np.int16)
        n_occ = np.zeros(sem.shape, np.int16)
        for axis in range(3):
            for shift in (1, -1):
                rolled = np.roll(sem, shift, axis=axis)
                valid = np.ones(sem.shape, bool)
                edge = [slice(None)] * 3
                edge[axis] = 0 if shift == 1 else -1
                valid[tuple(edge)] = False  # no wrap-around
                nb_occ = (rolled != OCC3D_FREE) & valid
                n_occ += nb_occ
                xs = np.nonzero(nb_occ)
                np.add.at(counts, xs + (rolled[xs].astype(np.int64),), 1)
        fill = ~occ & ~observed_free & (n_occ >= min_neighbours)
        if not fill.any():
            break
        sem[fill] = counts[fill].argmax(axis=1).astype(np.uint8)
    return sem
