"""On-disk format of generated pseudo labels: one PNG per camera, plus ``manifest.json``.

Layout (``out_dir`` is what a dataset's ``pseudo_depth_dir`` / ``pseudo_semantic_dir`` points at)::

    out_dir/manifest.json                               what produced the files (see below)
    out_dir/{scene_name}/{sample_key}/{CAMERA}.png      one file per camera of every sample

``sample_key`` is the sample token with ``/`` replaced by ``__`` (DDAD sample ids are
``scene/time_us``). A sample is *complete* when every camera's PNG exists; each PNG is
written to a temporary file in the same folder and renamed (``os.replace``), so a final
name never holds a half-written file, whatever kills the writer.

Encodings:
    depth: 16-bit greyscale PNG, ``round(depth_m * 256)`` (camera z; 1/256 m = 3.9 mm
        steps up to 255.996 m), 0 = no depth. Depths beyond the range are written as 0.
    semantic: 8-bit greyscale PNG, ``class_id + 1`` (Occ3D 0-16 -> 1-17), 0 = unlabelled.

Maps may be stored at a reduced resolution (``manifest["image_hw"]`` per camera); readers
resize them (nearest) to the camera's image size before any training resize / crop.

``manifest.json`` fields: ``format`` (:data:`FORMAT`), ``kind`` ("depth" / "semantic"),
``backend``, ``backend_config``, ``checkpoint`` (path) and ``checkpoint_sha256`` (hash of
its weight and config files, or None), ``depth_scale`` (256, depth), ``class_names``
(semantic, index = class id), ``encoding``, ``cameras`` (camera order), ``source_hw`` and
``image_hw`` (per camera, rows x cols), ``dataset`` (type, root, version, split, scenes),
``code_version`` (git commit of the generator, or the package version).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from selfsup.constants import SEMANTIC_UNLABELLED  # in memory; stored as 0
from selfsup.io import atomic_path

FORMAT = "selfsup-pseudo-png-1"
MANIFEST = "manifest.json"
DEPTH_SCALE = 256.0  # PNG value per metre
DEPTH_MAX = 65535 / DEPTH_SCALE  # metres; larger depths are stored as 0 (unknown)
KINDS = ("depth", "semantic")
TMP_SUFFIX = ".tmp"


def sample_key(token: str) -> str:
    """File-system name of a sample token (``/`` -> ``__``)."""
    return str(token).replace("/", "__")


def sample_dir(out_dir: str | os.PathLike, scene_name: str, token: str) -> Path:
    return Path(out_dir) / str(scene_name) / sample_key(token)


def camera_path(out_dir: str | os.PathLike, scene_name: str, token: str, camera: str) -> Path:
    return sample_dir(out_dir, scene_name, token) / f"{camera}.png"


def encode_depth(depth_m: np.ndarray) -> np.ndarray:
    """float depth ``[H, W]`` in metres (<= 0, NaN, inf or > :data:`DEPTH_MAX` = unknown) -> uint16."""
    d = np.asarray(depth_m, dtype=np.float64)
    ok = np.isfinite(d) & (d > 0) & (d <= DEPTH_MAX)
    out = np.zeros(d.shape, dtype=np.uint16)
    out[ok] = np.clip(np.rint(d[ok] * DEPTH_SCALE), 1, 65535).astype(np.uint16)
    return out


def decode_depth(png: np.ndarray) -> np.ndarray:
    """uint16 PNG values -> float32 metres (0 = unknown)."""
    return png.astype(np.float32) / np.float32(DEPTH_SCALE)


def encode_semantic(labels: np.ndarray, num_classes: int = 17) -> np.ndarray:
    """int class ids ``[H, W]`` (0..num_classes-1; anything else = unlabelled) -> uint8 id + 1."""
    lab = np.asarray(labels).astype(np.int64)
    ok = (lab >= 0) & (lab < num_classes)
    out = np.zeros(lab.shape, dtype=np.uint8)
    out[ok] = (lab[ok] + 1).astype(np.uint8)
    return out


def decode_semantic(png: np.ndarray) -> np.ndarray:
    """uint8 PNG values -> int16 class ids, :data:`SEMANTIC_UNLABELLED` where 0."""
    v = png.astype(np.int16)
    return np.where(v > 0, v - 1, SEMANTIC_UNLABELLED).astype(np.int16)


def write_png_atomic(path: str | os.PathLike, array: np.ndarray) -> int:
    """Write a uint8 / uint16 ``[H, W]`` array as a greyscale PNG atomically; returns bytes written.

    The PNG goes to ``.{name}.<random>.tmp`` in the same folder, is fsync'ed and then renamed
    over ``path``, so ``path`` is either absent or complete.
    """
    path = Path(path)
    if array.dtype not in (np.uint8, np.uint16) or array.ndim != 2:
        raise ValueError(f"write_png_atomic({path}): expected a 2-D uint8 or uint16 array, got {array.dtype} {array.shape}")
    with atomic_path(path) as tmp:  # .{name}.<random>.tmp beside path (TMP_SUFFIX), normal permissions
        with open(tmp, "wb") as f:
            Image.fromarray(array).save(f, format="PNG", compress_level=6)
            f.flush()
            os.fsync(f.fileno())
        size = os.path.getsize(tmp)
    return size


def read_png(path: str | os.PathLike, dtype: type) -> np.ndarray:
    """Read a greyscale PNG written by :func:`write_png_atomic`.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: not a readable PNG, or not of ``dtype`` (uint8 / uint16) greyscale.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pseudo-label file {path} does not exist")
    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im)
    except OSError as e:
        raise ValueError(f"pseudo-label file {path} is not a readable PNG: {e}") from None
    if arr.ndim != 2:
        raise ValueError(f"pseudo-label file {path}: expected a greyscale PNG, got shape {arr.shape}")
    if dtype == np.uint16 and arr.dtype in (np.int32, np.uint16):  # PIL opens 16-bit PNGs as I;16 / I
        arr = arr.astype(np.uint16)
    if arr.dtype != dtype:
        raise ValueError(f"pseudo-label file {path}: expected {np.dtype(dtype).name} values, got {arr.dtype}")
    return arr


def remove_stale_tmp(folder: Path) -> int:
    """Delete temporary files a killed writer left in ``folder``; returns how many."""
    n = 0
    if folder.is_dir():
        for p in folder.iterdir():
            if p.name.startswith(".") and p.name.endswith(TMP_SUFFIX):
                p.unlink(missing_ok=True)
                n += 1
    return n


def write_manifest(out_dir: str | os.PathLike, manifest: dict) -> None:
    from selfsup.io import atomic_write_text

    atomic_write_text(Path(out_dir) / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def read_manifest(out_dir: str | os.PathLike) -> dict:
    """The manifest of a pseudo-label folder.

    Raises:
        FileNotFoundError: no ``manifest.json`` in ``out_dir``.
        ValueError: unreadable JSON or an unknown format.
    """
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"pseudo-label folder {out_dir} has no {MANIFEST}")
    try:
        m = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if m.get("format") != FORMAT or m.get("kind") not in KINDS:
        raise ValueError(f"{path}: expected format {FORMAT!r} and kind in {KINDS}, got {m.get('format')!r} / {m.get('kind')!r}")
    return m


def is_png_folder(folder: str | os.PathLike) -> bool:
    """True when ``folder`` holds this PNG format (has a manifest), False for the .npy layout."""
    return (Path(folder) / MANIFEST).is_file()


class PseudoLabelReader:
    """Read one sample's maps from a PNG pseudo-label folder, at each camera's source size.

    Args:
        folder: the generator's ``--out-dir``.
        kind: "depth" or "semantic"; must match the manifest.

    Raises:
        FileNotFoundError / ValueError: see :func:`read_manifest`; ``kind`` mismatch.
    """

    def __init__(self, folder: str | os.PathLike, kind: str):
        self.folder = Path(folder)
        self.manifest = read_manifest(folder)
        if self.manifest["kind"] != kind:
            raise ValueError(f"{self.folder / MANIFEST} holds {self.manifest['kind']} labels, expected {kind}")
        self.kind = kind
        if kind == "semantic" and len(self.manifest.get("class_names", [])) > 254:
            raise ValueError(f"{self.folder / MANIFEST}: more than 254 classes do not fit uint8 id + 1")

    def read(self, scene_name: str, token: str, cameras: tuple[str, ...], src_hw: tuple[int, int]) -> np.ndarray:
        """Maps of ``cameras`` of one sample, ``[V, H, W]`` at ``src_hw`` (nearest upsampling).

        Returns float32 metres (0 = unknown) for depth, int16 class ids (255 = unlabelled)
        for semantics.

        Raises:
            FileNotFoundError: naming the missing camera file.
            ValueError: unreadable / wrong-typed PNG.
        """
        out = []
        for cam in cameras:
            path = camera_path(self.folder, scene_name, token, cam)
            raw = read_png(path, np.uint16 if self.kind == "depth" else np.uint8)
            if raw.shape != tuple(src_hw):
                raw = np.asarray(Image.fromarray(raw).resize((src_hw[1], src_hw[0]), resample=Image.NEAREST))
            out.append(decode_depth(raw) if self.kind == "depth" else decode_semantic(raw))
        return np.stack(out)


def load_transformed(reader: PseudoLabelReader, scene_name: str, token: str, cameras: tuple[str, ...], transform) -> np.ndarray:
    """One sample's maps resized / cropped like the images by ``transform`` (a
    :class:`selfsup.data.image.ResizeCrop`, nearest sampling): float32 metres for depth,
    int16 classes (255 = unlabelled) for semantics, ``[V, h, w]``. Sparse depth (manifest
    ``"sparse": true``, e.g. triangulated keypoints) goes through
    :func:`sparse_depth_transform` instead, which keeps every labelled pixel."""
    raw = reader.read(scene_name, token, cameras, transform.src_hw)
    if reader.kind == "depth" and reader.manifest.get("sparse", False):
        return np.stack([sparse_depth_transform(m, transform) for m in raw])
    if reader.kind == "semantic":
        raw = raw.astype(np.uint8)  # 0-16 and 255 fit; PIL resizes uint8 labels
    out = np.stack([np.asarray(transform.mask(Image.fromarray(m))) for m in raw])
    return out.astype(np.float32 if reader.kind == "depth" else np.int16)


def sparse_depth_transform(depth: np.ndarray, transform) -> np.ndarray:
    """A sparse depth map ``[H, W]`` at ``transform.src_hw`` (metres, 0 = none) -> ``[h, w]``
    after ``transform`` (a :class:`selfsup.data.image.ResizeCrop`): each labelled pixel's
    centre is mapped like the image and the nearest depth per output pixel kept. Nearest
    resampling would drop almost all points when shrinking (1 in 121 at 1/11 scale).

    Raises:
        ValueError: ``depth`` is not ``transform.src_hw``.
    """
    if depth.shape != tuple(transform.src_hw):
        raise ValueError(f"sparse_depth_transform: map of shape {depth.shape}, expected {tuple(transform.src_hw)}")
    rows, cols = np.nonzero(depth > 0)
    z = depth[rows, cols].astype(np.float64)
    sy = transform.resized_hw[0] / transform.src_hw[0]
    sx = transform.resized_hw[1] / transform.src_hw[1]
    u = np.floor((cols + 0.5) * sx - transform.left).astype(np.int64)
    v = np.floor((rows + 0.5) * sy - transform.top).astype(np.int64)
    h, w = transform.out_hw
    ok = (u >= 0) & (u < w) & (v >= 0) & (v < h)
    out = np.full((h, w), np.inf)
    np.minimum.at(out, (v[ok], u[ok]), z[ok])
    out[np.isinf(out)] = 0.0
    return out.astype(np.float32)
