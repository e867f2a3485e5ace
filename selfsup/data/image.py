"""Image resize + crop that keeps pinhole intrinsics exact; shared by the datasets.

Pixel convention of every ``K`` the datasets yield (and of ``render``, gsplat and
``grid_sample(align_corners=False)``): continuous image coordinates in which pixel (i, j)
covers [j, j + 1) x [i, i + 1), so its centre is (j + 0.5, i + 0.5) and the image spans
[0, W] x [0, H]. The calibrations of nuScenes, DGP and OpenCV put pixel centres at integer
coordinates instead, so :meth:`ResizeCrop.intrinsics` first adds half a pixel to the
principal point. In the continuous convention PIL's resize by ``s`` maps ``u -> s u`` and a
crop subtracts ``left`` / ``top``, so ``fx' = s fx`` and ``cx' = s (cx_calib + 0.5) - left``
(codebases that drop the half-pixel terms are off by up to ``s / 2`` px).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class ResizeCrop:
    """Resize an image by a scale, then crop it to ``out_hw``.

    Attributes:
        src_hw: input size (rows, columns).
        resized_hw: size after resizing, ``round(src * scale)``.
        out_hw: output size after cropping.
        top: rows dropped from the top of the resized image.
        left: columns dropped from the left of the resized image.
    """

    src_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    out_hw: tuple[int, int]
    top: int
    left: int

    @classmethod
    def plan(
        cls,
        src_hw: tuple[int, int],
        image_hw: tuple[int, int] | None = None,
        resize_scale: float | None = None,
        crop_top: int | None = None,
    ) -> "ResizeCrop":
        """Plan the resize + crop from ``src_hw`` to ``image_hw``.

        Args:
            src_hw: source image size (rows, columns).
            image_hw: output size; ``None`` keeps the source size (no resize, no crop).
            resize_scale: scale applied first; ``None`` scales so that the width fits
                ``image_hw`` exactly.
            crop_top: rows dropped from the top after resizing; ``None`` drops every
                surplus row from the top (keeps the bottom, where the road is), e.g.
                900x1600 at 0.44 -> 396x704, top 140 rows dropped -> 256x704 as in
                GaussianFlowOcc. Surplus columns are cropped evenly from both sides.

        Raises:
            ValueError: if the resized image is smaller than ``image_hw`` or the crop
                runs off the image.
        """
        H, W = src_hw
        if image_hw is None:
            if resize_scale is not None or crop_top is not None:
                raise ValueError("resize_scale / crop_top need image_hw (the output size)")
            return cls(src_hw=(H, W), resized_hw=(H, W), out_hw=(H, W), top=0, left=0)
        h, w = int(image_hw[0]), int(image_hw[1])
        scale = w / W if resize_scale is None else float(resize_scale)
        Hr, Wr = int(round(H * scale)), int(round(W * scale))
        if Hr < h or Wr < w:
            raise ValueError(
                f"resize of {H}x{W} by {scale:.4f} gives {Hr}x{Wr}, smaller than image_hw {h}x{w}"
            )
        top = Hr - h if crop_top is None else int(crop_top)
        if not 0 <= top <= Hr - h:
            raise ValueError(f"crop_top={top} must lie in [0, {Hr - h}] for a {Hr}x{Wr} resized image")
        return cls(src_hw=(H, W), resized_hw=(Hr, Wr), out_hw=(h, w), top=top, left=(Wr - w) // 2)

    @property
    def is_identity(self) -> bool:
        return self.resized_hw == self.src_hw and self.out_hw == self.src_hw

    def _apply(self, image: Image.Image, resample: int) -> Image.Image:
        if image.size != (self.src_hw[1], self.src_hw[0]):
            raise ValueError(f"image is {image.size[1]}x{image.size[0]}, planned for {self.src_hw[0]}x{self.src_hw[1]}")
        if self.is_identity:
            return image
        Hr, Wr = self.resized_hw
        if (Hr, Wr) != self.src_hw:
            image = image.resize((Wr, Hr), resample=resample)
        h, w = self.out_hw
        return image.crop((self.left, self.top, self.left + w, self.top + h))

    def image(self, image: Image.Image) -> Image.Image:
        """Resize (bilinear, antialiased when shrinking) and crop a PIL image of any mode."""
        return self._apply(image, Image.BILINEAR)

    def mask(self, mask: Image.Image) -> Image.Image:
        """Resize (nearest) and crop a label / mask image."""
        return self._apply(mask, Image.NEAREST)

    def intrinsics(self, K: np.ndarray) -> np.ndarray:
        """Calibration intrinsics ``[3, 3]`` of the source image (pixel centres at integers)
        -> intrinsics of the output image in the continuous convention (centres at +0.5)."""
        sy = self.resized_hw[0] / self.src_hw[0]
        sx = self.resized_hw[1] / self.src_hw[1]
        A = np.array([[sx, 0.0, 0.5 * sx - self.left], [0.0, sy, 0.5 * sy - self.top], [0.0, 0.0, 1.0]])
        return A @ np.asarray(K, dtype=np.float64)


def open_image(path: Path, what: str) -> Image.Image:
    """Open an RGB image, or fail naming the missing / unreadable file and what it is."""
    if not path.is_file():
        raise FileNotFoundError(f"{what}: image file {path} does not exist")
    try:
        return Image.open(path).convert("RGB")
    except OSError as e:
        raise OSError(f"{what}: cannot read image file {path}: {e}") from e


def to_float_chw(image: Image.Image) -> np.ndarray:
    """PIL RGB -> float32 ``[3, H, W]`` in [0, 1]."""
    return np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0


def load_valid_mask(path: Path, transform: ResizeCrop) -> np.ndarray:
    """An ego-car mask PNG (255 = scene, 0 = own car body) -> bool ``[H, W]`` after ``transform``.

    The first channel decides; the soft edge of the mask is split at 128.

    Raises:
        FileNotFoundError: naming the mask file if it does not exist.
    """
    if not path.is_file():
        raise FileNotFoundError(f"ego mask file {path} does not exist")
    mask = Image.open(path)
    grey = mask.getchannel(0) if mask.mode not in ("L", "1") else mask.convert("L")
    return np.asarray(transform.mask(grey)) >= 128
