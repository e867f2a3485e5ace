"""GaussianFlowOcc-style occupancy model: image features -> 3D Gaussians + temporal flow,
trained by splatting them into the cameras of the current and neighbouring frames.

Source: Boeder et al., "GaussianFlowOcc" (2025); facts in REFERENCES.md (semantic CE x2 on
labelled pixels, depth MSE x0.05 on pixels with depth > 0, pseudo labels beyond 40 m
dropped, voxelization with ``nbh`` = 4 and density threshold 0.05, z >= 11 cleared).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import torch
from jaxtyping import Float
from torch import Tensor

from render.gaussians import rasterize_gaussians
from selfsup.camera import scale_intrinsics
from selfsup.data.frames import Frames
from selfsup.encoders.timm_fpn import TimmFPN
from selfsup.grid import OCC3D_GRID, VoxelGrid
from selfsup.losses.gaussian import flow_regularization
from selfsup.losses.photometric import masked_mean
from selfsup.model_api import (
    ModelOutput, OccupancyModel, OccupancyPrediction, PixelGrid, RenderedViews, Scene, check_choice, depth_image,
    read_nearest,
)
from selfsup.objectives import depth_objective, depth_target, photometric_objective, rgb_objective, semantic_objective
from selfsup.representations.gaussians import (
    Gaussians,
    GaussianDecoder,
    GaussianFlow,
    TemporalContext,
    carry_to_next_frame,
    voxelize_gaussians,
)

GAUSSIAN_OCC_LOSS_WEIGHTS: dict[str, float] = {
    "semantic": 2.0,  # GaussianFlowOcc
    "depth": 0.05,  # GaussianFlowOcc
    "rgb": 0.0,  # only meaningful when the decoder predicts colour
    "flow_reg": 0.01,
}
GAUSSIAN_REGULARIZERS = ("flow_reg",)


@dataclass
class GaussianScene(Scene):
    """The Gaussians of a batch (``Gaussians`` with a leading B, ego frame of the current frame)."""

    gaussians: Gaussians


def splat(
    gaussians: Gaussians,
    features: Float[Tensor, "N D"],
    T_ego_cam: Float[Tensor, "V 4 4"],
    K: Float[Tensor, "V 3 3"],
    height: int,
    width: int,
    backend: str = "auto",
):
    """Render one sample's Gaussians (ego frame of the current frame) into V cameras.

    Args:
        gaussians: one sample (no batch dim); ``means`` already moved to the target time.
        features: per-Gaussian channels to alpha-composite (semantic logits, colour).
        T_ego_cam: each camera (OpenCV) -> the Gaussians' ego frame; a neighbour frame's
            camera is ``Frames.T_ego0_cam()[t]``, so ego motion comes from the poses.
        K: intrinsics at (height, width), pixels.

    Returns:
        ``render.gaussians.GaussianRenderOutput`` ([V, H, W, D] features, depth, alpha).
    """
    return rasterize_gaussians(
        gaussians.means,
        gaussians.quats,
        gaussians.scales,
        gaussians.opacities,
        features,
        torch.linalg.inv(T_ego_cam),
        K,
        width,
        height,
        backend=backend,
    )


class GaussianOcc(OccupancyModel):
    """3D semantic Gaussians with temporal flow, supervised by splatting (GaussianFlowOcc).

    ``encode`` decodes Gaussians from the current frame's images (t = 0); training moves
    them to every frame's timestamp with the flow, renders them into every camera of every
    frame (camera poses relative to the current ego frame, so ego motion comes from the
    poses) at ``render_hw`` and scores the renders with the shared objectives
    (``selfsup.objectives``): depth, semantics when the batch has labels, rendered colour
    when the decoder predicts it.

    Depth targets (``depth_source``), MSE on the ``depth_loss_on`` depth:
        "lidar": each frame's LiDAR points projected into that frame's cameras (nearest
            return per pixel of the render grid). With ``supervise_current_depth=False``
            (default) only the neighbour frames (t > 0) are supervised, so depth evaluation
            against the *current* frame's LiDAR stays honest.
        "pseudo": dense maps ``Frames.depth_maps`` ``[B, T, V, H, W]`` (metres, 0 =
            unknown), every frame (``NuScenesFrames(pseudo_depth_dir=...)`` reads
            GaussianFlowOcc's Metric3D files).
    Semantic labels: ``Frames.semantic_maps`` ``[B, T, V, H, W]`` integer Occ3D classes,
    ``255`` or negative = unlabelled (``NuScenesFrames(pseudo_semantic_dir=...)``); the
    semantic loss is skipped without them. Targets farther than ``max_depth`` are dropped,
    and where ``depth_maps`` are present so are the semantic labels of pixels whose pseudo
    depth is beyond ``max_depth`` (GaussianFlowOcc drops both pseudo labels beyond 40 m).
    Maps are read at the render pixels' centres (nearest pixel), as for every model.

    Args:
        encoder: multi-camera image encoder (``TimmFPN``).
        decoder: image features -> Gaussians.
        flow: temporal flow; None renders every frame with static Gaussians.
        loss_weights: weights of the objectives ("semantic", "depth", "rgb",
            "photometric" - unsupported by a rasteriser -, extra ``objectives``) and
            "flow_reg"; missing keys take :data:`GAUSSIAN_OCC_LOSS_WEIGHTS`.
        depth_source: "lidar" or "pseudo".
        supervise_current_depth: also supervise depth on the current frame (t = 0).
        render_hw: (height, width) of the rendered images (intrinsics are rescaled);
            None renders at the input image size.
        max_depth: depth targets beyond this are ignored, metres.
        min_depth: LiDAR points closer than this to a camera are ignored, metres.
        backend: rasterizer backend ("auto": gsplat on CUDA, PyTorch on CPU).
        grid, nbh, density_threshold, max_z_index: voxelization, see
            :func:`selfsup.representations.gaussians.voxelize_gaussians`.
        min_opacity: ``render_depth`` reports 0 where the accumulated alpha is below this.
        depth_loss_on: "accumulated" (sum_i w_i z_i, GaussianFlowOcc's choice: it also
            pushes the accumulated alpha towards 1 where there is a target) or "expected"
            (accumulated / alpha, the depth ``render_depth`` reports).
        objectives: extra or replacement objectives, name -> callable.
        eval_depth: what ``render_depth`` returns: "expected" (accumulated / alpha, 0 below
            ``min_opacity``; our default) or "accumulated" (sum_i w_i z_i, gsplat's "D", what
            GaussianFlowOcc evaluates).
        semantic_weight: voxelizer logit weighting, "falloff" (GaussianFlowOcc) or
            "opacity_falloff" (see ``splat_gaussians_to_grid``).
        temporal_frames: with the decoder's temporal attention, how many of the batch's past
            frames (most recent ones) build the context in training (GaussianFlowOcc uses 5
            previous frames; here they are the past frames the neighbour draw brought).
        recurrent_eval: in eval mode, carry each sample's Gaussians to the next sample of
            the same scene (evaluate a scene in time order, batch size 1); False decodes
            every sample without temporal context.

    Temporal attention (decoder ``temporal_attention`` not "none"): in training the context
    of the current frame is built recurrently without gradient from the batch's past frames,
    oldest first (:meth:`_history_context`, GaussianFlowOcc ``prepare_prev_feat``); in
    evaluation from the previous sample of the same scene (:meth:`_recurrent`,
    GaussianFlowOcc ``simple_test``). Evaluation never uses the batch's other frames as
    inputs: they are the targets of novel-view scoring.

    Raises:
        ValueError: unknown loss-weight key, depth source or ``depth_loss_on``.
    """

    train_jitter = False
    train_frames = "all"

    def __init__(
        self,
        encoder: TimmFPN,
        decoder: GaussianDecoder,
        flow: GaussianFlow | None = None,
        loss_weights: Mapping[str, float] | None = None,
        depth_source: str = "lidar",
        supervise_current_depth: bool = False,
        render_hw: tuple[int, int] | None = None,
        max_depth: float = 40.0,
        min_depth: float = 0.1,
        backend: str = "auto",
        grid: VoxelGrid = OCC3D_GRID,
        nbh: int = 4,
        density_threshold: float = 0.05,
        max_z_index: int | None = 11,
        min_opacity: float = 0.05,
        depth_loss_on: str = "accumulated",
        objectives: Mapping[str, Callable] | None = None,
        eval_depth: str = "expected",
        semantic_weight: str = "falloff",
        temporal_frames: int = 5,
        recurrent_eval: bool = True,
    ):
        super().__init__()
        check_choice("GaussianOcc", "depth_source", depth_source, ("lidar", "pseudo"))
        check_choice("GaussianOcc", "depth_loss_on", depth_loss_on, ("accumulated", "expected"))
        current = supervise_current_depth or depth_source == "pseudo"
        defaults: dict[str, Callable] = {
            "depth": functools.partial(
                depth_objective, source=depth_source, norm="l2", on=depth_loss_on, min_depth=min_depth,
                max_depth=max_depth, current_frame=current,
            ),
            "semantic": functools.partial(semantic_objective, max_depth=max_depth),
            "rgb": rgb_objective,
            "photometric": photometric_objective,
        }
        defaults.update(objectives or {})
        self.setup_objectives(defaults, loss_weights or {}, GAUSSIAN_REGULARIZERS, GAUSSIAN_OCC_LOSS_WEIGHTS)
        self.encoder = encoder
        self.decoder = decoder
        self.flow = flow
        self.depth_source = depth_source
        self.supervise_current_depth = supervise_current_depth
        self.render_hw = self.train_grid_hw = render_hw
        self.max_depth, self.min_depth = max_depth, min_depth
        self.backend = backend
        self.grid, self.nbh = grid, nbh
        self.density_threshold, self.max_z_index = density_threshold, max_z_index
        self.min_opacity = min_opacity
        self.depth_loss_on = depth_loss_on
        if eval_depth not in ("expected", "accumulated"):
            raise ValueError(f"GaussianOcc: eval_depth must be 'expected' or 'accumulated', got {eval_depth!r}")
        self.eval_depth = eval_depth
        self.semantic_weight = semantic_weight
        self.temporal_frames = temporal_frames
        self.recurrent_eval = recurrent_eval
        self._memory = None

    # ------------------------------------------------------------------ stages
    def encode(self, batch: Frames) -> GaussianScene:
        """Gaussians (batched, ego frame of the current frame) from the current frame's images
        and, with temporal attention, the previous frames' Gaussians (see the class docstring).

        Raises:
            ValueError: if ``batch`` is not batched; recurrent evaluation of a batch of more
                than one sample.
        """
        if not batch.batched:
            raise ValueError("GaussianOcc.encode: expects a batch (images [B, T, V, 3, H, W]); use collate_frames")
        if self.decoder.temporal_attention == "none":
            return GaussianScene(self._decode_frame(batch, 0, None))
        if not self.training and self.recurrent_eval:
            return GaussianScene(self._recurrent(batch))
        return GaussianScene(self._decode_frame(batch, 0, self._history_context(batch) if self.training else None))

    def _decode_frame(self, batch: Frames, t: int, prev: TemporalContext | None, b: slice = slice(None)) -> Gaussians:
        images = batch.images[b, t]
        feats = self.encoder(images)
        return self.decoder(feats, batch.K[b, t], batch.T_ego_cam[b, t], tuple(images.shape[-2:]), prev)

    def _carry(self, g: Gaussians, T_global_src: Tensor, T_global_dst: Tensor, dt: Tensor) -> TemporalContext:
        """Context for the frame at pose ``T_global_dst`` from Gaussians decoded at ``T_global_src``."""
        T_dst_src = torch.linalg.inv(T_global_dst.double()) @ T_global_src.double()
        return carry_to_next_frame(g, T_dst_src.to(g.means.dtype), self.flow, dt.to(g.means.dtype))

    @torch.no_grad()
    def _history_context(self, batch: Frames) -> TemporalContext | None:
        """Training: the current frame's context built recurrently without gradient from the
        batch's past frames (negative time offset), oldest first, at most
        ``temporal_frames``; None when some sample of the batch has no past frame."""
        contexts = []
        for b in range(batch.images.shape[0]):
            dts = batch.timestamps[b] - batch.timestamps[b, 0]
            order = [int(t) for t in torch.argsort(dts) if dts[t] < 0]
            past = order[len(order) - self.temporal_frames :] if self.temporal_frames > 0 else []
            if not past:
                return None
            ctx = None
            for i, t in enumerate(past):
                g = self._decode_frame(batch, t, ctx, slice(b, b + 1))
                nxt = past[i + 1] if i + 1 < len(past) else 0
                dt = (batch.timestamps[b, nxt] - batch.timestamps[b, t]).reshape(1)
                ctx = self._carry(g, batch.T_global_ego[b : b + 1, t], batch.T_global_ego[b : b + 1, nxt], dt)
            contexts.append(ctx)
        return TemporalContext(
            means=torch.cat([c.means for c in contexts]), features=torch.cat([c.features for c in contexts])
        )

    def reset_temporal_memory(self) -> None:
        """Forget the Gaussians remembered for recurrent evaluation."""
        self._memory = None

    def _recurrent(self, batch: Frames) -> Gaussians:
        """Evaluation, GaussianFlowOcc's recurrent scheme: the previous sample of the same
        scene (earlier timestamp) gives the context through flow + ego motion; at the first
        sample of a scene the frame is decoded once without context and its own Gaussians
        are the context (``simple_test`` when ``has_prev_sample`` is false). The same sample
        encoded twice (occupancy, then depth) is served from memory."""
        if batch.images.shape[0] != 1:
            raise ValueError("GaussianOcc: recurrent temporal evaluation needs batches of one sample")
        scene, time = batch.scene_names[0], float(batch.timestamps[0, 0])
        mem = self._memory
        if mem is not None and mem["scene"] == scene and mem["time"] == time:
            return mem["gaussians"]
        if mem is not None and mem["scene"] == scene and mem["time"] < time:
            ctx = self._carry(mem["gaussians"], mem["T_global_ego"], batch.T_global_ego[:, 0],
                              batch.timestamps[:, 0] - mem["time"])  # fmt: skip
        else:
            first = self._decode_frame(batch, 0, None)
            ctx = TemporalContext(means=first.means, features=first.features)
        g = self._decode_frame(batch, 0, ctx)
        self._memory = dict(scene=scene, time=time, T_global_ego=batch.T_global_ego[:, 0].clone(), gaussians=g)
        return g

    def decode(self, batch: Frames) -> Gaussians:
        """The Gaussians of :meth:`encode`."""
        return self.encode(batch).gaussians

    def render(self, scene: GaussianScene, K: Tensor, T_ego_cam: Tensor, grid: PixelGrid, times=None, features=True) -> RenderedViews:
        """Splat the Gaussians, moved by the flow to ``times`` (seconds from the current
        frame; None or no flow = static), at the pixel centres of a regular grid
        (intrinsics rescaled from ``grid.image_hw`` to ``grid.grid_hw``).

        Raises:
            ValueError: a jittered grid (a rasteriser renders whole pixels).
        """
        flow = None
        if times is not None and self.flow is not None:
            flow = self.flow(scene.gaussians, times[:, None].to(scene.gaussians.means.dtype))[:, 0]
        return self._render_moved(scene, K, T_ego_cam, grid, flow, features)

    def _render_moved(
        self,
        scene: GaussianScene,
        K: Tensor,
        T_ego_cam: Tensor,
        grid: PixelGrid,
        flow: Float[Tensor, "B N 3"] | None,
        features: bool = True,
    ) -> RenderedViews:
        if grid.jittered:
            raise ValueError("GaussianOcc.render: the rasteriser renders regular pixel grids only (jittered=False)")
        g = scene.gaussians
        B, V = K.shape[:2]
        h, w = grid.grid_hw
        K_r = scale_intrinsics(K, grid.image_hw, grid.grid_hw)
        k = g.semantics.shape[-1]
        outs = []
        for b in range(B):
            gb = g[b]
            if features:
                feats = gb.semantics if gb.colors is None else torch.cat([gb.semantics, gb.colors], dim=-1)
            else:
                feats = gb.means.new_zeros(gb.means.shape[0], 0)
            moved = gb.moved(gb.means + flow[b]) if flow is not None else gb
            outs.append(splat(moved, feats, T_ego_cam[b], K_r[b], h, w, self.backend))

        def stack(name: str) -> Tensor:
            x = torch.stack([getattr(o, name) for o in outs])  # [B V h w ...]
            return x.reshape(B, V, h * w, *x.shape[4:])

        feats = stack("features")
        return RenderedViews(
            depth=stack("depth"),
            opacity=stack("alpha"),
            pixels=grid.pixels.to(K.device).expand(B, V, -1, -1),
            image_hw=grid.image_hw,
            grid_hw=grid.grid_hw,
            accumulated_depth=stack("accumulated_depth"),
            semantic_logits=feats[..., :k] if features else None,
            rgb=feats[..., k:] if features and g.colors is not None else None,
            extras={"flow": flow} if flow is not None else {},
        )

    def training_views(self, scene: GaussianScene, batch: Frames) -> list[RenderedViews]:
        """Every frame's cameras at the render size, the Gaussians moved to each frame's
        time offset (one flow evaluation for all frames)."""
        B, T, V, _, H, W = batch.images.shape
        grid = PixelGrid.make((H, W), self.render_hw, device=batch.images.device)
        g = scene.gaussians
        dt = (batch.timestamps - batch.timestamps[:, :1]).to(g.means.dtype)
        flow = self.flow(g, dt) if self.flow is not None else None  # [B T N 3]
        T_ego0_cam = batch.T_ego0_cam()
        views = []
        for t in range(T):
            T_cam = batch.T_ego_cam[:, 0] if t == 0 else T_ego0_cam[:, t]
            moved = flow[:, t] if flow is not None else None
            views.append(replace(self._render_moved(scene, batch.K[:, t], T_cam, grid, moved), frame=t))
        return views

    def regularizers(self, scene: GaussianScene, views: list[RenderedViews]) -> dict[str, Tensor]:
        """"flow_reg": mean squared flow over all rendered frames (when there is a flow)."""
        flows = [v.extras["flow"] for v in views if "flow" in v.extras]
        return {"flow_reg": flow_regularization(torch.stack(flows, dim=1))} if flows else {}

    def statistics(self, scene: GaussianScene, views: list[RenderedViews], batch: Frames) -> dict[str, Tensor]:
        """Mean Gaussian opacity, moving fraction, and depth AbsRel on the depth-supervised frames."""
        g = scene.gaussians
        stats = {"gaussian_opacity": g.opacities.detach().mean()}
        if self.flow is not None:
            stats["moving_fraction"] = self.flow.moving_mask(g.semantics.detach()).mean()
        current = self.supervise_current_depth or self.depth_source == "pseudo"
        rels = []
        if self.depth_source == "lidar" or batch.depth_maps is not None:
            for v in views:
                if v.frame == 0 and not current:
                    continue
                target = depth_target(v, batch, self.depth_source, self.min_depth, self.max_depth)
                ok = (target > 0) & read_valid(batch, v)
                rels.append(masked_mean((v.depth - target).abs() / target.clamp(min=1e-3), ok))
        if rels:
            stats["depth_abs_rel"] = torch.stack(rels).mean()
        return stats

    def forward(self, batch: Frames) -> ModelOutput:
        """The shared training step (``OccupancyModel.forward``).

        Raises:
            ValueError: unbatched input, or LiDAR depth supervision with no neighbour frame
                and ``supervise_current_depth=False``.
        """
        if (
            batch.images.dim() == 6 and batch.images.shape[1] == 1 and self.loss_weights["depth"] > 0
            and self.depth_source == "lidar" and not self.supervise_current_depth
        ):
            raise ValueError(
                "GaussianOcc: LiDAR depth supervision without neighbour frames; add neighbours "
                "or set supervise_current_depth=True"
            )
        return super().forward(batch)

    @torch.no_grad()
    def predict_occupancy(self, scene: GaussianScene) -> OccupancyPrediction:
        """Occ3D labels of the current frame via :func:`voxelize_gaussians` (no logits)."""
        g = scene.gaussians
        labels = torch.stack(
            [
                voxelize_gaussians(
                    g[b], self.grid, self.nbh, self.density_threshold, self.max_z_index,
                    semantic_weight=self.semantic_weight,
                )
                for b in range(g.means.shape[0])
            ]
        )  # fmt: skip
        return OccupancyPrediction(labels=labels)

    @torch.no_grad()
    def render_depth(
        self,
        batch: Frames,
        K: Float[Tensor, "B V 3 3"],
        T_ego_cam: Float[Tensor, "B V 4 4"],
        height: int,
        width: int,
    ) -> Float[Tensor, "B V H W"]:
        """The shared ``render_depth`` (expected depth, 0 below ``min_opacity``), or with
        ``eval_depth="accumulated"`` the accumulated depth sum_i w_i z_i (GaussianFlowOcc)."""
        if self.eval_depth == "expected":
            return super().render_depth(batch, K, T_ego_cam, height, width)
        if not batch.batched:
            raise ValueError("GaussianOcc.render_depth: expected a batched Frames")
        grid = PixelGrid.make((height, width), device=K.device)
        views = self.render(self.encode(batch), K, T_ego_cam, grid, times=None, features=False)
        return views.accumulated_depth.reshape(*K.shape[:2], height, width)


def read_valid(batch: Frames, views: RenderedViews) -> Tensor:
    """``Frames.valid_masks`` at the views' pixels, ``[B V R]``."""
    return read_nearest(batch.valid_masks, views.pixels)


__all__ = ["GAUSSIAN_OCC_LOSS_WEIGHTS", "GaussianOcc", "GaussianScene", "depth_image", "splat"]
