"""BEV / voxel-volume occupancy (FlashOcc, BEVDet-Occ style), supervised by Occ3D voxel labels
and / or by rendering (RenderOcc style), on the staged model contract.

``encode``: image encoder -> one feature level -> LSS (forward) or backward lifting into a
BEV plane ``[B, C, X, Y]`` or a volume ``[B, C, X, Y, Z]`` on the Occ3D grid -> optional
BEVDet4D temporal fusion with the batch's past frames (aligned by ego motion) -> BEV / 3D
encoder -> shared voxel head -> logits ``[B, X, Y, Z, 18]`` (free = 17).

``render``: the logits are a density and semantic field: with ``p_free`` the softmax
probability of "free", a voxel's density is ``sigma = -ln(p_free) / voxel_size`` (1/m), so
that a ray crossing one voxel has opacity ``1 - p_free`` = the predicted occupancy
probability; the 17 semantic logits are composited as features. Rays are sampled in
``num_samples`` (stratified in training) intervals between ``near`` / ``far`` clipped to the
grid box, the fields read trilinearly, composited with ``render.volume.render_density``.
Any view objective (LiDAR / pseudo depth, 2D semantics, photometric reprojection through
the sample points) therefore trains the same logits that the voxel objectives supervise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float, UInt8
from torch import Tensor, nn

from render.rays import pixel_rays, ray_aabb
from render.volume import render_density
from selfsup.data.frames import Frames
from selfsup.encoders.bev import BEVEncoder2D, VoxelEncoder3D
from selfsup.encoders.timm_fpn import TimmFPN
from selfsup.grid import OCC3D_FREE, OCC3D_GRID, VoxelGrid
from selfsup.model_api import OccupancyModel, OccupancyPrediction, PixelGrid, RenderedViews, Scene
from selfsup.objectives import depth_objective, photometric_objective, semantic_objective
from selfsup.objectives.voxel import voxel_ce_objective
from selfsup.representations.lss import BackwardLift, LSSLift, depth_bin_bce, lidar_depth_targets
from selfsup.representations.temporal import TemporalConcatFusion, warp_to_current
from selfsup.representations.voxel_decoders import ChannelToHeightHead, Conv3DHead, logits_to_labels


@dataclass
class BEVScene(Scene):
    """The encoded volume of the current frame.

    Attributes:
        features: encoder output on the grid, ``[B, C, X, Y]`` (BEV) or ``[B, C, X, Y, Z]``.
        logits: voxel logits of the shared head, ``[B, X, Y, Z, K]`` (K = 18, free = 17).
        depth_probs: LSS depth distributions of the current frame, ``[B, V, D, h, w]``, or
            None (backward lifting).
        lss_depth: the LiDAR depth-bin BCE of ``depth_probs`` when computed, else None.
    """

    features: Tensor
    logits: Float[Tensor, "B X Y Z K"]
    depth_probs: Tensor | None = None
    lss_depth: Tensor | None = None


def default_objectives() -> dict:
    """Voxel cross-entropy (with the camera mask) plus the rendering objectives; which count
    is decided by ``loss_weights``."""
    return {"voxel": voxel_ce_objective, "depth": depth_objective, "semantic": semantic_objective,
            "photometric": photometric_objective}


class BEVOcc(OccupancyModel):
    """BEV / voxel occupancy with shared voxel heads (FlashOcc M1, BEVDet-Occ 3D, tiny).

    Args:
        encoder: image encoder; ``encoder.backbone`` gets the backbone lr multiplier.
        lift: :class:`LSSLift` (forward) or :class:`BackwardLift`; its ``collapse_z`` must
            match the encoder / head (BEV plane or volume).
        bev_encoder: :class:`BEVEncoder2D` (plane) or :class:`VoxelEncoder3D` (volume).
        head: :class:`ChannelToHeightHead` (plane) or :class:`Conv3DHead` (volume).
        grid: the voxel grid (Occ3D).
        feature_level: which encoder level is lifted (FlashOcc: stride 16).
        objectives: name -> objective (default :func:`default_objectives`).
        loss_weights: name -> weight; defaults: voxel 1, everything else 0.
        temporal: BEVDet4D fusion of ``history_frames`` (None: single frame).
        history_frames: indices into the batch's T frames fused as history (their features
            are computed without gradient, as in BEVDet4D); a neighbour clamped to the current
            frame at a scene start is simply the current frame again.
        train_grid_hw: rays per camera for the rendering objectives (rows, cols).
        train_frames: "current" or "all" frames rendered in training.
        num_samples: ray intervals for rendering.
        near, far: rendering range along each ray, metres (clipped to the grid box).
        min_opacity: ``render_depth`` threshold.

    Raises:
        ValueError: a plane / volume mismatch between lift, encoder and head, channel counts
            that do not chain, or a history frame count that disagrees with ``temporal``.

    Source: FlashOcc (Yu et al. 2023), BEVDet-Occ (FlashOcc repository), BEVDet4D (Huang &
    Huang 2022), RenderOcc (Pan et al. 2024, rendering supervision of a voxel volume).
    """

    def __init__(
        self,
        encoder: TimmFPN,
        lift: LSSLift | BackwardLift,
        bev_encoder: BEVEncoder2D | VoxelEncoder3D,
        head: ChannelToHeightHead | Conv3DHead,
        grid: VoxelGrid = OCC3D_GRID,
        feature_level: int = 0,
        objectives: dict | None = None,
        loss_weights: dict[str, float] | None = None,
        temporal: TemporalConcatFusion | None = None,
        history_frames: tuple[int, ...] = (),
        train_grid_hw: tuple[int, int] = (16, 32),
        train_frames: str = "current",
        num_samples: int = 64,
        near: float = 0.5,
        far: float = 60.0,
        min_opacity: float = 0.05,
    ):
        super().__init__()
        plane = lift.collapse_z
        if plane != isinstance(bev_encoder, BEVEncoder2D) or plane != isinstance(head, ChannelToHeightHead):
            raise ValueError(
                f"BEVOcc: lift.collapse_z={plane} needs {'BEVEncoder2D + ChannelToHeightHead' if plane else 'VoxelEncoder3D + Conv3DHead'}, "
                f"got {type(bev_encoder).__name__} + {type(head).__name__}"
            )
        chain = [("encoder.out_channels", encoder.out_channels, "lift.in_channels", lift.in_channels),
                 ("lift.out_channels", lift.out_channels, "bev_encoder.in_channels", bev_encoder.in_channels),
                 ("bev_encoder.out_channels", bev_encoder.out_channels, "head.in_channels", head.conv.in_channels)]
        for a, va, b, vb in chain:
            if va != vb:
                raise ValueError(f"BEVOcc: {a} = {va} but {b} = {vb}; they must match")
        n_hist = 0 if temporal is None else temporal.num_history
        if len(history_frames) != n_hist:
            raise ValueError(f"BEVOcc: {len(history_frames)} history_frames but temporal fuses {n_hist}")
        if 0 in history_frames:
            raise ValueError("BEVOcc: history_frames index past frames (frame 0 is the current one)")
        if not 0 <= near < far or num_samples < 1:
            raise ValueError(f"BEVOcc: need 0 <= near < far and num_samples >= 1, got {near}, {far}, {num_samples}")
        self.encoder = encoder
        self.lift = lift
        self.bev_encoder = bev_encoder
        self.head = head
        self.temporal = temporal
        self.grid = grid
        self.feature_level = feature_level
        self.history_frames = tuple(history_frames)
        self.train_grid_hw = tuple(train_grid_hw)
        self.train_jitter = True
        self.train_frames = train_frames
        self.num_samples = num_samples
        self.near, self.far = near, far
        self.min_opacity = min_opacity
        self.setup_objectives(objectives if objectives is not None else default_objectives(), loss_weights or {},
                              regularizer_names=("lss_depth",) if isinstance(lift, LSSLift) else (),
                              defaults={"voxel": 1.0})

    # ------------------------------------------------------------------ encode
    def _lift_frame(self, batch: Frames, t: int) -> tuple[Tensor, Tensor | None]:
        images = batch.images[:, t]
        feats = self.encoder(images)[self.feature_level]
        stride = self.encoder.strides[self.feature_level]
        if isinstance(self.lift, LSSLift):
            return self.lift(feats, stride, batch.K[:, t], batch.T_ego_cam[:, t])
        return self.lift(feats, stride, batch.K[:, t], batch.T_ego_cam[:, t], tuple(images.shape[-2:])), None

    def encode(self, batch: Frames) -> BEVScene:
        """Lift, fuse, encode and decode the current frame (see the module docstring)."""
        if not batch.batched:
            raise ValueError("BEVOcc.encode: expected a batched Frames (use collate_frames)")
        lifted, depth = self._lift_frame(batch, 0)
        if self.temporal is not None:
            history = []
            T_ego0_global = torch.linalg.inv(batch.T_global_ego[:, 0].double())
            for t in self.history_frames:
                if t >= batch.images.shape[1]:
                    raise ValueError(f"BEVOcc: history frame {t} but the batch has {batch.images.shape[1]} frames")
                with torch.no_grad():
                    past, _ = self._lift_frame(batch, t)
                T_0_t = (T_ego0_global @ batch.T_global_ego[:, t].double()).to(past.dtype)
                history.append(warp_to_current(past, T_0_t, self.grid))
            lifted = self.temporal(lifted, history)
        features = self.bev_encoder(lifted)
        logits = self.head(features)
        lss_depth = None
        if depth is not None and self.training and self.loss_weights.get("lss_depth", 0.0) > 0:
            lss_depth = self._lss_depth_loss(batch, depth)
        return BEVScene(features=features, logits=logits, depth_probs=depth, lss_depth=lss_depth)

    def _lss_depth_loss(self, batch: Frames, depth: Tensor) -> Tensor:
        """BEVDet depth supervision of the current frame's LSS distributions by its LiDAR."""
        stride = self.encoder.strides[self.feature_level]
        image_hw = tuple(batch.images.shape[-2:])
        h, w = depth.shape[-2:]
        targets = []
        for b in range(depth.shape[0]):
            pts = batch.points_ego[b][0]
            tgt = lidar_depth_targets(pts, batch.K[b, 0], batch.T_ego_cam[b, 0], image_hw, stride)
            targets.append(F.pad(tgt, (0, w - tgt.shape[-1], 0, h - tgt.shape[-2])))
        return depth_bin_bce(depth.flatten(0, 1), torch.stack(targets).flatten(0, 1), self.lift.bins)

    # ------------------------------------------------------------------ occupancy
    def predict_occupancy(self, scene: BEVScene) -> OccupancyPrediction:
        """Argmax labels of the shared head's logits (with gradient on the logits)."""
        return OccupancyPrediction(labels=logits_to_labels(scene.logits.detach()), logits=scene.logits)

    def regularizers(self, scene: BEVScene, views: list[RenderedViews]) -> dict[str, Tensor]:
        return {} if scene.lss_depth is None else {"lss_depth": scene.lss_depth}

    # ------------------------------------------------------------------ rendering
    def density_fields(self, logits: Float[Tensor, "B X Y Z K"]) -> tuple[Tensor, Tensor]:
        """(density ``[B, 1, X, Y, Z]`` in 1/m, semantic logits ``[B, 17, X, Y, Z]``) of the
        voxel logits (see the module docstring)."""
        log_free = F.log_softmax(logits, dim=-1)[..., OCC3D_FREE]
        sigma = (-log_free).clamp_min(0.0) / self.grid.voxel_size
        sem = torch.cat([logits[..., :OCC3D_FREE], logits[..., OCC3D_FREE + 1 :]], dim=-1)
        return sigma[:, None], sem.permute(0, 4, 1, 2, 3)

    def render(
        self,
        scene: BEVScene,
        K: Float[Tensor, "B V 3 3"],
        T_ego_cam: Float[Tensor, "B V 4 4"],
        grid: PixelGrid,
        times: Float[Tensor, "B"] | None = None,
        features: bool = True,
    ) -> RenderedViews:
        """Volume-render the voxel density and semantics (static: ``times`` is ignored)."""
        B, V = K.shape[:2]
        R, S = grid.num_rays, self.num_samples
        pixels = grid.pixels.to(K.device).expand(B, V, R, 2)
        rays = pixel_rays(K, T_ego_cam, pixels)
        lower, upper = self.grid.box(K.device)
        t_near, t_far, hit = ray_aabb(rays.origins, rays.directions, lower, upper)
        near = t_near.clamp_min(self.near)
        far = torch.minimum(t_far, torch.full_like(t_far, self.far)).maximum(near + 1e-3)
        u = torch.arange(S + 1, device=K.device, dtype=K.dtype) / S
        edges = near[..., None] + (far - near)[..., None] * u  # [B V R S+1]
        if self.training:
            # stratified: one random position inside each interval, shared by the interval's edges
            width = (far - near)[..., None] / S
            jitter = (torch.rand(*edges.shape[:-1], S, device=K.device, dtype=K.dtype) - 0.5) * width
            mids = 0.5 * (edges[..., 1:] + edges[..., :-1]) + jitter
        else:
            mids = 0.5 * (edges[..., 1:] + edges[..., :-1])
        points = rays.origins[..., None, :] + rays.directions[..., None, :] * mids[..., None]  # [B V R S 3]
        sigma, sem = self.density_fields(scene.logits)
        fields = torch.cat([sigma, sem], dim=1) if features else sigma
        unit = 2.0 * (points - lower) / (upper - lower) - 1.0
        coords = unit[..., [2, 1, 0]].reshape(B, 1, 1, -1, 3)  # grid_sample order (z, y, x)
        read = F.grid_sample(fields, coords, mode="bilinear", padding_mode="zeros", align_corners=False)
        read = read.reshape(B, fields.shape[1], V, R, S).permute(0, 2, 3, 4, 1)  # [B V R S C]
        dens = read[..., 0] * hit[..., None].to(read.dtype)
        feats = read[..., 1:] if features else read[..., :0]
        N = B * V * R
        out = render_density(dens.reshape(N, S), edges[..., :-1].reshape(N, S), edges[..., 1:].reshape(N, S),
                             feats.reshape(N, S, feats.shape[-1]), backend="torch")
        opacity = out.opacity.reshape(B, V, R)
        acc_dist = out.dist.reshape(B, V, R)
        dist = acc_dist / opacity.clamp_min(1e-6)
        return RenderedViews(
            depth=dist * rays.depth_per_dist,
            opacity=opacity,
            pixels=pixels,
            image_hw=grid.image_hw,
            grid_hw=grid.grid_hw,
            accumulated_depth=acc_dist * rays.depth_per_dist,
            semantic_logits=out.features.reshape(B, V, R, -1) if features else None,
            sample_points=points.detach(),
            sample_weights=out.weights.reshape(B, V, R, S),
        )
