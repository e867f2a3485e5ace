"""PNG encodings, atomic writes and the reader used by the datasets."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from selfsup.data.image import ResizeCrop
from selfsup.pseudo import storage


def test_depth_roundtrip_within_half_step():
    d = np.array([[0.0, -1.0, np.nan, np.inf], [0.001, 1.0, 79.99, 255.99], [256.1, 3.14159, 0.5, 40.0]])
    back = storage.decode_depth(storage.encode_depth(d))
    ok = np.isfinite(d) & (d > 0) & (d <= storage.DEPTH_MAX)
    assert np.all(back[~ok] == 0)
    step = 1 / storage.DEPTH_SCALE
    big = ok & (d >= step)
    assert np.abs(back[big] - d[big]).max() <= 0.5 * step + 1e-6
    assert back[1, 0] == np.float32(step)  # 1 mm is stored as one step, not as "no depth"


def test_semantic_roundtrip():
    lab = np.array([[0, 16, 255, -1], [7, 17, 3, 200]])
    back = storage.decode_semantic(storage.encode_semantic(lab))
    assert back.tolist() == [[0, 16, 255, 255], [7, 255, 3, 255]]


def test_atomic_png_write_and_read(tmp_path):
    arr = (np.arange(12 * 20).reshape(12, 20) * 250).astype(np.uint16)
    path = tmp_path / "a" / "CAM.png"
    n = storage.write_png_atomic(path, arr)
    assert n == path.stat().st_size
    assert not [p for p in path.parent.iterdir() if p.name.endswith(storage.TMP_SUFFIX)]
    np.testing.assert_array_equal(storage.read_png(path, np.uint16), arr)
    with pytest.raises(ValueError, match="expected uint8"):
        storage.read_png(path, np.uint8)
    path.write_bytes(path.read_bytes()[:40])  # truncated
    with pytest.raises(ValueError, match="CAM.png"):
        storage.read_png(path, np.uint16)
    with pytest.raises(FileNotFoundError, match="nope.png"):
        storage.read_png(tmp_path / "nope.png", np.uint16)


def _manifest(kind, hw, cams):
    return dict(format=storage.FORMAT, kind=kind, cameras=list(cams), image_hw=list(hw),
                class_names=["c"] * 17 if kind == "semantic" else None)


def test_reader_upsamples_reduced_maps_and_transform_matches_images(tmp_path):
    cams = ("A", "B")
    storage.write_manifest(tmp_path, _manifest("semantic", (3, 4), cams))
    small = np.array([[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 16]])
    for c in cams:
        storage.write_png_atomic(storage.camera_path(tmp_path, "sc", "sc/123", c), storage.encode_semantic(small))
    assert (tmp_path / "sc" / "sc__123" / "A.png").is_file()
    reader = storage.PseudoLabelReader(tmp_path, "semantic")
    full = reader.read("sc", "sc/123", cams, (6, 8))
    np.testing.assert_array_equal(full[0], np.repeat(np.repeat(small, 2, 0), 2, 1))
    t = ResizeCrop.plan((6, 8), (2, 4))  # scale 0.5, crop 1 row off the top
    out = storage.load_transformed(reader, "sc", "sc/123", cams, t)
    expect = np.asarray(t.mask(Image.fromarray(full[1].astype(np.uint8))))
    np.testing.assert_array_equal(out[1], expect)
    assert out.dtype == np.int16
    with pytest.raises(ValueError, match="holds semantic labels, expected depth"):
        storage.PseudoLabelReader(tmp_path, "depth")
    with pytest.raises(FileNotFoundError, match="C.png"):
        reader.read("sc", "sc/123", ("C",), (6, 8))
