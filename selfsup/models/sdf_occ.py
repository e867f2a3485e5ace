"""SelfOcc-style self-supervised occupancy model: image encoder -> TPV SDF -> NeuS rendering.

Training renders a jittered grid of rays per camera of the current frame (t = 0) through
the SDF tri-plane and supervises it by reprojecting the rendered sample points into the
temporal neighbours' images (plus rendered-colour, eikonal and smoothness terms, optional
LiDAR depth and semantics). Everything is in the ego frame of the current frame, metres.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from jaxtyping import Float, UInt8
from torch import Tensor

from render.rays import jittered_pixel_grid, pixel_rays, ray_aabb
from render.volume import FieldSamples, NeuSRenderer, VolumeRenderOutput
from selfsup.data.frames import Frames
from selfsup.encoders.timm_fpn import TimmFPN
from selfsup.losses import (
    axis_offsets,
    depth_l1_loss,
    eikonal_loss,
    hessian_loss,
    project_points,
    reprojection_loss,
    rgb_loss,
    sample_image,
    semantic_loss,
    sparse_depth_grid,
)
from selfsup.model_api import ModelOutput, OccupancyModel
from selfsup.representations.triplane_sdf import TPVPlanes, TriplaneSDF
from selfsup.voxelizer import voxelize_field

# SelfOcc's loss weights (REFERENCES.md); depth is off in the self-supervised setting and
# semantics only count when the batch carries 2D labels.
DEFAULT_LOSS_WEIGHTS: dict[str, float] = {
    "photometric": 1.0,
    "rgb": 0.1,
    "eikonal": 0.1,
    "hessian": 0.01,
    "depth": 0.0,
    "semantic": 0.1,
}


def _read_nearest(images: Tensor, uv: Float[Tensor, "R 2"]) -> Tensor:
    """Nearest-pixel values ``[N, R]`` of ``images [N, H, W]`` (masks, labels) at ``uv``."""
    height, width = images.shape[-2:]
    col = uv[:, 0].floor().long().clamp(0, width - 1)
    row = uv[:, 1].floor().long().clamp(0, height - 1)
    return images[:, row, col]


class SDFOcc(OccupancyModel):
    """Self-supervised SDF tri-plane occupancy (SelfOcc-style).

    Args:
        encoder: image encoder (its ``backbone`` gets the backbone lr multiplier).
        representation: the TPV SDF; its ``feat_channels`` must equal the encoder's
            ``out_channels``.
        renderer: NeuS volume renderer.
        rays_hw: (rows, cols) of the jittered ray grid per camera (SelfOcc: 48 x 100).
        loss_weights: weights of "photometric", "rgb", "eikonal", "hessian", "depth",
            "semantic"; missing keys take ``DEFAULT_LOSS_WEIGHTS``.
        near, far: rendering interval along each ray, metres, further clipped to the
            representation's box.
        depth_source: "lidar" supervises rendered depth with the current frame's LiDAR
            (``Frames.points_ego``); "none" disables the depth term.
        hessian_points: random sample points per batch element for the smoothness term.
        hessian_step: finite-difference step of the smoothness term, metres.
        sdf_threshold: voxels with SDF <= this are occupied (metres).
        min_opacity: rendered depth is 0 where the ray opacity is below this.

    Raises:
        ValueError: unknown loss names, negative weights, a depth weight without a depth
            source, ``near >= far``, or mismatched channel counts.

    Source: SelfOcc (Huang et al. 2024), Sec. 3 and its NeuS configuration; losses as
    documented in ``selfsup.losses``.
    """

    def __init__(
        self,
        encoder: TimmFPN,
        representation: TriplaneSDF,
        renderer: NeuSRenderer,
        rays_hw: tuple[int, int] = (48, 100),
        loss_weights: dict[str, float] | None = None,
        near: float = 0.5,
        far: float = 60.0,
        depth_source: Literal["none", "lidar"] = "none",
        hessian_points: int = 1024,
        hessian_step: float = 0.2,
        sdf_threshold: float = 0.0,
        min_opacity: float = 0.05,
    ):
        super().__init__()
        weights = dict(DEFAULT_LOSS_WEIGHTS)
        for key, value in (loss_weights or {}).items():
            if key not in DEFAULT_LOSS_WEIGHTS:
                raise ValueError(f"SDFOcc: unknown loss weight {key!r}; expected keys {sorted(DEFAULT_LOSS_WEIGHTS)}")
            if value < 0:
                raise ValueError(f"SDFOcc: loss weight {key!r} must be >= 0, got {value}")
            weights[key] = float(value)
        if depth_source not in ("none", "lidar"):
            raise ValueError(f"SDFOcc: depth_source must be 'none' or 'lidar', got {depth_source!r}")
        if weights["depth"] > 0 and depth_source == "none":
            raise ValueError("SDFOcc: loss_weights['depth'] > 0 needs depth_source='lidar'")
        if not 0 <= near < far:
            raise ValueError(f"SDFOcc: need 0 <= near < far, got near={near}, far={far}")
        feat_channels = representation.project["xy"].in_channels
        if encoder.out_channels != feat_channels:
            raise ValueError(
                f"SDFOcc: encoder gives {encoder.out_channels} channels, representation expects {feat_channels}"
            )
        self.encoder = encoder
        self.representation = representation
        self.renderer = renderer
        self.rays_hw = tuple(rays_hw)
        self.loss_weights = weights
        self.near = near
        self.far = far
        self.depth_source = depth_source
        self.hessian_points = hessian_points
        self.hessian_step = hessian_step
        self.sdf_threshold = sdf_threshold
        self.min_opacity = min_opacity

    # ------------------------------------------------------------------ helpers
    def build_planes(self, batch: Frames) -> TPVPlanes:
        """Encode the current frame's images and lift them into the TPV planes."""
        images = batch.images[:, 0]
        features = self.encoder(images)
        return self.representation.build(
            features, self.encoder.strides, batch.K[:, 0], batch.T_ego_cam[:, 0], tuple(images.shape[-2:])
        )

    def _field(self, planes: TPVPlanes) -> Callable[[Tensor], FieldSamples]:
        """The renderer's field callable for one batch element's planes (batch dim 1)."""

        def field(xyz: Float[Tensor, "P 3"]) -> FieldSamples:
            sdf, rgb, logits = self.representation.query(planes, xyz[None])
            parts = [x[0] for x in (rgb, logits) if x is not None]
            features = torch.cat(parts, dim=-1) if parts else sdf.new_zeros(xyz.shape[0], 0)
            return FieldSamples(sdf=sdf[0], features=features)

        return field

    def _render(
        self,
        planes: TPVPlanes,
        K: Float[Tensor, "B V 3 3"],
        T_ego_cam: Float[Tensor, "B V 4 4"],
        uv: Float[Tensor, "R 2"],
    ) -> tuple[list[VolumeRenderOutput], Float[Tensor, "B V R"]]:
        """Render the rays through ``uv`` of every camera; one output per batch element
        (rays ordered camera-major), and each ray's depth per unit distance."""
        batch, views = K.shape[:2]
        rays = pixel_rays(K, T_ego_cam, uv.expand(batch, views, -1, -1))
        lower, upper = self.representation.grid.box(uv.device)
        t_near, t_far, _ = ray_aabb(rays.origins, rays.directions, lower, upper)
        near = t_near.clamp_min(self.near)
        far = torch.minimum(t_far, torch.full_like(t_far, self.far))
        outputs = [
            self.renderer(
                self._field(planes.select(b)),
                rays.origins[b].reshape(-1, 3),
                rays.directions[b].reshape(-1, 3),
                near[b].reshape(-1),
                far[b].reshape(-1),
            )
            for b in range(batch)
        ]
        return outputs, rays.depth_per_dist

    # ------------------------------------------------------------------ training
    def forward(self, batch: Frames) -> ModelOutput:
        """One training step's losses on the current frame (t = 0).

        Renders a ``rays_hw`` ray grid (jittered in training mode) per camera. Terms (all
        unweighted in ``ModelOutput.terms``): "photometric" (reprojection into frames
        t >= 1, if any), "rgb" (if the representation has colour), "eikonal", "hessian",
        "depth" (``depth_source="lidar"``), "semantic" (only when the batch carries
        ``Frames.semantic_maps``, pseudo labels of the current frame's images with 255 =
        unlabelled); logged extras:
        "depth_mean" (metres), "opacity_mean", "inv_s". Image "depth_front": rendered depth
        of camera 0 of the first sample on the ray grid, divided by ``far``.

        Raises:
            ValueError: if ``batch`` is not batched.
        """
        if not batch.batched:
            raise ValueError("SDFOcc.forward: expected a batched Frames (use collate_frames)")
        B, T, V, _, H, W = batch.images.shape
        rows, cols = self.rays_hw
        device = batch.images.device
        uv = jittered_pixel_grid(H, W, rows, cols, jitter=self.training, device=device)  # [R 2]
        planes = self.build_planes(batch)
        outputs, depth_per_dist = self._render(planes, batch.K[:, 0], batch.T_ego_cam[:, 0], uv)
        S = self.renderer.num_samples
        N = B * V

        def grid_image(x: Tensor) -> Tensor:  # [B, V*R, C] -> [N, C, rows, cols]
            return x.reshape(N, rows, cols, -1).permute(0, 3, 1, 2)

        weights = torch.stack([o.weights for o in outputs])  # [B VR S]
        points = torch.stack([o.points for o in outputs]).detach()  # [B VR S 3]
        features = torch.stack([o.features for o in outputs])  # [B VR C]
        opacity = torch.stack([o.opacity for o in outputs]).reshape(B, V, -1)
        dist = torch.stack([o.normalized_dist() for o in outputs]).reshape(B, V, -1)
        depth = (dist * depth_per_dist).reshape(N, rows, cols)

        uv_n = uv.expand(N, -1, -1)
        target, _ = sample_image(batch.images[:, 0].flatten(0, 1), uv_n)  # [N R 3]
        target = grid_image(target)
        valid = _read_nearest(batch.valid_masks.flatten(0, 1), uv).reshape(N, rows, cols)

        terms: dict[str, Tensor] = {}
        w_grid = weights.reshape(N, rows, cols, S).permute(0, 3, 1, 2)  # [N S rows cols]
        if T > 1:
            T_ego0_cam = batch.T_ego0_cam()
            colours, in_view, identity = [], [], []
            pts = points.reshape(N, -1, 3)
            for t in range(1, T):
                uv_src, _, in_front = project_points(pts, batch.K[:, t].flatten(0, 1), T_ego0_cam[:, t].flatten(0, 1))
                src = batch.images[:, t].flatten(0, 1)
                c, inside = sample_image(src, uv_src)  # [N R*S 3]
                colours.append(c.reshape(N, rows, cols, S, 3).permute(0, 3, 4, 1, 2))
                in_view.append((in_front & inside).reshape(N, rows, cols, S).permute(0, 3, 1, 2))
                identity.append(grid_image(sample_image(src, uv_n)[0]))
            # A neighbour clamped to the current frame (sequence end) is no photometric source.
            source_valid = (batch.frame_offsets[:, 1:] != 0).T.repeat_interleave(V, dim=1)  # [T-1 N]
            terms["photometric"] = reprojection_loss(
                torch.stack(colours), w_grid, torch.stack(in_view), target, torch.stack(identity), valid,
                source_valid=source_valid,
            )
        rep = self.representation
        if rep.rgb:
            terms["rgb"] = rgb_loss(grid_image(features[..., :3]), target, valid)
        grads = [o.sdf_gradients for o in outputs]
        if all(g is not None for g in grads):
            terms["eikonal"] = eikonal_loss(torch.stack(grads))
        terms["hessian"] = self._hessian_term(planes, points)
        if self.depth_source == "lidar":
            lidar = torch.stack(
                [
                    sparse_depth_grid(batch.points_ego[b][0], batch.K[b, 0], batch.T_ego_cam[b, 0], (H, W), rows, cols)
                    for b in range(B)
                ]
            ).flatten(0, 1)
            terms["depth"] = depth_l1_loss(depth, lidar, valid)
        labels = batch.semantic_maps[:, 0] if batch.semantic_maps is not None else None
        if labels is not None and rep.num_classes:
            logits = features[..., 3 * rep.rgb :].reshape(N * rows * cols, -1)
            lab = _read_nearest(labels.flatten(0, 1), uv).reshape(-1).long()
            terms["semantic"] = semantic_loss(logits, lab, valid.reshape(-1))

        loss = sum(self.loss_weights[k] * v for k, v in terms.items())
        logs = {k: v.detach() for k, v in terms.items()}
        logs["depth_mean"] = depth.detach().mean()
        logs["opacity_mean"] = opacity.detach().mean()
        logs["inv_s"] = self.renderer.inv_s.detach()
        front = (depth[0].detach() / self.far).clamp(0, 1)
        return ModelOutput(loss=loss, terms=logs, images={"depth_front": front[None].expand(3, -1, -1)})

    def _hessian_term(self, planes: TPVPlanes, points: Float[Tensor, "B R S 3"]) -> Tensor:
        """Finite-difference smoothness at random rendered sample points of each element."""
        losses = []
        lower, upper = self.representation.grid.box(points.device)
        for b in range(points.shape[0]):
            flat = points[b].reshape(-1, 3)
            idx = torch.randint(flat.shape[0], (min(self.hessian_points, flat.shape[0]),), device=flat.device)
            stencil = axis_offsets(flat[idx], self.hessian_step)  # [P 7 3]
            inside = ((stencil >= lower) & (stencil <= upper)).all(dim=-1).all(dim=-1)
            sdf, _, _ = self.representation.query(planes.select(b), stencil.reshape(1, -1, 3))
            losses.append(hessian_loss(sdf.reshape(-1, 7), self.hessian_step, inside))
        return torch.stack(losses).mean()

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def predict_occupancy(self, batch: Frames) -> UInt8[Tensor, "B X Y Z"]:
        """Occ3D labels of the current frame: occupied where SDF <= ``sdf_threshold`` at the
        voxel centres, semantic argmax there (label 0 without semantic channels), 17 free.

        Raises:
            ValueError: if ``batch`` is not batched.
        """
        if not batch.batched:
            raise ValueError("SDFOcc.predict_occupancy: expected a batched Frames")
        planes = self.build_planes(batch)
        rep = self.representation
        out = []
        for b in range(batch.images.shape[0]):
            planes_b = planes.select(b)

            def query(xyz: Tensor, planes_b: TPVPlanes = planes_b) -> tuple[Tensor, Tensor]:
                sdf, _, logits = rep.query(planes_b, xyz[None])
                return sdf[0], logits[0] if logits is not None else sdf.new_zeros(xyz.shape[0], 1)

            out.append(voxelize_field(query, rep.grid, self.sdf_threshold, device=batch.images.device))
        return torch.stack(out)

    @torch.no_grad()
    def render_depth(
        self,
        batch: Frames,
        K: Float[Tensor, "B V 3 3"],
        T_ego_cam: Float[Tensor, "B V 4 4"],
        height: int,
        width: int,
    ) -> Float[Tensor, "B V H W"]:
        """Camera depth (z, metres) of every pixel centre, 0 where the opacity is below
        ``min_opacity``; the expected depth normalised by the opacity (SelfOcc).

        Args:
            batch: supplies the current frame's images (the scene).
            K: intrinsics of the target cameras for a ``height x width`` image, pixels.
            T_ego_cam: target camera -> ego frame of the current frame.
            height, width: output size, pixels.
        """
        planes = self.build_planes(batch)
        uv = jittered_pixel_grid(height, width, height, width, jitter=False, device=K.device)
        outputs, depth_per_dist = self._render(planes, K, T_ego_cam, uv)
        B, V = K.shape[:2]
        dist = torch.stack([o.normalized_dist() for o in outputs]).reshape(B, V, -1)
        opacity = torch.stack([o.opacity for o in outputs]).reshape(B, V, -1)
        depth = torch.where(opacity >= self.min_opacity, dist * depth_per_dist, torch.zeros_like(dist))
        return depth.reshape(B, V, height, width)
