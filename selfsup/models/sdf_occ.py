"""SelfOcc-style self-supervised occupancy model: image encoder -> TPV SDF -> NeuS rendering.

Training renders a grid of rays per camera of the current frame (t = 0) through
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

from render.grid import GridField, grid_spacing, sample_grid
from render.rays import jittered_pixel_grid, pixel_rays, ray_aabb, strided_pixel_grid
from render.volume import FieldSamples, NeuSRenderer, VolumeRenderOutput
from selfsup.data.frames import Frames
from selfsup.encoders.timm_fpn import TimmFPN
from selfsup.losses import (
    axis_offsets,
    depth_l1_loss,
    eikonal_loss,
    grid_eikonal_loss,
    grid_hessian_loss,
    hessian_loss,
    masked_mean,
    project_points,
    reprojection_loss,
    rgb_loss,
    sample_image,
    semantic_loss,
    sparse_depth_grid,
)
from selfsup.losses.stereo import inverse_depth_candidates, photometric_depth_search
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
    "search": 0.0,
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
        rays_hw: (rows, cols) of the training ray grid per camera (SelfOcc: 48 x 100).
        ray_sampling: "jitter": one ray per grid cell at a random point of the cell;
            "strided": SelfOcc's regular sub-grid with a random stride and offset per step
            (``render.rays.strided_pixel_grid``).
        photometric_reduction: "min" (monodepth2, SelfOcc's KITTI configs) or "mean"
            (SelfOcc's nuScenes configs) of the reprojection errors over the sources.
        cos_anneal_steps: NeuS cosine anneal ratio ramped 0 -> 1 over this many training
            steps (SelfOcc: 5000); 0 = ratio 1 from the start.
        loss_weights: weights of "photometric", "rgb", "eikonal", "hessian", "depth",
            "semantic"; missing keys take ``DEFAULT_LOSS_WEIGHTS``.
        near, far: rendering interval along each ray, metres, further clipped to the
            representation's box.
        depth_source: "lidar" supervises rendered depth with the current frame's LiDAR
            (``Frames.points_ego``); "none" disables the depth term.
        hessian_points: random sample points per batch element for the smoothness term.
        hessian_step: finite-difference step of the smoothness term, metres.
        field_resolution: ``None``: the renderer queries the TPV decoder at every sample and
            the eikonal / smoothness terms differentiate it there (double backward).
            ``(X, Y, Z)``: the field is decoded once per step on that grid over the box
            (SelfOcc's way), samples are trilinear lookups, the NeuS slope is taken along
            the ray and the eikonal / Hessian terms are finite differences on the grid.
        search_candidates: depth candidates per ray of the non-local photometric depth
            search (``selfsup.losses.stereo``) whose confident hypotheses supervise the
            rendered distance (term "search", an L1 of log distances); 0 = off.
        search_near: nearest search candidate, metres.
        search_patch: patch size of the search, pixels of the training images.
        train_encoder: ``False`` freezes the image encoder (no gradient, no optimiser
            state): with no pretrained weights, a randomly initialised encoder is a fixed
            random feature extractor and the planes and decoder learn the scene.
        sdf_threshold: voxels with SDF <= this are occupied (metres).
        min_opacity: rendered depth is 0 where the ray opacity is below this; with 0
            (default, SelfOcc's convention) depth is never 0: the opacity-normalised
            expected distance clamped to the ray's ``[near, far]``.

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
        min_opacity: float = 0.0,
        field_resolution: tuple[int, int, int] | None = None,
        search_candidates: int = 0,
        search_near: float = 1.0,
        search_patch: int = 5,
        train_encoder: bool = True,
        ray_sampling: Literal["jitter", "strided"] = "jitter",
        cos_anneal_steps: int = 0,
        photometric_reduction: Literal["min", "mean"] = "min",
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
        if field_resolution is not None and (len(field_resolution) != 3 or min(field_resolution) < 3):
            raise ValueError(f"SDFOcc: field_resolution must be 3 sizes >= 3, got {field_resolution}")
        self.field_resolution = tuple(field_resolution) if field_resolution is not None else None
        if weights["search"] > 0 and search_candidates < 2:
            raise ValueError("SDFOcc: loss_weights['search'] > 0 needs search_candidates >= 2")
        self.search_candidates = search_candidates
        self.search_near = search_near
        self.search_patch = search_patch
        self.train_encoder = train_encoder
        if ray_sampling not in ("jitter", "strided"):
            raise ValueError(f"SDFOcc: ray_sampling must be 'jitter' or 'strided', got {ray_sampling!r}")
        if cos_anneal_steps < 0:
            raise ValueError(f"SDFOcc: cos_anneal_steps must be >= 0, got {cos_anneal_steps}")
        self.ray_sampling = ray_sampling
        self.cos_anneal_steps = cos_anneal_steps
        if photometric_reduction not in ("min", "mean"):
            raise ValueError(f"SDFOcc: photometric_reduction must be 'min' or 'mean', got {photometric_reduction!r}")
        self.photometric_reduction = photometric_reduction
        # Training steps seen (drives the cosine anneal; saved, so a resumed run continues).
        self.register_buffer("train_step", torch.zeros((), dtype=torch.long))
        if not train_encoder:
            self.encoder.requires_grad_(False)

    # ------------------------------------------------------------------ helpers
    def _batch_key(self, batch: Frames, what: str) -> tuple:
        """Identifies a batch's inputs for the caches of frozen, parameter-free results."""
        return (what, str(batch.tokens), tuple(batch.images.shape), float(batch.images.sum()),
                float(batch.K.sum()), float(batch.T_ego_cam.sum()))

    def _cached(self, key: tuple, compute: Callable):
        """``compute()`` once per key (a few entries are kept; never saved)."""
        cache = self.__dict__.setdefault("_frozen_cache", {})
        if key not in cache:
            if len(cache) >= 8:
                cache.pop(next(iter(cache)))
            cache[key] = compute()
        return cache[key]

    def build_planes(self, batch: Frames) -> TPVPlanes:
        """Encode the current frame's images and lift them into the TPV planes.

        With a frozen encoder the lifted features depend on the inputs only (the lifting is
        parameter-free), so they are computed once per batch content and reused."""
        images = batch.images[:, 0]
        rep = self.representation

        def lifted() -> dict[str, Tensor]:
            mode = self.encoder.training
            if not self.train_encoder:
                # A frozen (randomly initialised) encoder has no meaningful running statistics:
                # it normalises with the batch statistics in training and evaluation alike.
                self.encoder.train()
            with torch.set_grad_enabled(torch.is_grad_enabled() and self.train_encoder):
                features = self.encoder(images)
            self.encoder.train(mode)
            return rep.lift(features, self.encoder.strides, batch.K[:, 0], batch.T_ego_cam[:, 0], tuple(images.shape[-2:]))

        if self.train_encoder:
            return rep.planes_from_lifted(lifted())
        with torch.no_grad():
            cells = self._cached(self._batch_key(batch, "lift"), lifted)
        return rep.planes_from_lifted(cells)

    def _field(self, planes: TPVPlanes) -> Callable[[Tensor], FieldSamples]:
        """The renderer's field callable for one batch element's planes (batch dim 1)."""

        def field(xyz: Float[Tensor, "P 3"]) -> FieldSamples:
            sdf, rgb, logits = self.representation.query(planes, xyz[None])
            parts = [x[0] for x in (rgb, logits) if x is not None]
            features = torch.cat(parts, dim=-1) if parts else sdf.new_zeros(xyz.shape[0], 0)
            return FieldSamples(sdf=sdf[0], features=features)

        return field

    def decode_grid(self, planes: TPVPlanes) -> tuple[Tensor, Tensor]:
        """The field on the ``field_resolution`` grid: SDF ``[B X Y Z]`` and features ``[B C X Y Z]``."""
        return self.representation.decode_grid(planes, self.field_resolution)

    def fields(
        self, planes: TPVPlanes, grid: tuple[Tensor, Tensor] | None = None, features: int | None = None
    ) -> list[Callable]:
        """One renderer field per batch element: grid lookups when ``field_resolution`` is
        set (``grid`` from :meth:`decode_grid`, decoded here if not given; only the first
        ``features`` feature channels are read, all for ``None``), else the TPV decoder."""
        batch = planes.xy.shape[0]
        if self.field_resolution is None:
            return [self._field(planes.select(b)) for b in range(batch)]
        sdf, feat = grid if grid is not None else self.decode_grid(planes)
        lower, upper = self.representation.grid.box(sdf.device)
        feat = feat if features is None else feat[:, :features]
        return [GridField(sdf[b], feat[b], lower, upper, self.representation.outside_sdf) for b in range(batch)]

    def _render(
        self,
        fields: list[Callable],
        K: Float[Tensor, "B V 3 3"],
        T_ego_cam: Float[Tensor, "B V 4 4"],
        uv: Float[Tensor, "R 2"],
    ) -> tuple[list[VolumeRenderOutput], Float[Tensor, "B V R"], object, Tensor]:
        """Render the rays through ``uv`` of every camera; one output per batch element
        (rays ordered camera-major), each ray's depth per unit distance, the rays and where
        each leaves the box."""
        batch, views = K.shape[:2]
        rays = pixel_rays(K, T_ego_cam, uv.expand(batch, views, -1, -1))
        lower, upper = self.representation.grid.box(uv.device)
        t_near, t_far, _ = ray_aabb(rays.origins, rays.directions, lower, upper)
        near = t_near.clamp_min(self.near)
        far = torch.minimum(t_far, torch.full_like(t_far, self.far))
        grad = self.field_resolution is None
        outputs = [
            self.renderer(
                fields[b],
                rays.origins[b].reshape(-1, 3),
                rays.directions[b].reshape(-1, 3),
                near[b].reshape(-1),
                far[b].reshape(-1),
                compute_gradients=grad,
            )
            for b in range(batch)
        ]
        return outputs, rays.depth_per_dist, rays, far

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
        if self.ray_sampling == "strided":
            uv = strided_pixel_grid(H, W, rows, cols, random=self.training, device=device)  # [R 2]
        else:
            uv = jittered_pixel_grid(H, W, rows, cols, jitter=self.training, device=device)  # [R 2]
        if self.training:
            if self.cos_anneal_steps:
                self.renderer.cos_anneal_ratio = min(1.0, float(self.train_step) / self.cos_anneal_steps)
            self.train_step += 1
        planes = self.build_planes(batch)
        grid = self.decode_grid(planes) if self.field_resolution is not None else None
        rep = self.representation
        labels = batch.semantic_maps[:, 0] if batch.semantic_maps is not None else None
        use_semantics = labels is not None and rep.num_classes > 0 and self.loss_weights["semantic"] > 0
        # Grid lookups read only the channels some loss uses (colour; logits with labels).
        fields = self.fields(planes, grid, None if use_semantics else 3 * rep.rgb)
        outputs, depth_per_dist, rays, ray_far = self._render(fields, batch.K[:, 0], batch.T_ego_cam[:, 0], uv)
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
                source_valid=source_valid, reduction=self.photometric_reduction,
            )
        rep = self.representation
        if rep.rgb:
            terms["rgb"] = rgb_loss(grid_image(features[..., :3]), target, valid)
        if grid is not None:
            spacing = tuple(float(x) for x in grid_spacing(self.field_resolution, *rep.grid.box()))
            terms["eikonal"] = grid_eikonal_loss(grid[0], spacing)
            terms["hessian"] = grid_hessian_loss(grid[0], spacing)
        else:
            grads = [o.sdf_gradients for o in outputs]
            if all(g is not None for g in grads):
                terms["eikonal"] = eikonal_loss(torch.stack(grads))
            terms["hessian"] = self._hessian_term(planes, points)
        if self.loss_weights["search"] > 0 and T > 1:
            found_dist, found_ok = self._cached(self._batch_key(batch, "search"), lambda: self.search_depth(batch))
            target_dist = _read_nearest(found_dist, uv)  # [N R], the search at the ray's pixel
            keep = _read_nearest(found_ok, uv) & valid.reshape(N, -1)
            rendered = dist.reshape(N, -1).clamp_min(1e-3)
            terms["search"] = masked_mean((rendered.log() - target_dist.log()).abs(), keep)
            extra_logs = {"search_confident": keep.float().mean()}
        else:
            extra_logs = {}
        if self.depth_source == "lidar":
            lidar = torch.stack(
                [
                    sparse_depth_grid(batch.points_ego[b][0], batch.K[b, 0], batch.T_ego_cam[b, 0], (H, W), rows, cols)
                    for b in range(B)
                ]
            ).flatten(0, 1)
            terms["depth"] = depth_l1_loss(depth, lidar, valid)
        if use_semantics:
            logits = features[..., 3 * rep.rgb :].reshape(N * rows * cols, -1)
            lab = _read_nearest(labels.flatten(0, 1), uv).reshape(-1).long()
            terms["semantic"] = semantic_loss(logits, lab, valid.reshape(-1))

        loss = sum(self.loss_weights[k] * v for k, v in terms.items())
        logs = {k: v.detach() for k, v in terms.items()}
        logs["depth_mean"] = depth.detach().mean()
        logs["opacity_mean"] = opacity.detach().mean()
        logs["inv_s"] = self.renderer.inv_s.detach()
        logs.update({k: v.detach() for k, v in extra_logs.items()})
        front = (depth[0].detach() / self.far).clamp(0, 1)
        return ModelOutput(loss=loss, terms=logs, images={"depth_front": front[None].expand(3, -1, -1)})

    @torch.no_grad()
    def search_depth(self, batch: Frames, chunk: int = 2048) -> tuple[Tensor, Tensor]:
        """The non-local photometric depth search (``selfsup.losses.stereo``) at every pixel
        centre of every current-frame image, against all neighbouring frames.

        It depends on the images and poses only, so training computes it once per batch
        content and reads it at each step's rays.

        Returns:
            ``(dist, confident)``, ``[B*V, H, W]`` each: the best candidate's distance
            along the pixel's ray (metres) and whether it is confident.
        """
        B, T, V, _, H, W = batch.images.shape
        device = batch.images.device
        uv = jittered_pixel_grid(H, W, H, W, jitter=False, device=device)
        rays = pixel_rays(batch.K[:, 0], batch.T_ego_cam[:, 0], uv.expand(B, V, -1, -1))
        lower, upper = self.representation.grid.box(device)
        _, t_far, _ = ray_aabb(rays.origins, rays.directions, lower, upper)
        T_ego0_cam = batch.T_ego0_cam()
        candidates = inverse_depth_candidates(self.search_near, self.far, self.search_candidates, device=device)
        source_valid = (batch.frame_offsets[:, 1:] != 0).T.repeat_interleave(V, dim=1)  # [T-1 N]
        dist = torch.zeros(B * V, H * W, device=device)
        ok = torch.zeros(B * V, H * W, dtype=torch.bool, device=device)
        for b in range(B):
            for v in range(V):
                n = b * V + v
                for s in range(0, H * W, chunk):
                    e = min(s + chunk, H * W)
                    found = photometric_depth_search(
                        batch.images[b, 0, v][None],
                        batch.images[b, 1:, v][:, None],
                        batch.K[b, 0, v][None],
                        batch.K[b, 1:, v][:, None],
                        T_ego0_cam[b, 1:, v][:, None],
                        rays.origins[b, v, s:e][None],
                        rays.directions[b, v, s:e][None],
                        uv[s:e][None],
                        t_far[b, v, s:e][None],
                        candidates,
                        source_valid=source_valid[:, n : n + 1],
                        patch=self.search_patch,
                    )
                    dist[n, s:e], ok[n, s:e] = found.dist[0], found.confident[0]
        return dist.reshape(B * V, H, W), ok.reshape(B * V, H, W)

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
        if self.field_resolution is not None:
            sdf, feat = self.decode_grid(planes)
            lower, upper = rep.grid.box(sdf.device)
            for b in range(sdf.shape[0]):
                volume = torch.cat([sdf[b][None], feat[b, 3 * rep.rgb :]], dim=0)

                def lookup(xyz: Tensor, volume: Tensor = volume) -> tuple[Tensor, Tensor]:
                    v = sample_grid(volume, lower, upper, xyz)
                    return v[:, 0], v[:, 1:] if v.shape[1] > 1 else v.new_zeros(xyz.shape[0], 1)

                out.append(voxelize_field(lookup, rep.grid, self.sdf_threshold, device=batch.images.device))
            return torch.stack(out)
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
        ``min_opacity`` (if > 0); the expected distance normalised by the opacity and
        clamped to the ray's sample range (SelfOcc), times the depth per distance.

        Args:
            batch: supplies the current frame's images (the scene).
            K: intrinsics of the target cameras for a ``height x width`` image, pixels.
            T_ego_cam: target camera -> ego frame of the current frame.
            height, width: output size, pixels.
        """
        planes = self.build_planes(batch)
        uv = jittered_pixel_grid(height, width, height, width, jitter=False, device=K.device)
        outputs, depth_per_dist, _, ray_far = self._render(self.fields(planes, features=0), K, T_ego_cam, uv)
        B, V = K.shape[:2]
        dist = torch.stack([o.normalized_dist() for o in outputs]).reshape(B, V, -1)
        far = ray_far.reshape(B, V, -1)
        dist = torch.minimum(dist.clamp_min(self.near), far.clamp_min(self.near))
        opacity = torch.stack([o.opacity for o in outputs]).reshape(B, V, -1)
        depth = torch.where(opacity >= self.min_opacity, dist * depth_per_dist, torch.zeros_like(dist))
        return depth.reshape(B, V, height, width)
