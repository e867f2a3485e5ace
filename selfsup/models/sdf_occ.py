"""SelfOcc-style self-supervised occupancy model: image encoder -> TPV SDF -> NeuS rendering.

Implements the staged contract of ``selfsup.model_api``: ``encode`` lifts the current
frame's (t = 0) image features into TPV planes (:class:`TPVScene`), ``render`` ray-marches
the SDF with the NeuS renderer at any pixels (rays clipped to the representation's box and
``[near, far]``), ``predict_occupancy`` thresholds the SDF at the voxel centres, and the
regularizers are the eikonal and second-order smoothness terms. Training renders a jittered
``rays_hw`` grid per camera of the current frame and scores it with the shared objectives
(``selfsup.objectives``): photometric reprojection of the rendered sample points into the
temporal neighbours, rendered colour, optional depth (LiDAR or pseudo) and semantics.
Everything is in the ego frame of the current frame, metres.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from render.rays import pixel_rays, ray_aabb
from render.volume import FieldSamples, NeuSRenderer
from selfsup.data.frames import Frames
from selfsup.encoders.timm_fpn import TimmFPN
from selfsup.losses import axis_offsets, eikonal_loss, hessian_loss
from selfsup.model_api import OccupancyModel, OccupancyPrediction, PixelGrid, RenderedViews, Scene
from selfsup.objectives import depth_objective, photometric_objective, rgb_objective, semantic_objective
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
SDF_REGULARIZERS = ("eikonal", "hessian")


def _no_depth_source(views: RenderedViews, batch: Frames, mask: Tensor) -> Tensor:
    """The "depth" objective of ``depth_source="none"``: a positive weight is refused."""
    raise ValueError("SDFOcc: the depth term needs depth_source='lidar' or 'pseudo'")


@dataclass
class TPVScene(Scene):
    """The SDF tri-plane state of a batch: ``planes`` (``TPVPlanes``, batch B)."""

    planes: TPVPlanes


class SDFOcc(OccupancyModel):
    """Self-supervised SDF tri-plane occupancy (SelfOcc-style).

    Args:
        encoder: image encoder (its ``backbone`` gets the backbone lr multiplier).
        representation: the TPV SDF; its ``feat_channels`` must equal the encoder's
            ``out_channels``.
        renderer: NeuS volume renderer.
        rays_hw: (rows, cols) of the jittered ray grid per camera (SelfOcc: 48 x 100).
        loss_weights: weights of the objectives ("photometric", "rgb", "depth",
            "semantic", any extra ``objectives``) and regularizers ("eikonal", "hessian");
            missing keys take ``DEFAULT_LOSS_WEIGHTS`` (0 for extra objectives).
        near, far: rendering interval along each ray, metres, further clipped to the
            representation's box.
        depth_source: "lidar" (``Frames.points_ego`` of the current frame) or "pseudo"
            (``Frames.depth_maps``) supervises the rendered depth with L1; "none" disables
            the depth term.
        objectives: extra or replacement objectives, name -> callable (see
            ``selfsup.model_api``); the defaults are the shared photometric, rgb, depth (L1
            on the expected depth from ``depth_source``) and semantic objectives.
        hessian_points: random sample points per batch element for the smoothness term.
        hessian_step: finite-difference step of the smoothness term, metres.
        sdf_threshold: voxels with SDF <= this are occupied (metres).
        min_opacity: rendered depth is 0 where the ray opacity is below this.

    Raises:
        ValueError: unknown loss names, negative weights, a depth weight without a depth
            source, ``near >= far``, or mismatched channel counts.

    Source: SelfOcc (Huang et al. 2024), Sec. 3 and its NeuS configuration; objectives as
    documented in ``selfsup.objectives``.
    """

    train_jitter = True
    train_frames = "current"

    def __init__(
        self,
        encoder: TimmFPN,
        representation: TriplaneSDF,
        renderer: NeuSRenderer,
        rays_hw: tuple[int, int] = (48, 100),
        loss_weights: Mapping[str, float] | None = None,
        near: float = 0.5,
        far: float = 60.0,
        depth_source: Literal["none", "lidar", "pseudo"] = "none",
        objectives: Mapping[str, Callable] | None = None,
        hessian_points: int = 1024,
        hessian_step: float = 0.2,
        sdf_threshold: float = 0.0,
        min_opacity: float = 0.05,
    ):
        super().__init__()
        if depth_source not in ("none", "lidar", "pseudo"):
            raise ValueError(f"SDFOcc: depth_source must be 'none', 'lidar' or 'pseudo', got {depth_source!r}")
        if (loss_weights or {}).get("depth", 0) > 0 and depth_source == "none" and "depth" not in (objectives or {}):
            raise ValueError("SDFOcc: loss_weights['depth'] > 0 needs depth_source='lidar' or 'pseudo'")
        if not 0 <= near < far:
            raise ValueError(f"SDFOcc: need 0 <= near < far, got near={near}, far={far}")
        feat_channels = representation.project["xy"].in_channels
        if encoder.out_channels != feat_channels:
            raise ValueError(
                f"SDFOcc: encoder gives {encoder.out_channels} channels, representation expects {feat_channels}"
            )
        defaults: dict[str, Callable] = {
            "photometric": photometric_objective,
            "rgb": rgb_objective,
            "semantic": semantic_objective,
        }
        if depth_source != "none":
            defaults["depth"] = functools.partial(depth_objective, source=depth_source, norm="l1", on="expected")
        else:
            defaults["depth"] = _no_depth_source
        defaults.update(objectives or {})
        weights = dict(DEFAULT_LOSS_WEIGHTS)
        if not representation.rgb:
            weights["rgb"] = 0.0
        if not representation.num_classes:
            weights["semantic"] = 0.0
        self.setup_objectives(defaults, loss_weights or {}, SDF_REGULARIZERS, weights)
        self.encoder = encoder
        self.representation = representation
        self.renderer = renderer
        self.rays_hw = self.train_grid_hw = tuple(rays_hw)
        self.near = near
        self.far = far
        self.depth_source = depth_source
        self.hessian_points = hessian_points
        self.hessian_step = hessian_step
        self.sdf_threshold = sdf_threshold
        self.min_opacity = min_opacity

    # ------------------------------------------------------------------ stages
    def encode(self, batch: Frames) -> TPVScene:
        """Encode the current frame's images and lift them into the TPV planes.

        Raises:
            ValueError: if ``batch`` is not batched.
        """
        if not batch.batched:
            raise ValueError("SDFOcc.encode: expected a batched Frames (use collate_frames)")
        images = batch.images[:, 0]
        features = self.encoder(images)
        planes = self.representation.build(
            features, self.encoder.strides, batch.K[:, 0], batch.T_ego_cam[:, 0], tuple(images.shape[-2:])
        )
        return TPVScene(planes=planes)

    def _field(self, planes: TPVPlanes) -> Callable[[Tensor], FieldSamples]:
        """The renderer's field callable for one batch element's planes (batch dim 1)."""

        def field(xyz: Float[Tensor, "P 3"]) -> FieldSamples:
            sdf, rgb, logits = self.representation.query(planes, xyz[None])
            parts = [x[0] for x in (rgb, logits) if x is not None]
            features = torch.cat(parts, dim=-1) if parts else sdf.new_zeros(xyz.shape[0], 0)
            return FieldSamples(sdf=sdf[0], features=features)

        return field

    def render(
        self,
        scene: TPVScene,
        K: Float[Tensor, "B V 3 3"],
        T_ego_cam: Float[Tensor, "B V 4 4"],
        grid: PixelGrid,
        times: Float[Tensor, "B"] | None = None,
        features: bool = True,
    ) -> RenderedViews:
        """NeuS rendering of the rays through ``grid.pixels`` of every camera (the field is
        static: ``times`` is ignored). Depth is the opacity-normalised expected distance
        times each ray's depth per unit distance (SelfOcc); ``sample_points`` are detached;
        ``extras["sdf_gradients"]`` holds the SDF gradients at the samples (eikonal)."""
        batch, views = K.shape[:2]
        R = grid.num_rays
        uv = grid.pixels.to(K.device)
        rays = pixel_rays(K, T_ego_cam, uv.expand(batch, views, -1, -1))
        lower, upper = self.representation.grid.box(uv.device)
        t_near, t_far, _ = ray_aabb(rays.origins, rays.directions, lower, upper)
        near = t_near.clamp_min(self.near)
        far = torch.minimum(t_far, torch.full_like(t_far, self.far))
        outputs = [
            self.renderer(
                self._field(scene.planes.select(b)),
                rays.origins[b].reshape(-1, 3),
                rays.directions[b].reshape(-1, 3),
                near[b].reshape(-1),
                far[b].reshape(-1),
            )
            for b in range(batch)
        ]

        def stack(name: str) -> Tensor:
            return torch.stack([getattr(o, name) for o in outputs]).reshape(batch, views, R, *getattr(outputs[0], name).shape[1:])

        opacity = stack("opacity")
        dist = torch.stack([o.normalized_dist() for o in outputs]).reshape(batch, views, R)
        feats = stack("features")
        rep = self.representation
        grads = [o.sdf_gradients for o in outputs]
        extras = {"sdf_gradients": torch.stack(grads)} if all(g is not None for g in grads) else {}
        return RenderedViews(
            depth=dist * rays.depth_per_dist,
            opacity=opacity,
            pixels=uv.expand(batch, views, -1, -1),
            image_hw=grid.image_hw,
            grid_hw=grid.grid_hw,
            rgb=feats[..., :3] if rep.rgb else None,
            semantic_logits=feats[..., 3 * rep.rgb :] if rep.num_classes else None,
            sample_points=stack("points").detach(),
            sample_weights=stack("weights"),
            extras=extras,
        )

    def regularizers(self, scene: TPVScene, views: list[RenderedViews]) -> dict[str, Tensor]:
        """"eikonal" at the rendered samples (when gradients were computed) and "hessian",
        the finite-difference smoothness at ``hessian_points`` random rendered samples per
        batch element (stencils leaving the box do not count)."""
        out: dict[str, Tensor] = {}
        grads = [v.extras["sdf_gradients"] for v in views if "sdf_gradients" in v.extras]
        if grads:
            out["eikonal"] = eikonal_loss(grads[0] if len(grads) == 1 else torch.cat([g.flatten(0, -2) for g in grads]))
        points = views[0].sample_points
        losses = []
        lower, upper = self.representation.grid.box(points.device)
        for b in range(points.shape[0]):
            flat = points[b].reshape(-1, 3)
            idx = torch.randint(flat.shape[0], (min(self.hessian_points, flat.shape[0]),), device=flat.device)
            stencil = axis_offsets(flat[idx], self.hessian_step)  # [P 7 3]
            inside = ((stencil >= lower) & (stencil <= upper)).all(dim=-1).all(dim=-1)
            sdf, _, _ = self.representation.query(scene.planes.select(b), stencil.reshape(1, -1, 3))
            losses.append(hessian_loss(sdf.reshape(-1, 7), self.hessian_step, inside))
        out["hessian"] = torch.stack(losses).mean()
        return out

    def statistics(self, scene: TPVScene, views: list[RenderedViews], batch: Frames) -> dict[str, Tensor]:
        return {"inv_s": self.renderer.inv_s.detach()}

    @torch.no_grad()
    def predict_occupancy(self, scene: TPVScene) -> OccupancyPrediction:
        """Occ3D labels of the current frame: occupied where SDF <= ``sdf_threshold`` at the
        voxel centres, semantic argmax there (label 0 without semantic channels), 17 free;
        no voxel logits."""
        rep = self.representation
        out = []
        device = scene.planes.xy.device
        for b in range(scene.planes.xy.shape[0]):
            planes_b = scene.planes.select(b)

            def query(xyz: Tensor, planes_b: TPVPlanes = planes_b) -> tuple[Tensor, Tensor]:
                sdf, _, logits = rep.query(planes_b, xyz[None])
                return sdf[0], logits[0] if logits is not None else sdf.new_zeros(xyz.shape[0], 1)

            out.append(voxelize_field(query, rep.grid, self.sdf_threshold, device=device))
        return OccupancyPrediction(labels=torch.stack(out))
