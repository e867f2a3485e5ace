"""SelfOcc-style self-supervised occupancy model: image encoder -> TPV SDF -> NeuS rendering.

Implements the staged contract of ``selfsup.model_api``: ``encode`` lifts the current
frame's (t = 0) image features into TPV planes (:class:`TPVScene`), ``render`` ray-marches
the SDF with the NeuS renderer at any pixels (rays clipped to the representation's box and
``[near, far]``), ``predict_occupancy`` thresholds the SDF at the voxel centres, and the
regularizers are the eikonal and second-order smoothness terms. Training renders a
``rays_hw`` grid per camera of the current frame, or of every / a random frame of the batch
(``train_frames``; jittered per cell, SelfOcc's randomly scaled and offset sub-grid, or
patches of neighbouring pixels: ``ray_sampling``) and scores it with the shared objectives
(``selfsup.objectives``): photometric reprojection of the rendered sample points into the
temporal neighbours (and optionally the neighbouring cameras), rendered colour, optional depth (LiDAR or pseudo) and semantics,
and optionally the non-local photometric depth search (``selfsup.losses.stereo``).

Two fields: the TPV decoder queried at every ray sample (autograd gradients at the samples,
a double backward for the eikonal term), or, with ``field_resolution``, the field decoded
once per step on a dense grid (SelfOcc's way) and read by trilinear lookups
(``render.grid``), the NeuS slope taken along the ray and the eikonal / Hessian terms as
finite differences on the grid. Everything is in the ego frame of the current frame, metres.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor, nn
from torch.nn import functional as F

from render.grid import GridField, grid_spacing
from render.rays import jittered_pixel_grid, patch_pixel_grid, pixel_rays, ray_aabb, rays_in_box, strided_pixel_grid
from render.volume import FieldSamples, NeuSRenderer, median_distance
from selfsup.data.frames import Frames
from selfsup.encoders.timm_fpn import TimmFPN
from selfsup.losses import (
    axis_offsets,
    eikonal_loss,
    distortion_loss,
    free_space_loss,
    gaussian_blur,
    grid_eikonal_loss,
    grid_hessian_loss,
    hessian_loss,
    masked_mean,
)
from selfsup.losses.stereo import inverse_depth_candidates, photometric_depth_search
from selfsup.model_api import (
    OccupancyModel,
    OccupancyPrediction,
    PixelGrid,
    RenderedViews,
    Scene,
    check_choice,
    read_nearest,
)
from selfsup.objectives.depth import depth_target
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
    "search": 0.0,
    "free_space": 0.0,
    "distortion": 0.0,
    "patch_photometric": 0.0,
    "prior": 0.0,
    "keypoint_depth": 0.0,
}
SDF_REGULARIZERS = ("eikonal", "hessian", "prior")


def _no_depth_source(views: RenderedViews, batch: Frames, mask: Tensor) -> Tensor:
    """The "depth" objective of ``depth_source="none"``: a positive weight is refused."""
    raise ValueError("SDFOcc: the depth term needs depth_source='lidar', 'pseudo' or 'sparse'")


@dataclass
class TPVScene(Scene):
    """The SDF tri-plane state of a batch: ``planes`` (``TPVPlanes``, batch B) and, for a
    grid-decoded field, ``sdf_grid`` ``[B X Y Z]`` (metres) and ``feature_grid``
    ``[B C X Y Z]`` (colour then semantic logits) on ``field_resolution`` cells over the box."""

    planes: TPVPlanes
    sdf_grid: Tensor | None = None
    feature_grid: Tensor | None = None


class SDFOcc(OccupancyModel):
    """Self-supervised SDF tri-plane occupancy (SelfOcc-style).

    Args:
        encoder: image encoder (its ``backbone`` gets the backbone lr multiplier).
        representation: the TPV SDF; its ``feat_channels`` must equal the encoder's
            ``out_channels``.
        renderer: NeuS volume renderer.
        rays_hw: (rows, cols) of the training ray grid per camera (SelfOcc: 48 x 100).
        loss_weights: weights of the objectives ("photometric", "rgb", "depth",
            "semantic", any extra ``objectives``) and regularizers ("eikonal", "hessian");
            missing keys take ``DEFAULT_LOSS_WEIGHTS`` (0 for extra objectives).
        near, far: rendering interval along each ray, metres, further clipped to the
            representation's box.
        depth_source: "lidar" (``Frames.points_ego`` of the current frame), "pseudo"
            (dense ``Frames.depth_maps``) or "sparse" (sparse ``Frames.depth_maps``, e.g.
            keypoints triangulated from the images, ``selfsup.pseudo.triangulation``: the
            nearest per ray-grid cell; needs ``ray_sampling="jitter"``) supervises the
            rendered depth with L1; "none" disables the depth term.
        objectives: extra or replacement objectives, name -> callable (see
            ``selfsup.model_api``); the defaults are the shared photometric, rgb, depth (L1
            on the expected depth from ``depth_source``) and semantic objectives.
        hessian_points: random sample points per batch element for the smoothness term.
        hessian_step: finite-difference step of the smoothness term, metres.
        sdf_threshold: voxels with SDF <= this are occupied (metres).
        min_opacity: rendered depth is 0 where the ray opacity is below this; with 0
            (default, SelfOcc's convention) depth is never 0: the opacity-normalised
            expected distance clamped to the ray's ``[near, far]``.
        field_resolution: ``None``: the renderer queries the TPV decoder at every sample.
            ``(X, Y, Z)``: the field is decoded once per step on that grid over the box and
            read by trilinear lookups; eikonal / Hessian by finite differences on the grid.
        search_candidates: depth candidates per ray of the non-local photometric depth
            search (``selfsup.losses.stereo``); its confident hypotheses supervise the
            rendered distance (objective "search", L1 of log distances); needed when
            ``loss_weights["search"] > 0``.
        search_near: nearest search candidate, metres.
        search_patch: patch size of the search, pixels of the training images.
        train_encoder: ``False`` freezes the image encoder (no gradient): without pretrained
            weights a randomly initialised encoder is a fixed random feature extractor and
            the planes and decoder learn the scene; the lifted features are then computed
            once per batch content and reused.
        ray_sampling: "jitter" (one ray per grid cell, uniform in the cell), "strided"
            (SelfOcc: ``render.rays.strided_pixel_grid``) or "patch" (``patch_size`` x
            ``patch_size`` tiles of pixels ``patch_stride`` apart, one per cell at a random
            place: ``render.rays.patch_pixel_grid``), so that the photometric SSIM compares
            neighbouring pixels instead of rays a cell apart. Not in SelfOcc.
        patch_size, patch_stride: of ``ray_sampling="patch"``.
        cos_anneal_steps: NeuS cosine anneal ratio ramped 0 -> 1 over this many training
            steps (SelfOcc: 5000); 0 = ratio 1 throughout.
        photometric_reduction: "min" (monodepth2; SelfOcc's KITTI configs) or "mean"
            (SelfOcc's nuScenes configs) of the reprojection errors over the sources.
        free_space_margin: SDF (metres) the samples in front of the rendered surface must
            exceed under the "free_space" objective (``selfsup.losses.free_space_loss``;
            not in SelfOcc, weight 0 by default).
        free_space_min_opacity: only rays whose in-box opacity reaches this count under
            "free_space" (0: all). A ray that leaks to the background then does not empty its
            whole path. Measured on the demo (seed 0, 0.5): median AbsRel 0.222 against 0.207.
        background: "none" (SelfOcc): rendered distance is the opacity-normalised expected
            distance clamped to the ray's sample range. "box_exit": what is left of a ray's
            transmittance when it leaves the box (or reaches ``far``) stops there, at a
            background outside the field: the rendered distance is ``sum_i w_i t_i + (1 -
            opacity) t_exit``, the photometric objective reprojects that exit point with
            weight ``1 - opacity``, and the rendered colour adds a learned background colour.
            Distant structure and sky then need no surface inside the box, so the
            voxelized field holds no stand-in wall (NeRF++-style background, Zhang et al.
            2020, with a fixed distance). "horizon": the same, but a ray that leaves through
            a side of the box stops at ``far``: what is seen beyond the box's sides lies
            beyond 40 m, while what leaves through its top (sky, tree tops) stays at the box.
            "far": a ray that leaves through a side or the top stops at ``far``, one that
            leaves through the bottom (it passed through the ground) at the exit: distant
            tree tops and buildings, which the Occ3D box cuts at 5.4 m height, are then not
            pulled to the box's top (with a perfect field inside the box, LiDAR-scored
            AbsRel on the demo's scene is 0.032 at ``far`` = 60 m vs 0.072 for "box_exit").
            "learned": the leftover transmittance is shared among ``background_bins``
            samples beyond the exit, uniform in inverse distance from ``1 / t_exit`` to
            ``1 / max(background_far, t_exit)``, by a softmax over bins whose logits are a
            learned map of the ray's direction in the ego frame (``background_map_hw``
            cells over azimuth -pi..pi and elevation ``background_elevation``, bilinear,
            wrapping in azimuth; NeRF++'s separate background model, Zhang et al. 2020,
            reduced to a per-direction distance distribution). Only the weights carry
            gradient (as for the field's samples), so the photometric error of each bin's
            reprojection picks the distance of structure beyond the box; logits start at 0
            (all bins equal). A ray that leaves through the bottom of the box stops at the
            exit (first bin) whatever the logits: it passed through the ground, and bins
            beyond would let a transparent road take any distance.
        sharpness_ramp: ``(s_start, s_end, steps)``: a lower bound on the NeuS sharpness
            that rises geometrically from ``s_start`` to ``s_end`` (1 / metre) over the first
            ``steps`` training steps (``NeuSRenderer.min_inv_s``); the learned ``s`` may exceed
            it. A wide kernel early lets the photometric gradient reach surfaces metres
            away; the rising bound then forces a sharp surface whose zero level set is the
            rendered one. ``None`` (SelfOcc): ``s`` is learned freely.
        train_frames: "current" (SelfOcc's default): training rays come from the current
            frame's cameras only; "all": from every frame of the batch (the field is static;
            each frame's rays are reprojected into the others); "random": from one frame per
            step, drawn uniformly (SelfOcc renders from a neighbouring frame part of the time).
        spatial_sources: cameras beside each camera that also serve as photometric sources,
            at every frame of the batch (``selfsup.objectives.photometric_objective``); 0 =
            the same camera's other frames only (SelfOcc).
        photometric_patch, photometric_patch_dilation: ``k > 0``: every sample is matched by
            its own ``k x k`` patch (pixels ``dilation`` apart) in the source against the
            ray's patch in the target image (``photometric_objective(patch=k)``); 0: SelfOcc's
            SSIM of the weight-blended colour on the ray grid.
        image_blur: ``(sigma, steps)``: coarse-to-fine matching. The images the objectives
            compare (targets and photometric sources; the encoder sees the sharp ones) are
            blurred by a Gaussian of ``sigma`` pixels at the first step, shrinking linearly to
            none at step ``steps`` (:func:`selfsup.losses.gaussian_blur`). ``None`` (SelfOcc):
            never blurred.
        hash_schedule: ``(start_levels, steps_per_level)``: coarse-to-fine hash grid
            (Neuralangelo, Li et al. 2023, Sec. 3.3): training starts with the
            ``start_levels`` coarsest levels of the representation's hash grid and adds one
            every ``steps_per_level`` steps; finer levels read as 0 until then. Evaluation
            always uses every level. ``None``: every level from the start.
        depth_beyond_exit: "keep" every depth target, or "drop" those beyond the ray's exit
            from the field box (no surface in the field can render them; with
            ``background="box_exit"`` a kept one pushes the whole ray towards transparency).
            Applies to the "depth" and "keypoint_depth" terms.
        depth_norm: "l1" (metres) or "relative" (``|d - d*| / d*``, the AbsRel form, so a
            10 m error at 80 m weighs what 1.25 m does at 10 m) for those terms.
        keypoint_rays: rays per camera per step of the "keypoint_depth" term (see
            :meth:`_keypoint_depth_objective`).
        keypoint_frames: "current": that term reads the current frame's sparse maps; "all":
            those of every loaded frame too, rendered from their cameras.
        photometric_patch_warp: how those patches (and the "patch_photometric" objective's)
            are read in the source: "fronto" (the same pixel offsets: a fronto-parallel
            patch) or "plane" (through each sample's tangent plane, the normal taken from the
            decoded grid's SDF gradient; ``objectives.photometric.plane_patch_points``). Needs
            ``field_resolution``.
        depth_estimator: the rendered depth (evaluation, pictures; no loss reads it):
            "expected" (SelfOcc) or "median", the distance where half of the ray's weight,
            background included, has accumulated (``render.volume.median_distance``).
            Measured on the demo's trained runs (seeds 0 / 1): median-scaled AbsRel 0.236 /
            0.229 against 0.229 / 0.222 for "expected".

    Raises:
        ValueError: unknown loss names, negative weights, a depth weight without a depth
            source, ``near >= far``, mismatched channel counts, ``photometric_patch``
            neither 0 nor an odd size >= 3, or a ``field_resolution`` other than the
            field box's ``shape`` when the box has a shell.

    Source: SelfOcc (Huang et al. 2024), Sec. 3 and its NeuS configuration; objectives as
    documented in ``selfsup.objectives``.
    """

    train_jitter = True

    def __init__(
        self,
        encoder: TimmFPN,
        representation: TriplaneSDF,
        renderer: NeuSRenderer,
        rays_hw: tuple[int, int] = (48, 100),
        loss_weights: Mapping[str, float] | None = None,
        near: float = 0.5,
        far: float = 60.0,
        depth_source: Literal["none", "lidar", "pseudo", "sparse"] = "none",
        objectives: Mapping[str, Callable] | None = None,
        hessian_points: int = 1024,
        hessian_step: float = 0.2,
        sdf_threshold: float = 0.0,
        min_opacity: float = 0.0,
        field_resolution: tuple[int, int, int] | None = None,
        search_candidates: int = 0,
        search_near: float = 1.0,
        search_patch: int = 5,
        train_encoder: bool = True,
        ray_sampling: Literal["jitter", "strided", "patch"] = "jitter",
        cos_anneal_steps: int = 0,
        photometric_reduction: Literal["min", "mean"] = "min",
        free_space_margin: float = 0.0,
        free_space_min_opacity: float = 0.0,
        background: Literal["none", "box_exit", "horizon", "far", "learned"] = "none",
        sharpness_ramp: tuple[float, float, int] | None = None,
        background_bins: int = 8,
        background_far: float = 100.0,
        background_map_hw: tuple[int, int] = (16, 90),
        background_elevation: tuple[float, float] = (-0.5, 0.8),
        train_frames: Literal["current", "all", "random"] = "current",
        spatial_sources: int = 0,
        patch_size: int = 4,
        patch_stride: float = 1.0,
        photometric_patch: int = 0,
        photometric_patch_dilation: int = 1,
        photometric_patch_warp: Literal["fronto", "plane"] = "fronto",
        depth_estimator: Literal["expected", "median"] = "expected",
        image_blur: tuple[float, int] | None = None,
        hash_schedule: tuple[int, int] | None = None,
        depth_beyond_exit: Literal["keep", "drop"] = "keep",
        depth_norm: Literal["l1", "relative"] = "l1",
        keypoint_rays: int = 128,
        keypoint_frames: Literal["current", "all"] = "current",
    ):
        super().__init__()
        if photometric_patch != 0 and (photometric_patch < 3 or photometric_patch % 2 == 0):
            raise ValueError(f"SDFOcc: photometric_patch must be 0 or an odd size >= 3, got {photometric_patch}")
        if field_resolution is not None and (len(field_resolution) != 3 or min(field_resolution) < 3):
            raise ValueError(f"SDFOcc: field_resolution must be 3 sizes >= 3, got {field_resolution}")
        box = representation.field_box
        if field_resolution is not None and box.has_shell and tuple(field_resolution) != box.shape:
            raise ValueError(f"SDFOcc: with a field box shell the decoded grid must have the box's cells "
                             f"(representation.field_box.shape = {box.shape}) so that its cells end on the inner "
                             f"box's faces, got field_resolution = {tuple(field_resolution)}")
        if (loss_weights or {}).get("search", 0) > 0 and search_candidates < 2:
            raise ValueError("SDFOcc: loss_weights['search'] > 0 needs search_candidates >= 2")
        check_choice("SDFOcc", "ray_sampling", ray_sampling, ("jitter", "strided", "patch"))
        check_choice("SDFOcc", "train_frames", train_frames, ("current", "all", "random"))
        if ray_sampling == "patch" and (patch_size < 1 or rays_hw[0] % patch_size or rays_hw[1] % patch_size):
            raise ValueError(f"SDFOcc: ray_sampling='patch' needs rays_hw {tuple(rays_hw)} in multiples of "
                             f"patch_size={patch_size}")
        if cos_anneal_steps < 0:
            raise ValueError(f"SDFOcc: cos_anneal_steps must be >= 0, got {cos_anneal_steps}")
        check_choice("SDFOcc", "photometric_reduction", photometric_reduction, ("min", "mean"))
        check_choice("SDFOcc", "depth_source", depth_source, ("none", "lidar", "pseudo", "sparse"))
        if depth_source == "sparse" and ray_sampling != "jitter":
            raise ValueError(f"SDFOcc: depth_source='sparse' reads one target per ray-grid cell and needs "
                             f"ray_sampling='jitter', got {ray_sampling!r}")
        if (loss_weights or {}).get("depth", 0) > 0 and depth_source == "none" and "depth" not in (objectives or {}):
            raise ValueError("SDFOcc: loss_weights['depth'] > 0 needs depth_source='lidar', 'pseudo' or 'sparse'")
        if not 0 <= near < far:
            raise ValueError(f"SDFOcc: need 0 <= near < far, got near={near}, far={far}")
        feat_channels = representation.project["xy"].in_channels
        if encoder.out_channels != feat_channels:
            raise ValueError(
                f"SDFOcc: encoder gives {encoder.out_channels} channels, representation expects {feat_channels}"
            )
        defaults: dict[str, Callable] = {
            "photometric": functools.partial(
                photometric_objective, reduction=photometric_reduction, spatial_sources=spatial_sources,
                patch=photometric_patch, patch_dilation=photometric_patch_dilation, patch_warp=photometric_patch_warp),
            "rgb": rgb_objective,
            "semantic": semantic_objective,
            "search": self._search_objective,
            "free_space": self._free_space_objective,
            "keypoint_depth": self._keypoint_depth_objective,
            "distortion": self._distortion_objective,
            "patch_photometric": functools.partial(
                photometric_objective, reduction=photometric_reduction, spatial_sources=spatial_sources,
                patch=3, patch_dilation=photometric_patch_dilation, patch_warp=photometric_patch_warp),
        }
        check_choice("SDFOcc", "depth_beyond_exit", depth_beyond_exit, ("keep", "drop"))
        check_choice("SDFOcc", "depth_norm", depth_norm, ("l1", "relative"))
        if depth_source != "none" and depth_beyond_exit == "keep" and depth_norm == "l1":
            defaults["depth"] = functools.partial(depth_objective, source=depth_source, norm="l1", on="expected")
        elif depth_source != "none":
            defaults["depth"] = self._depth_objective
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
        self.depth_beyond_exit, self.depth_norm = depth_beyond_exit, depth_norm
        if keypoint_rays < 1:
            raise ValueError(f"SDFOcc: keypoint_rays must be >= 1, got {keypoint_rays}")
        self.keypoint_rays = int(keypoint_rays)
        check_choice("SDFOcc", "keypoint_frames", keypoint_frames, ("current", "all"))
        self.keypoint_frames = keypoint_frames
        self.hessian_points = hessian_points
        self.hessian_step = hessian_step
        self.sdf_threshold = sdf_threshold
        self.min_opacity = min_opacity
        self.field_resolution = tuple(field_resolution) if field_resolution is not None else None
        self.search_candidates = search_candidates
        self.search_near = search_near
        self.search_patch = search_patch
        self.train_encoder = train_encoder
        if not train_encoder:
            self.encoder.requires_grad_(False)
        self.ray_sampling = ray_sampling
        self.train_frames = train_frames
        self.patch_size = patch_size
        self.patch_stride = float(patch_stride)
        self.cos_anneal_steps = cos_anneal_steps
        self.free_space_margin = free_space_margin
        self.free_space_min_opacity = free_space_min_opacity
        check_choice("SDFOcc", "photometric_patch_warp", photometric_patch_warp, ("fronto", "plane"))
        if photometric_patch_warp == "plane" and field_resolution is None:
            raise ValueError('SDFOcc: photometric_patch_warp="plane" needs field_resolution (normals from the decoded grid)')
        self.photometric_patch_warp = photometric_patch_warp
        check_choice("SDFOcc", "background", background, ("none", "box_exit", "horizon", "far", "learned"))
        if background == "learned":
            if background_bins < 2 or len(background_map_hw) != 2 or min(background_map_hw) < 1:
                raise ValueError(f"SDFOcc: background 'learned' needs background_bins >= 2 and a background_map_hw of "
                                 f"2 sizes >= 1, got {background_bins}, {background_map_hw}")
            if not background_far > 0 or not background_elevation[0] < background_elevation[1]:
                raise ValueError(f"SDFOcc: need background_far > 0 and background_elevation (low, high) with low < high, "
                                 f"got {background_far}, {background_elevation}")
            # Logits of the background distance bins per direction (bins x elevation x azimuth).
            self.background_logits = nn.Parameter(torch.zeros(1, background_bins, *background_map_hw))
        self.background_far = float(background_far)
        self.background_elevation = (float(background_elevation[0]), float(background_elevation[1]))
        if sharpness_ramp is not None:
            if len(sharpness_ramp) != 3 or not 0 < sharpness_ramp[0] <= sharpness_ramp[1] or sharpness_ramp[2] < 1:
                raise ValueError(f"SDFOcc: sharpness_ramp must be (s_start > 0, s_end >= s_start, steps >= 1), got {sharpness_ramp}")
            sharpness_ramp = (float(sharpness_ramp[0]), float(sharpness_ramp[1]), int(sharpness_ramp[2]))
        self.sharpness_ramp = sharpness_ramp
        if image_blur is not None:
            if len(image_blur) != 2 or not image_blur[0] >= 0 or int(image_blur[1]) < 1:
                raise ValueError(f"SDFOcc: image_blur must be (sigma >= 0 pixels, steps >= 1), got {image_blur}")
            image_blur = (float(image_blur[0]), int(image_blur[1]))
        self.image_blur = image_blur
        if hash_schedule is not None:
            if representation.hash is None:
                raise ValueError("SDFOcc: hash_schedule needs a representation with a hash grid (hash_levels > 0)")
            if len(hash_schedule) != 2 or int(hash_schedule[0]) < 1 or int(hash_schedule[1]) < 1:
                raise ValueError(f"SDFOcc: hash_schedule must be (start_levels >= 1, steps_per_level >= 1), got {hash_schedule}")
            hash_schedule = (int(hash_schedule[0]), int(hash_schedule[1]))
        self.hash_schedule = hash_schedule
        self.background = background
        check_choice("SDFOcc", "depth_estimator", depth_estimator, ("expected", "median"))
        self.depth_estimator = depth_estimator
        if background != "none":
            # Colour of the background (logit); SelfOcc has no background.
            self.background_rgb = nn.Parameter(torch.zeros(3))
        # Training steps seen (drives the cosine anneal; saved, so a resumed run continues).
        self.register_buffer("train_step", torch.zeros((), dtype=torch.long))

    # ------------------------------------------------------------------ stages
    def encode(self, batch: Frames) -> TPVScene:
        """Encode the current frame's images and lift them into the TPV planes. In training
        mode, first sets this step's hash levels (``hash_schedule``), so the decoded grid and
        every later read of the step use the same ones.

        Raises:
            ValueError: if ``batch`` is not batched.
        """
        if not batch.batched:
            raise ValueError("SDFOcc: expected a batched Frames (images [B, T, V, 3, H, W]); use collate_frames")
        if self.training and self.hash_schedule is not None:
            start, every = self.hash_schedule
            self.representation.hash_active_levels = start + int(self.train_step) // every
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
            planes = rep.planes_from_lifted(lifted())
        else:
            with torch.no_grad():
                cells = self._cached(self._batch_key(batch, "lift"), lifted)
            planes = rep.planes_from_lifted(cells)
        if self.field_resolution is None:
            return TPVScene(planes=planes)
        sdf, feats = rep.decode_grid(planes, self.field_resolution)
        return TPVScene(planes=planes, sdf_grid=sdf, feature_grid=feats)

    def _batch_key(self, batch: Frames, what: str) -> tuple:
        """Identifies a batch's inputs for the caches of input-only (parameter-free) results."""
        return (what, str(batch.tokens), tuple(batch.images.shape), float(batch.images.sum()),
                float(batch.K.sum()), float(batch.T_ego_cam.sum()))

    def _cached(self, key: tuple, compute: Callable):
        """``compute()`` once per key (a few entries are kept in memory; never saved)."""
        cache = self.__dict__.setdefault("_input_cache", {})
        if key not in cache:
            if len(cache) >= 8:
                cache.pop(next(iter(cache)))
            cache[key] = compute()
        return cache[key]

    def _fields(self, scene: TPVScene, channels: int | None) -> list[Callable]:
        """One renderer field per batch element: grid lookups (the first ``channels`` feature
        channels, all for ``None``) or the TPV decoder."""
        batch = scene.planes.xy.shape[0]
        if scene.sdf_grid is None:
            return [self._field(scene.planes.select(b)) for b in range(batch)]
        rep = self.representation
        lower, upper = rep.field_box.box(scene.sdf_grid.device)
        feats = scene.feature_grid if channels is None else scene.feature_grid[:, :channels]
        return [GridField(scene.sdf_grid[b], feats[b], lower, upper, rep.outside_sdf, rep.field_box) for b in range(batch)]

    def _field(self, planes: TPVPlanes) -> Callable[[Tensor], FieldSamples]:
        """The renderer's field callable for one batch element's planes (batch dim 1)."""

        def field(xyz: Float[Tensor, "P 3"]) -> FieldSamples:
            sdf, rgb, logits = self.representation.query(planes, xyz[None])
            parts = [x[0] for x in (rgb, logits) if x is not None]
            features = torch.cat(parts, dim=-1) if parts else sdf.new_zeros(xyz.shape[0], 0)
            return FieldSamples(sdf=sdf[0], features=features)

        return field

    def render(self, scene: TPVScene, K: Tensor, T_ego_cam: Tensor, grid: PixelGrid, times=None, features=True) -> RenderedViews:
        """NeuS rendering of the rays through ``grid.pixels`` of every camera (the field is
        static: ``times`` is ignored). Depth is the opacity-normalised expected distance
        times each ray's depth per unit distance (SelfOcc; with a ``background``, the expected
        distance including the background sample); ``sample_points`` are detached;
        ``extras["sdf_gradients"]`` holds the SDF gradients at the samples (eikonal, decoder
        field only), ``extras["dist"]`` the distance along each ray, ``extras["sample_sdf"]``
        the SDF at the samples and ``extras["ray_far"]`` where it leaves the box (metres).
        ``features=False`` renders geometry only (grid field: no colour / logits are read); a grid field reads the
        semantic channels only when the semantic objective is on."""
        batch, views = K.shape[:2]
        R = grid.num_rays
        uv = grid.pixels.to(K.device)
        lower, upper = self.representation.field_box.box(uv.device)
        rays, near, far = rays_in_box(K, T_ego_cam, uv.expand(batch, views, -1, -1), lower, upper, self.near, self.far)
        rep = self.representation
        if not features:
            channels = 0
        elif self.loss_weights.get("semantic", 0) > 0 and rep.num_classes:
            channels = None
        else:
            channels = 3 * rep.rgb
        fields = self._fields(scene, channels)
        outputs = [
            self.renderer(
                fields[b],
                rays.origins[b].reshape(-1, 3),
                rays.directions[b].reshape(-1, 3),
                near[b].reshape(-1),
                far[b].reshape(-1),
                compute_gradients=scene.sdf_grid is None,
            )
            for b in range(batch)
        ]

        def stack(name: str) -> Tensor:
            return torch.stack([getattr(o, name) for o in outputs]).reshape(batch, views, R, *getattr(outputs[0], name).shape[1:])

        opacity = stack("opacity")
        ray_far = far.reshape(batch, views, R).clamp_min(self.near)
        feats = stack("features")
        points, weights, sample_sdf, t = stack("points"), stack("weights"), stack("sdf"), stack("t")
        normals = None
        if self.photometric_patch_warp == "plane" and scene.sdf_grid is not None and self.training:
            normals = self._grid_normals(scene, points)
        if self.background != "none":
            # The leftover transmittance stops at the background: one more sample there,
            # outside the field.
            leftover = (1.0 - opacity).clamp_min(0.0)
            t_bg = ray_far
            if self.background == "horizon":
                exit_xy = (rays.origins + rays.directions * ray_far[..., None])[..., :2]
                side = ((exit_xy - lower[:2]).abs() < 1e-3).any(-1) | ((exit_xy - upper[:2]).abs() < 1e-3).any(-1)
                t_bg = torch.where(side, torch.full_like(ray_far, self.far), ray_far)
            # A ray leaving through the bottom of the box went through the ground.
            bottom = (rays.origins[..., 2] + rays.directions[..., 2] * ray_far - lower[2]).abs() < 1e-3
            if self.background == "far":
                t_bg = torch.where(bottom, ray_far, torch.full_like(ray_far, self.far))
            if self.background == "learned":
                t_bg, share = self._background_bins(rays.directions, ray_far)  # [B V R K] each
                # Its leftover stops at the exit (bin 0), or a transparent road would let the
                # bins beyond explain any colour.
                share = torch.where(bottom[..., None], F.one_hot(torch.zeros_like(bottom, dtype=torch.long), share.shape[-1]).to(share.dtype), share)
            else:
                t_bg, share = t_bg[..., None], torch.ones_like(t_bg[..., None])
            bg_weights = leftover[..., None] * share
            dist = torch.stack([o.dist for o in outputs]).reshape(batch, views, R) + (bg_weights * t_bg).sum(-1)
            exit_points = rays.origins[..., None, :] + rays.directions[..., None, :] * t_bg[..., None]
            points = torch.cat([points, exit_points], dim=-2)
            weights = torch.cat([weights, bg_weights], dim=-1)
            t = torch.cat([t, t_bg], dim=-1)
            if normals is not None:  # the background has no plane
                normals = torch.cat([normals, normals.new_zeros(*normals.shape[:-2], t_bg.shape[-1], 3)], dim=-2)
            sample_sdf = torch.cat([sample_sdf, torch.full_like(sample_sdf[..., :1], rep.outside_sdf).expand(*sample_sdf.shape[:-1], t_bg.shape[-1])], dim=-1)
            if rep.rgb and feats.shape[-1] >= 3:
                bg = torch.cat([torch.sigmoid(self.background_rgb), feats.new_zeros(feats.shape[-1] - 3)])
                feats = feats + leftover[..., None] * bg
        else:
            # SelfOcc: the normalised expected distance clipped to the ray's sample range.
            dist = torch.stack([o.normalized_dist() for o in outputs]).reshape(batch, views, R)
            dist = torch.minimum(dist.clamp_min(self.near), ray_far)
        if self.depth_estimator == "median":
            dist = median_distance(weights.detach(), t)
        grads = [o.sdf_gradients for o in outputs]
        extras = {"sdf_gradients": torch.stack(grads)} if all(g is not None for g in grads) else {}
        extras["dist"] = dist
        extras["sample_sdf"] = sample_sdf
        extras["sample_dist"] = t
        if normals is not None:
            extras["sample_normals"] = normals
        extras["ray_far"] = far.reshape(batch, views, R)
        extras["ray_far_depth"] = extras["ray_far"] * rays.depth_per_dist
        return RenderedViews(
            depth=dist * rays.depth_per_dist,
            opacity=opacity,
            pixels=uv.expand(batch, views, -1, -1),
            image_hw=grid.image_hw,
            grid_hw=grid.grid_hw,
            rgb=feats[..., :3] if rep.rgb and feats.shape[-1] >= 3 else None,
            semantic_logits=feats[..., 3 * rep.rgb :] if rep.num_classes and feats.shape[-1] > 3 * rep.rgb else None,
            sample_points=points.detach(),
            sample_weights=weights,
            extras=extras,
        )

    def _background_bins(
        self, directions: Float[Tensor, "B V R 3"], t_exit: Float[Tensor, "B V R"]
    ) -> tuple[Float[Tensor, "B V R K"], Float[Tensor, "B V R K"]]:
        """Distances (metres along the ray) of the "learned" background's bins and each
        bin's share of the leftover transmittance (softmax of the direction's logits)."""
        K, (Hm, Wm) = self.background_logits.shape[1], self.background_logits.shape[-2:]
        d = directions / directions.norm(dim=-1, keepdim=True).clamp_min(1e-9)
        azimuth = torch.atan2(d[..., 1], d[..., 0])
        elevation = torch.asin(d[..., 2].clamp(-1.0, 1.0))
        lo, hi = self.background_elevation
        # One wrapped column on each side, so azimuth +-pi meet (align_corners=False).
        logits = self.background_logits
        logits = torch.cat([logits[..., -1:], logits, logits[..., :1]], dim=-1)
        gx = azimuth / math.pi * Wm / (Wm + 2)
        gy = 2.0 * (elevation - lo) / (hi - lo) - 1.0
        where = torch.stack([gx, gy], dim=-1).reshape(1, 1, -1, 2)
        read = F.grid_sample(logits, where, mode="bilinear", padding_mode="border", align_corners=False)
        share = torch.softmax(read[0, :, 0].T, dim=-1).reshape(*t_exit.shape, K)
        t0 = t_exit.clamp_min(1e-3)
        t1 = torch.maximum(torch.full_like(t0, self.background_far), t0)
        u = torch.linspace(0.0, 1.0, K, device=t0.device, dtype=t0.dtype)
        t_bins = 1.0 / ((1.0 - u) / t0[..., None] + u / t1[..., None])
        return t_bins, share

    def regularizers(self, scene: TPVScene, views: list[RenderedViews]) -> dict[str, Tensor]:
        """"eikonal" at the rendered samples (when gradients were computed) and "hessian",
        the finite-difference smoothness at ``hessian_points`` random rendered samples per
        batch element (stencils leaving the box do not count); with a decoded grid, "prior":
        the mean squared residual (m^2) of the grid's SDF from the analytic prior (``sdf_bias``),
        which keeps the field at the prior where no view constrains it (air the cameras do
        not see, ground at grazing angles) and costs little where the photometric term
        moves it.

        Raises:
            ValueError: a positive "prior" weight without ``field_resolution``.
        """
        out: dict[str, Tensor] = {}
        if scene.sdf_grid is not None:
            spacing = self._grid_spacing()
            out["eikonal"] = grid_eikonal_loss(scene.sdf_grid, spacing)
            out["hessian"] = grid_hessian_loss(scene.sdf_grid, spacing)
            if self.loss_weights.get("prior", 0) > 0:
                prior = self.representation.bias(self.representation.cell_centres(self.field_resolution))
                out["prior"] = (scene.sdf_grid - prior).square().mean()
            return out
        if self.loss_weights.get("prior", 0) > 0:
            raise ValueError("SDFOcc: the 'prior' regularizer needs field_resolution (a decoded grid)")
        grads = [v.extras["sdf_gradients"] for v in views if "sdf_gradients" in v.extras]
        if grads:
            out["eikonal"] = eikonal_loss(grads[0] if len(grads) == 1 else torch.cat([g.flatten(0, -2) for g in grads]))
        points = views[0].sample_points
        losses = []
        lower, upper = self.representation.field_box.box(points.device)
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
        stats = {"inv_s": self.renderer.inv_s.detach(), "cos_anneal": torch.tensor(float(self.renderer.cos_anneal_ratio))}
        if "search_confident" in self.__dict__:
            stats["search_confident"] = self.__dict__.pop("search_confident")
        return stats

    # ------------------------------------------------------------------ training rays
    def training_views(self, scene: TPVScene, batch: Frames) -> list[RenderedViews]:
        """The cameras of the training frame(s) (``train_frames``) on the ``rays_hw`` grid:
        per-cell jitter, SelfOcc's strided sub-grid or pixel patches (``ray_sampling``); advances the cosine anneal and the sharpness ramp
        in training mode."""
        if self.training:
            if self.cos_anneal_steps:
                self.renderer.cos_anneal_ratio = min(1.0, float(self.train_step) / self.cos_anneal_steps)
            if self.sharpness_ramp is not None:
                s0, s1, steps = self.sharpness_ramp
                frac = min(1.0, float(self.train_step) / steps)
                self.renderer.min_inv_s.fill_(s0 * (s1 / s0) ** frac)
            self.train_step += 1
            if self.loss_weights.get("keypoint_depth", 0.0) > 0:
                # the "keypoint_depth" objective renders its own rays of this step's scene
                self.__dict__["_step_scene"] = scene
        return super().training_views(scene, batch)

    def train(self, mode: bool = True) -> SDFOcc:
        """``nn.Module.train``; evaluation mode also restores every hash level (``hash_schedule``)."""
        super().train(mode)
        if not mode:
            self.representation.hash_active_levels = None
        return self

    def blur_sigma(self) -> float:
        """The ``image_blur`` standard deviation (pixels) at the current training step; 0
        outside training or without ``image_blur``."""
        if self.image_blur is None or not self.training:
            return 0.0
        sigma, steps = self.image_blur
        # train_step was advanced by training_views: the step being trained is train_step - 1.
        return sigma * max(0.0, 1.0 - (float(self.train_step) - 1.0) / steps)

    def objective_batch(self, batch: Frames) -> Frames:
        """The batch with its images blurred by :meth:`blur_sigma` (``image_blur``)."""
        sigma = self.blur_sigma()
        if sigma <= 0:
            return batch
        images = gaussian_blur(batch.images.flatten(0, 2), sigma).reshape(batch.images.shape)
        return replace(batch, images=images)

    def training_grid(self, image_hw: tuple[int, int], device: torch.device | str) -> PixelGrid:
        """The ``rays_hw`` training pixels of ``ray_sampling``: jittered cells, SelfOcc's
        strided sub-grid, or patches of neighbouring pixels."""
        if self.ray_sampling == "jitter":
            return super().training_grid(image_hw, device)
        if self.ray_sampling == "strided":
            pixels = strided_pixel_grid(*image_hw, *self.rays_hw, random=self.training, device=device)
        else:
            pixels = patch_pixel_grid(*image_hw, *self.rays_hw, self.patch_size, self.patch_stride,
                                      jitter=self.training, device=device)
        return PixelGrid(tuple(image_hw), self.rays_hw, pixels, self.training)

    def _depth_objective(self, views: RenderedViews, batch: Frames, mask: Tensor) -> Tensor:
        """The depth term with ``depth_beyond_exit`` / ``depth_norm``: L1 (metres) or
        relative L1 ``|d - d*| / d*`` on the expected depth, optionally without the targets
        that lie beyond the ray's exit from the field box (no surface in the field can
        render them)."""
        target = depth_target(views, batch, self.depth_source)
        if self.depth_beyond_exit == "drop":
            mask = mask & (target <= views.extras["ray_far_depth"])
        return masked_mean(self._depth_error(views.depth, target), mask & (target > 0))

    def _depth_error(self, rendered: Tensor, target: Tensor) -> Tensor:
        """Per-ray error of the depth terms: ``|d - d*|`` (metres) or, with
        ``depth_norm="relative"``, ``|d - d*| / d*``."""
        error = (rendered - target).abs()
        return error / target.clamp_min(1e-6) if self.depth_norm == "relative" else error

    def _keypoint_depth_objective(self, views: RenderedViews, batch: Frames, mask: Tensor) -> Tensor | None:
        """Depth of rays through labelled pixels of the current frame's sparse depth maps.

        Sparse pseudo depth (keypoints triangulated from the images,
        :mod:`selfsup.pseudo.triangulation`) labels a few pixels; rays of the training grid
        rarely pass through them, and the nearest label of a ray's grid cell is often a
        different surface (a keypoint on a tree behind a pole). So this term renders its own
        rays, through the centres of up to ``keypoint_rays`` labelled pixels per camera drawn
        at random each step (outside the ego-car masks; of the current frame, or of every
        loaded frame with ``keypoint_frames="all"``, posed in the current ego frame: the field
        is static), geometry only, and compares their
        expected depth with the label (``depth_norm``; ``depth_beyond_exit="drop"`` skips
        labels beyond the ray's exit from the field box). Runs once per step (on the
        current frame's views). Source: DS-NeRF (Deng et al. 2022), depth supervision from
        sparse structure-from-motion points on rays through them.

        Raises:
            ValueError: the batch has no ``depth_maps``; called outside a training step.
        """
        if views.frame != 0:
            return None
        if batch.depth_maps is None:
            raise ValueError("SDFOcc: the keypoint_depth term needs sparse Frames.depth_maps (e.g. from "
                             "scripts/generate_pseudo_depth.py --backend triangulation)")
        scene = self.__dict__.pop("_step_scene", None)
        if scene is None:
            raise ValueError("SDFOcc: the keypoint_depth term runs inside a training step (after training_views)")
        maps = batch.depth_maps.float()  # [B T V H W]
        B, T, V, H, W = maps.shape
        frames = range(T) if self.keypoint_frames == "all" else range(1)
        T_cam = batch.T_ego0_cam() if len(frames) > 1 else batch.T_ego_cam
        rendered, targets = [], []
        for b in range(B):
            scene_b = TPVScene(planes=scene.planes.select(b),
                               sdf_grid=None if scene.sdf_grid is None else scene.sdf_grid[b : b + 1],
                               feature_grid=None if scene.feature_grid is None else scene.feature_grid[b : b + 1])
            for t in frames:
                labelled = (maps[b, t] > 0) & batch.valid_masks[b]  # [V H W]
                for v in range(V):
                    index = labelled[v].flatten().nonzero()[:, 0]
                    if index.numel() == 0:
                        continue
                    index = index[torch.randperm(index.numel(), device=index.device)[: self.keypoint_rays]]
                    rows, cols = index // W, index % W
                    pixels = torch.stack([cols, rows], dim=-1).to(maps.dtype) + 0.5
                    grid = PixelGrid((H, W), (1, index.numel()), pixels, False)
                    out = self.render(scene_b, batch.K[b : b + 1, t, v : v + 1], T_cam[b : b + 1, t, v : v + 1], grid,
                                      features=False)
                    target = maps[b, t, v].flatten()[index]
                    keep = torch.ones_like(target, dtype=torch.bool)
                    if self.depth_beyond_exit == "drop":
                        keep = target <= out.extras["ray_far_depth"].flatten()
                    rendered.append(out.depth.flatten()[keep])
                    targets.append(target[keep])
        if not targets or sum(t.numel() for t in targets) == 0:
            return None
        return self._depth_error(torch.cat(rendered), torch.cat(targets)).mean()

    def _free_space_objective(self, views: RenderedViews, batch: Frames, mask: Tensor) -> Tensor:
        """``selfsup.losses.free_space_loss`` on the rendered rays: the samples a ray passes
        before it stops must have SDF above ``free_space_margin``."""
        if self.free_space_min_opacity > 0:
            mask = mask & (views.opacity.detach() >= self.free_space_min_opacity)
        return free_space_loss(views.extras["sample_sdf"], views.sample_weights, mask, self.free_space_margin)

    def _grid_spacing(self) -> tuple:
        """The decoded grid's spacing per axis for finite differences: metres per cell, or,
        with a shell warp (irregular cells in metres), the cell centres' coordinates."""
        rep = self.representation
        if rep.field_box.has_shell:
            return tuple(rep._cell_centres(k, n) for k, n in enumerate(self.field_resolution))
        return tuple(float(x) for x in grid_spacing(self.field_resolution, *rep.field_box.box()))

    @torch.no_grad()
    def _grid_normals(self, scene: TPVScene, points: Float[Tensor, "B V R S 3"]) -> Float[Tensor, "B V R S 3"]:
        """SDF gradients of the decoded grid (central differences, ``torch.gradient``) read
        trilinearly at ``points`` (ego frame, metres); zero outside the box."""
        rep = self.representation
        spacing = list(self._grid_spacing())
        lower, upper = rep.field_box.box(points.device)
        out = []
        for b in range(points.shape[0]):
            sdf = scene.sdf_grid[b].detach()
            grad = torch.stack(torch.gradient(sdf, spacing=spacing, dim=(0, 1, 2)))
            field = GridField(sdf, grad, lower, upper, rep.outside_sdf, rep.field_box)
            flat = points[b].reshape(-1, 3)
            n = field(flat).features
            inside = ((flat >= lower) & (flat <= upper)).all(-1, keepdim=True)
            out.append(torch.where(inside, n, torch.zeros_like(n)).reshape(points.shape[1:]))
        return torch.stack(out)

    def _distortion_objective(self, views: RenderedViews, batch: Frames, mask: Tensor) -> Tensor:
        """``selfsup.losses.distortion_loss`` on the rendered rays, the background sample
        (leftover transmittance) included: each ray should stop at one distance."""
        return distortion_loss(views.sample_weights, views.extras["sample_dist"], mask)

    # ------------------------------------------------------------------ depth search
    def _search_objective(self, views: RenderedViews, batch: Frames, mask: Tensor) -> Tensor | None:
        """L1 between the log rendered distance and the log distance of the confident
        photometric depth-search hypothesis at each ray's pixel (frame 0 only)."""
        if batch.images.shape[1] < 2 or views.frame != 0:
            return None
        found_dist, found_ok = self._cached(self._batch_key(batch, "search"), lambda: self.search_depth(batch))
        B, V = views.depth.shape[:2]
        target = read_nearest(found_dist.unflatten(0, (B, V)), views.pixels)
        keep = read_nearest(found_ok.unflatten(0, (B, V)), views.pixels) & mask
        rendered = views.extras["dist"].clamp_min(1e-3)
        self.__dict__["search_confident"] = keep.float().mean().detach()
        return masked_mean((rendered.log() - target.log()).abs(), keep)

    @torch.no_grad()
    def search_depth(self, batch: Frames, chunk: int = 2048) -> tuple[Tensor, Tensor]:
        """The non-local photometric depth search (``selfsup.losses.stereo``) at every pixel
        centre of every current-frame image against all neighbouring frames. It depends on
        the images and poses only, so training computes it once per batch content.

        Returns:
            ``(dist, confident)``, ``[B*V, H, W]`` each: the best candidate's distance
            along the pixel's ray (metres) and whether it is confident.
        """
        B, T, V, _, H, W = batch.images.shape
        device = batch.images.device
        uv = jittered_pixel_grid(H, W, H, W, jitter=False, device=device)
        rays = pixel_rays(batch.K[:, 0], batch.T_ego_cam[:, 0], uv.expand(B, V, -1, -1))
        lower, upper = self.representation.field_box.box(device)
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
                        batch.images[b, 0, v][None], batch.images[b, 1:, v][:, None],
                        batch.K[b, 0, v][None], batch.K[b, 1:, v][:, None], T_ego0_cam[b, 1:, v][:, None],
                        rays.origins[b, v, s:e][None], rays.directions[b, v, s:e][None], uv[s:e][None],
                        t_far[b, v, s:e][None], candidates, source_valid=source_valid[:, n : n + 1],
                        patch=self.search_patch,
                    )
                    dist[n, s:e], ok[n, s:e] = found.dist[0], found.confident[0]
        return dist.reshape(B * V, H, W), ok.reshape(B * V, H, W)

    @torch.no_grad()
    def predict_occupancy(self, scene: TPVScene) -> OccupancyPrediction:
        """Occ3D labels of the current frame: occupied where SDF <= ``sdf_threshold`` at the
        voxel centres, semantic argmax there (label 0 without semantic channels), 17 free;
        no voxel logits."""
        rep = self.representation
        out = []
        device = scene.planes.xy.device
        if scene.sdf_grid is not None:
            lower, upper = rep.field_box.box(device)
            for b in range(scene.sdf_grid.shape[0]):
                field = GridField(scene.sdf_grid[b], scene.feature_grid[b, 3 * rep.rgb :], lower, upper, rep.outside_sdf,
                                  rep.field_box)

                def lookup(xyz: Tensor, field: GridField = field) -> tuple[Tensor, Tensor]:
                    v = field(xyz)
                    return v.sdf, v.features if v.features.shape[1] > 0 else v.sdf.new_zeros(xyz.shape[0], 1)

                out.append(voxelize_field(lookup, rep.grid, self.sdf_threshold, device=device))
            return OccupancyPrediction(labels=torch.stack(out))
        for b in range(scene.planes.xy.shape[0]):
            planes_b = scene.planes.select(b)

            def query(xyz: Tensor, planes_b: TPVPlanes = planes_b) -> tuple[Tensor, Tensor]:
                sdf, _, logits = rep.query(planes_b, xyz[None])
                return sdf[0], logits[0] if logits is not None else sdf.new_zeros(xyz.shape[0], 1)

            out.append(voxelize_field(query, rep.grid, self.sdf_threshold, device=device))
        return OccupancyPrediction(labels=torch.stack(out))
