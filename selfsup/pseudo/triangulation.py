"""Sparse depth from the images alone: keypoints matched between a frame and its temporal
neighbours in the same camera, triangulated with the known camera poses.

This is the structure-from-motion signal that DS-NeRF (Deng et al., CVPR 2022, "Depth-
supervised NeRF: fewer views and faster training for free") adds to a radiance field:
COLMAP's sparse points as depth targets. Here the poses are the dataset's (no bundle
adjustment), the matching is SIFT (Lowe 2004) with the ratio test, and each match must lie
on its epipolar line: the triangulated point must reproject into the neighbour image
within ``max_reproj_px``. It uses exactly what the photometric loss uses (the current and
neighbouring images and the poses), no LiDAR, but at the images' full resolution: at 1936
pixels across, 1.3 m of sideways motion moves a point 50 m away by about 50 pixels, where
the 176-pixel training images see 5.

Rules (all per camera, in the current frame's camera):
- keypoints on the ego-car body (``valid_mask`` False, in either image) are dropped: the
  body moves with the cameras, so its matches triangulate to nonsense;
- a match needs a ray angle of at least ``min_angle_deg`` at the point (near the epipole
  of a forward-moving camera the depth is unconstrained) and a depth in
  ``(min_depth, max_depth]``;
- a keypoint triangulated from two neighbours keeps the mean depth when both agree within
  ``max_rel_disagreement`` and is dropped otherwise; with ``min_views=2`` keypoints seen
  from one neighbour only are dropped too (they may be on moving objects).

Moving objects violate the static-world assumption; a car moving along the epipolar line
gets a wrong depth that no two-view test can reject. Expect a few percent of outliers.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from jaxtyping import Bool, Float, UInt8

__all__ = ["KeypointDepth", "SiftMatcher", "triangulate_pair", "triangulated_depth"]


@dataclass
class KeypointDepth:
    """Triangulated keypoints of one image.

    Attributes:
        uv: continuous pixel coordinates ``[N, 2]`` (u column, v row; pixel (i, j) covers
            [j, j + 1) x [i, i + 1)) in the current image.
        depth: camera z of each keypoint, metres.
        views: how many neighbours triangulated it (1 or 2).
    """

    uv: Float[np.ndarray, "N 2"]
    depth: Float[np.ndarray, " N"]
    views: np.ndarray

    def to_map(self, hw: tuple[int, int]) -> Float[np.ndarray, "H W"]:
        """Sparse depth map ``[H, W]`` (metres, 0 = none): the nearest keypoint per pixel."""
        out = np.full(hw, np.inf)
        u = np.floor(self.uv[:, 0]).astype(np.int64)
        v = np.floor(self.uv[:, 1]).astype(np.int64)
        ok = (u >= 0) & (u < hw[1]) & (v >= 0) & (v < hw[0])
        np.minimum.at(out, (v[ok], u[ok]), self.depth[ok])
        out[np.isinf(out)] = 0.0
        return out.astype(np.float32)


class SiftMatcher:
    """SIFT keypoints (OpenCV) and ratio-test matches.

    Args:
        max_features: keypoints kept per image (strongest first); 0 = all.
        ratio: Lowe's ratio test threshold (best / second-best descriptor distance).
        scale: images are resized by this factor before detection (keypoints are returned
            in the original pixel coordinates); 1 = full resolution.
    """

    def __init__(self, max_features: int = 20000, ratio: float = 0.8, scale: float = 1.0):
        import cv2

        if not 0 < ratio <= 1 or not 0 < scale <= 1 or max_features < 0:
            raise ValueError(f"SiftMatcher: need 0 < ratio <= 1, 0 < scale <= 1, max_features >= 0; "
                             f"got {ratio}, {scale}, {max_features}")
        self.cv2 = cv2
        self.sift = cv2.SIFT_create(nfeatures=max_features)
        self.matcher = cv2.BFMatcher(cv2.NORM_L2)
        self.ratio, self.scale = ratio, scale
        # An image is the current view of its sample and a neighbour of the next and previous
        # ones: its keypoints are detected once (the last few images are kept).
        self._cache: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self.cache_size = 32

    def detect(self, image: UInt8[np.ndarray, "H W 3"], valid_mask: Bool[np.ndarray, "H W"] | None = None
               ) -> tuple[Float[np.ndarray, "N 2"], np.ndarray]:
        """Keypoints (continuous pixel coordinates of ``image``) and descriptors ``[N, 128]``."""
        digest = hashlib.sha1(np.ascontiguousarray(image).tobytes())
        if valid_mask is not None:
            digest.update(np.packbits(valid_mask).tobytes())
        key = digest.hexdigest()
        if key not in self._cache:
            self._cache[key] = self._detect(image, valid_mask)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return self._cache[key]

    def _detect(self, image: np.ndarray, valid_mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        cv2 = self.cv2
        grey = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
        mask = None if valid_mask is None else valid_mask.astype(np.uint8) * 255
        if self.scale != 1:
            grey = cv2.resize(grey, None, fx=self.scale, fy=self.scale, interpolation=cv2.INTER_AREA)
            if mask is not None:
                mask = cv2.resize(mask, (grey.shape[1], grey.shape[0]), interpolation=cv2.INTER_NEAREST)
        keypoints, desc = self.sift.detectAndCompute(grey, mask)
        # OpenCV keypoints have pixel centres at integers; ours at +0.5.
        uv = (np.array([k.pt for k in keypoints], dtype=np.float64).reshape(-1, 2) + 0.5) / self.scale
        return uv, (desc if desc is not None else np.zeros((0, 128), np.float32))

    def match(self, desc0: np.ndarray, desc1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Indices ``(i0, i1)`` of the matches that pass the ratio test."""
        if len(desc0) < 1 or len(desc1) < 2:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        pairs = self.matcher.knnMatch(desc0, desc1, k=2)
        good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < self.ratio * p[1].distance]
        return (np.array([g.queryIdx for g in good], np.int64), np.array([g.trainIdx for g in good], np.int64))


def triangulate_pair(
    uv0: Float[np.ndarray, "N 2"],
    uv1: Float[np.ndarray, "N 2"],
    K0: Float[np.ndarray, "3 3"],
    K1: Float[np.ndarray, "3 3"],
    T_cam1_cam0: Float[np.ndarray, "4 4"],
) -> tuple[Float[np.ndarray, " N"], Float[np.ndarray, " N"], Float[np.ndarray, " N"], Float[np.ndarray, " N"]]:
    """Two-view triangulation of matched pixels: the depths along both rays that best meet (linear least squares).

    Solves ``z0 R x0 + t = z1 x1`` for the depths ``(z0, z1)`` of each match, with
    ``x = K^-1 [u, v, 1]`` (continuous pixel coordinates, centres at +0.5) and
    ``(R, t)`` of ``T_cam1_cam0``.

    Returns:
        z0 (camera z in view 0, metres), z1 (in view 1), the reprojection error of the
        point ``z0 x0`` in view 1 (pixels) and the angle between the two rays (degrees).
    """
    n = len(uv0)
    if n == 0:
        e = np.zeros(0)
        return e, e, e, e
    R, t = T_cam1_cam0[:3, :3], T_cam1_cam0[:3, 3]
    x0 = np.c_[uv0, np.ones(n)] @ np.linalg.inv(K0).T
    x1 = np.c_[uv1, np.ones(n)] @ np.linalg.inv(K1).T
    Rx0 = x0 @ R.T
    A = np.stack([Rx0, -x1], axis=-1)  # [N, 3, 2]
    AtA = np.einsum("nij,nik->njk", A, A)
    Atb = np.einsum("nij,i->nj", A, -t)
    det = AtA[:, 0, 0] * AtA[:, 1, 1] - AtA[:, 0, 1] ** 2
    safe = np.where(np.abs(det) > 1e-12, det, np.inf)
    z0 = (AtA[:, 1, 1] * Atb[:, 0] - AtA[:, 0, 1] * Atb[:, 1]) / safe
    z1 = (AtA[:, 0, 0] * Atb[:, 1] - AtA[:, 0, 1] * Atb[:, 0]) / safe
    p1 = z0[:, None] * Rx0 + t
    with np.errstate(divide="ignore", invalid="ignore"):
        proj = p1 @ K1.T
        reproj = np.linalg.norm(proj[:, :2] / proj[:, 2:] - uv1, axis=1)
    cos = np.einsum("ni,ni->n", Rx0, x1) / (np.linalg.norm(Rx0, axis=1) * np.linalg.norm(x1, axis=1))
    angle = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
    reproj = np.where(np.isfinite(reproj), reproj, np.inf)
    return z0, z1, reproj, angle


def triangulated_depth(
    image: UInt8[np.ndarray, "H W 3"],
    K: Float[np.ndarray, "3 3"],
    T_ref_cam: Float[np.ndarray, "4 4"],
    neighbours: list[tuple[UInt8[np.ndarray, "H W 3"], Float[np.ndarray, "3 3"], Float[np.ndarray, "4 4"]]],
    matcher: SiftMatcher,
    valid_mask: Bool[np.ndarray, "H W"] | None = None,
    min_angle_deg: float = 0.5,
    max_reproj_px: float = 1.0,
    min_depth: float = 1.0,
    max_depth: float = 150.0,
    max_rel_disagreement: float = 0.1,
    min_views: int = 1,
) -> KeypointDepth:
    """Triangulated keypoints of one camera image against the same camera in neighbouring frames.

    Args:
        image: the current image, RGB uint8.
        K: its intrinsics (continuous pixel coordinates, centres at +0.5).
        T_ref_cam: camera (OpenCV) -> a common reference frame (e.g. the current ego frame).
        neighbours: ``(image, K, T_ref_cam)`` of each neighbour view, same reference frame.
        matcher: a :class:`SiftMatcher`.
        valid_mask: False on the ego-car body (used for every view of this camera); None
            keeps every pixel.
        min_angle_deg, max_reproj_px, min_depth, max_depth, max_rel_disagreement,
        min_views: the filters of the module docstring (degrees, pixels, metres, fraction).

    Returns:
        the kept keypoints and their camera z in the current camera, metres.

    Raises:
        ValueError: ``min_views`` outside 1..len(neighbours) or a mask of the wrong shape.
    """
    if not 1 <= min_views <= max(1, len(neighbours)):
        raise ValueError(f"triangulated_depth: min_views must lie in 1..{len(neighbours)}, got {min_views}")
    if valid_mask is not None and valid_mask.shape != image.shape[:2]:
        raise ValueError(f"triangulated_depth: valid_mask {valid_mask.shape} does not match the image {image.shape[:2]}")
    uv0, d0 = matcher.detect(image, valid_mask)
    depth_sum = np.zeros(len(uv0))
    views = np.zeros(len(uv0), np.int64)
    zmin = np.full(len(uv0), np.inf)
    zmax = np.zeros(len(uv0))
    for img1, K1, T_ref_cam1 in neighbours:
        uv1, d1 = matcher.detect(img1, valid_mask)
        i0, i1 = matcher.match(d0, d1)
        if len(i0) == 0:
            continue
        T_cam1_cam0 = np.linalg.inv(T_ref_cam1) @ T_ref_cam
        z0, z1, reproj, angle = triangulate_pair(uv0[i0], uv1[i1], K, K1, T_cam1_cam0)
        ok = ((z0 > min_depth) & (z0 <= max_depth) & (z1 > 0) & (reproj <= max_reproj_px) & (angle >= min_angle_deg))
        # a keypoint matched twice to the same neighbour (rare) counts once: keep the first
        idx, first = np.unique(i0[ok], return_index=True)
        z = z0[ok][first]
        depth_sum[idx] += z
        views[idx] += 1
        zmin[idx] = np.minimum(zmin[idx], z)
        zmax[idx] = np.maximum(zmax[idx], z)
    keep = views >= min_views
    keep &= (views < 2) | (zmax - zmin <= max_rel_disagreement * zmin)
    depth = np.where(views > 0, depth_sum / np.maximum(views, 1), 0.0)
    return KeypointDepth(uv=uv0[keep], depth=depth[keep], views=views[keep])



class TriangulationBackend:
    """Pseudo-depth backend (``scripts/generate_pseudo_depth.py --backend triangulation``):
    sparse maps of triangulated keypoints (:func:`triangulated_depth`) of every camera
    against the same camera in the ``neighbours`` frames on each side. Maps are written
    with ``"sparse": true`` in the manifest, which makes readers keep every point when
    resizing (:func:`selfsup.pseudo.storage.sparse_depth_transform`); store them at full
    size (``--out-scale 1``).

    Args:
        neighbours: frames on each side used as second views.
        min_views, min_angle_deg, max_reproj_px, min_depth, max_depth,
        max_rel_disagreement: see :func:`triangulated_depth`.
        max_features, ratio, scale: see :class:`SiftMatcher`.
    """

    kind = "depth"
    name = "triangulation"
    needs_images = True

    def __init__(self, neighbours: int = 1, min_views: int = 1, min_angle_deg: float = 0.5, max_reproj_px: float = 1.0,
                 min_depth: float = 1.0, max_depth: float = 150.0, max_rel_disagreement: float = 0.1,
                 max_features: int = 20000, ratio: float = 0.8, scale: float = 1.0):
        if neighbours < 1 or min_views < 1 or min_views > 2 * neighbours:
            raise ValueError(f"TriangulationBackend: need neighbours >= 1 and 1 <= min_views <= 2 * neighbours, "
                             f"got {neighbours}, {min_views}")
        self.neighbours = int(neighbours)
        self.filters = dict(min_views=int(min_views), min_angle_deg=float(min_angle_deg), max_reproj_px=float(max_reproj_px),
                            min_depth=float(min_depth), max_depth=float(max_depth),
                            max_rel_disagreement=float(max_rel_disagreement))
        self.sift = dict(max_features=int(max_features), ratio=float(ratio), scale=float(scale))
        self.matcher = SiftMatcher(**self.sift)

    def manifest(self) -> dict:
        return dict(backend=self.name, checkpoint=None, checkpoint_sha256=None, sparse=True,
                    backend_config=dict(neighbours=self.neighbours, **self.filters, **self.sift))

    def predict(self, sample, out_hw: tuple[int, int]) -> tuple[np.ndarray, dict]:
        """Maps ``[V, *out_hw]`` (camera z, metres, 0 = none) of a
        :class:`~selfsup.pseudo.sources.PseudoSample` loaded with neighbours, and statistics.

        Raises:
            ValueError: the sample has no images or no neighbour frame.
        """
        neighbours = sample.extra.get("neighbours", [])
        if sample.images is None or not neighbours:
            raise ValueError(f"triangulation needs the images of the sample {sample.token} and of at least one "
                             f"neighbouring frame (the scene has {len(neighbours)})")
        masks = sample.extra.get("valid_masks")
        sy, sx = out_hw[0] / sample.src_hw[0], out_hw[1] / sample.src_hw[1]
        maps, counts, two = [], [], []
        for v in range(len(sample.cameras)):
            views = [(n["images"][v], n["K"][v], n["T_ego_cam"][v]) for n in neighbours]
            filters = dict(self.filters, min_views=min(self.filters["min_views"], len(views)))
            kd = triangulated_depth(sample.images[v], sample.K[v], sample.T_ego_cam[v], views, self.matcher,
                                    None if masks is None else masks[v], **filters)
            kd = KeypointDepth(uv=kd.uv * np.array([sx, sy]), depth=kd.depth, views=kd.views)
            maps.append(kd.to_map(out_hw))
            counts.append(len(kd.depth))
            two.append(int((kd.views >= 2).sum()))
        return np.stack(maps), dict(points_per_camera=float(np.mean(counts)),
                                    two_view_fraction=float(sum(two) / max(sum(counts), 1)))
