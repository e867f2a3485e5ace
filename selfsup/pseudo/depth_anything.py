"""Monocular metric depth with Depth Anything V2 (transformers ``AutoModelForDepthEstimation``).

Depth Anything V2 Metric Outdoor (Yang et al., NeurIPS 2024; checkpoints
``depth-anything/Depth-Anything-V2-Metric-Outdoor-{Small,Base,Large}-hf``, 24.8M / 97.5M /
335.3M parameters, fine-tuned on Virtual KITTI 2, ``depth_estimation_type="metric"``,
``max_depth=80``) predicts camera z in metres from the image alone. It takes no
intrinsics, so its scale is only right for cameras like its training ones; with
``align="lidar_median"`` each image is rescaled by the median ratio LiDAR depth /
predicted depth over the pixels the current frame's LiDAR hits (median scaling as in the
depth-evaluation protocol of Monodepth2 / SelfOcc), and the summary reports the measured
scales and the AbsRel against the LiDAR before and after alignment either way.
"""

from __future__ import annotations

import numpy as np
import torch

from selfsup.pseudo.hf import checkpoint_config, checkpoint_hash, import_transformers, load_pretrained
from selfsup.pseudo.lidar import project_nearest, scale_intrinsics
from selfsup.pseudo.sources import PseudoSample

ALIGN_MODES = ("none", "lidar_median")


class DepthAnythingBackend:
    """Depth Anything (V1 / V2, relative models refused) from a local checkpoint folder.

    Args:
        checkpoint: folder written by ``save_pretrained`` (model + image processor).
        batch_size: images per forward pass.
        device: torch device.
        align: "none" or "lidar_median" (see module doc).
        min_lidar_points: fewer LiDAR hits than this in an image: no alignment (scale 1).

    Raises:
        FileNotFoundError: missing folder / config.json.
        ValueError: not a Depth Anything checkpoint, a relative-depth one, or unloadable.
    """

    kind = "depth"
    name = "depth_anything"
    needs_images = True

    def __init__(self, checkpoint: str, batch_size: int = 6, device: str | torch.device = "cpu",
                 align: str = "none", min_lidar_points: int = 20):
        if align not in ALIGN_MODES:
            raise ValueError(f"align must be one of {ALIGN_MODES}, got {align!r}")
        cfg = checkpoint_config(checkpoint, "Depth Anything", ("depth_anything",))
        if cfg.get("depth_estimation_type", "relative") != "metric":
            raise ValueError(f"Depth Anything checkpoint {checkpoint} predicts relative (inverse) depth "
                             f"(depth_estimation_type={cfg.get('depth_estimation_type', 'relative')!r}); "
                             "pseudo depth needs a metric model (e.g. Depth-Anything-V2-Metric-Outdoor)")
        tf = import_transformers()
        self.processor = load_pretrained(tf.AutoImageProcessor, checkpoint, "Depth Anything image processor")
        self.model = load_pretrained(tf.AutoModelForDepthEstimation, checkpoint, "Depth Anything").eval().to(device)
        self.checkpoint, self.batch_size, self.device = str(checkpoint), int(batch_size), torch.device(device)
        self.align, self.min_lidar_points = align, int(min_lidar_points)
        self.max_depth = cfg.get("max_depth")

    def manifest(self) -> dict:
        return dict(backend=self.name, checkpoint=self.checkpoint, checkpoint_sha256=checkpoint_hash(self.checkpoint),
                    backend_config=dict(align=self.align, max_depth=self.max_depth,
                                        architectures=self.model.config.architectures))

    @torch.no_grad()
    def raw_depth(self, images: list[np.ndarray], out_hw: tuple[int, int]) -> np.ndarray:
        """Predicted depth ``[N, h, w]`` (metres) of uint8 RGB images, resized to ``out_hw``."""
        out = []
        for s in range(0, len(images), self.batch_size):
            chunk = images[s:s + self.batch_size]
            inputs = self.processor(images=chunk, return_tensors="pt").to(self.device)
            pred = self.model(**inputs)
            post = self.processor.post_process_depth_estimation(pred, target_sizes=[tuple(out_hw)] * len(chunk))
            out.extend(p["predicted_depth"].float().cpu().numpy() for p in post)
        return np.stack(out)

    def predict(self, sample: PseudoSample, out_hw: tuple[int, int]) -> tuple[np.ndarray, dict]:
        if sample.images is None:
            raise ValueError(f"sample {sample.token}: the depth_anything backend needs images")
        depth = self.raw_depth(list(sample.images), out_hw)
        K = scale_intrinsics(sample.K, sample.src_hw, out_hw)
        scales, absrel_raw, absrel_aligned = [], [], []
        for v in range(len(depth)):
            lidar, _ = project_nearest(sample.points_ego, K[v], sample.T_ego_cam[v], out_hw)
            hit = (lidar > 0) & (depth[v] > 0)
            if hit.sum() < self.min_lidar_points:
                scales.append(float("nan"))
                continue
            ratio = lidar[hit] / depth[v][hit]
            s = float(np.median(ratio))
            scales.append(s)
            absrel_raw.append(float(np.mean(np.abs(depth[v][hit] - lidar[hit]) / lidar[hit])))
            absrel_aligned.append(float(np.mean(np.abs(s * depth[v][hit] - lidar[hit]) / lidar[hit])))
            if self.align == "lidar_median":
                depth[v] *= s
        return depth, dict(scale=scales, absrel_raw=absrel_raw, absrel_aligned=absrel_aligned)
