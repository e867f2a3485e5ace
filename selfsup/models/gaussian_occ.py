"""GaussianFlowOcc-style occupancy model: image features -> 3D Gaussians + temporal flow,
trained by splatting them into the cameras of the current and neighbouring frames.

Source: Boeder et al., "GaussianFlowOcc" (2025); facts in REFERENCES.md (semantic CE x2 on
labelled pixels, depth MSE x0.05 on pixels with depth > 0, pseudo labels beyond 40 m
dropped, voxelization with ``nbh`` = 4 and density threshold 0.05, z >= 11 cleared).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float, UInt8
from torch import Tensor, nn

from render.gaussians import rasterize_gaussians
from selfsup.camera import scale_intrinsics
from selfsup.data.frames import Frames
from selfsup.encoders.timm_fpn import TimmFPN
from selfsup.grid import OCC3D_GRID, VoxelGrid
from selfsup.losses.depth import sparse_depth_grid
from selfsup.losses.gaussian import depth_mse_loss, flow_regularization
from selfsup.losses.photometric import masked_mean, rgb_loss
from selfsup.losses.semantic import IGNORE_INDEX, semantic_loss
from selfsup.model_api import ModelOutput, OccupancyModel
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
    "photometric": 0.0,  # only meaningful when the decoder predicts colour
    "flow_reg": 0.01,
}


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

    ``forward`` decodes Gaussians from the current frame's images (t = 0), moves them to
    every frame's timestamp with the flow, renders them into every camera of every frame
    (camera poses relative to the current ego frame, so ego motion comes from the poses)
    and compares the renders with depth targets and, when present, semantic labels.

    Depth targets (``depth_target``):
        "lidar": each frame's LiDAR points projected into that frame's cameras (nearest
            return per pixel of the render grid). With ``supervise_current_depth=False``
            (default) only the neighbour frames (t > 0) are supervised, so depth evaluation
            against the *current* frame's LiDAR stays honest.
        "pseudo": dense maps ``Frames.depth_maps`` ``[B, T, V, H, W]`` (metres, 0 =
            unknown), every frame (``NuScenesFrames(pseudo_depth_dir=...)`` reads
            GaussianFlowOcc's Metric3D files).
    Semantic labels: ``Frames.semantic_maps`` ``[B, T, V, H, W]`` integer Occ3D classes,
    ``255`` or negative = unlabelled (``NuScenesFrames(pseudo_semantic_dir=...)``); the
    semantic loss is skipped without them.
    Targets farther than ``max_depth`` are dropped, and where ``depth_maps`` are present
    so are the semantic labels of pixels whose pseudo depth is beyond ``max_depth``
    (GaussianFlowOcc drops both pseudo labels beyond 40 m).

    Args:
        encoder: multi-camera image encoder (``TimmFPN``).
        decoder: image features -> Gaussians.
        flow: temporal flow; None renders every frame with static Gaussians.
        loss_weights: weights of "semantic", "depth", "photometric", "flow_reg"; missing
            keys take :data:`GAUSSIAN_OCC_LOSS_WEIGHTS`.
        depth_target: "lidar" or "pseudo".
        supervise_current_depth: also supervise depth on the current frame (t = 0).
        render_hw: (height, width) of the rendered images (intrinsics are rescaled);
            None renders at the input image size.
        max_depth: depth targets beyond this are ignored, metres.
        min_depth: LiDAR points closer than this to a camera are ignored, metres.
        backend: rasterizer backend ("auto": gsplat on CUDA, PyTorch on CPU).
        grid, nbh, density_threshold, max_z_index: voxelization, see
            :func:`selfsup.representations.gaussians.voxelize_gaussians`.
        alpha_min: ``render_depth`` reports 0 where the accumulated alpha is below this.
        eval_depth: what ``render_depth`` returns: "expected" (accumulated / alpha, our
            default) or "accumulated" (sum_i w_i z_i, gsplat's "D", what GaussianFlowOcc
            evaluates; ``alpha_min`` is not applied).
        semantic_weight: voxelizer logit weighting, "falloff" (GaussianFlowOcc) or
            "opacity_falloff" (see ``splat_gaussians_to_grid``).
        temporal_frames: with the decoder's temporal attention, how many of the batch's past
            frames (most recent first) build the context in training (GaussianFlowOcc: 5
            previous frames; here the past frames the neighbour draw brought).
        recurrent_eval: in eval mode, carry each sample's Gaussians to the next sample of
            the same scene (evaluate a scene in time order, batch size 1); False decodes
            every sample without temporal context.
        depth_loss_on: "accumulated" (sum_i w_i z_i, GaussianFlowOcc's choice: it also
            pushes the accumulated alpha towards 1 where there is a target) or "expected"
            (accumulated / alpha, the depth ``render_depth`` reports).

    Raises:
        ValueError: unknown loss-weight key, depth target or ``depth_loss_on``.
    """

    def __init__(
        self,
        encoder: TimmFPN,
        decoder: GaussianDecoder,
        flow: GaussianFlow | None = None,
        loss_weights: dict[str, float] | None = None,
        depth_target: str = "lidar",
        supervise_current_depth: bool = False,
        render_hw: tuple[int, int] | None = None,
        max_depth: float = 40.0,
        min_depth: float = 0.1,
        backend: str = "auto",
        grid: VoxelGrid = OCC3D_GRID,
        nbh: int = 4,
        density_threshold: float = 0.05,
        max_z_index: int | None = 11,
        alpha_min: float = 0.05,
        depth_loss_on: str = "accumulated",
        eval_depth: str = "expected",
        semantic_weight: str = "falloff",
        temporal_frames: int = 5,
        recurrent_eval: bool = True,
    ):
        super().__init__()
        unknown = set(loss_weights or {}) - set(GAUSSIAN_OCC_LOSS_WEIGHTS)
        if unknown:
            raise ValueError(f"GaussianOcc: unknown loss_weights {sorted(unknown)}; known: {sorted(GAUSSIAN_OCC_LOSS_WEIGHTS)}")
        if depth_target not in ("lidar", "pseudo"):
            raise ValueError(f"GaussianOcc: depth_target must be 'lidar' or 'pseudo', got {depth_target!r}")
        if depth_loss_on not in ("accumulated", "expected"):
            raise ValueError(f"GaussianOcc: depth_loss_on must be 'accumulated' or 'expected', got {depth_loss_on!r}")
        self.encoder = encoder
        self.decoder = decoder
        self.flow = flow
        self.loss_weights = {**GAUSSIAN_OCC_LOSS_WEIGHTS, **(loss_weights or {})}
        self.depth_target = depth_target
        self.supervise_current_depth = supervise_current_depth
        self.render_hw = render_hw
        self.max_depth, self.min_depth = max_depth, min_depth
        self.backend = backend
        self.grid, self.nbh = grid, nbh
        self.density_threshold, self.max_z_index = density_threshold, max_z_index
        self.alpha_min = alpha_min
        if eval_depth not in ("expected", "accumulated"):
            raise ValueError(f"GaussianOcc: eval_depth must be 'expected' or 'accumulated', got {eval_depth!r}")
        self.eval_depth = eval_depth
        self.semantic_weight = semantic_weight
        self.temporal_frames = temporal_frames
        self.recurrent_eval = recurrent_eval
        self._memory = None
        self.depth_loss_on = depth_loss_on

    @staticmethod
    def _check_batched(batch: Frames, what: str) -> None:
        if not batch.batched:
            raise ValueError(f"GaussianOcc.{what}: expects a batch (images [B, T, V, 3, H, W]); use collate_frames")

    def _decode_frame(self, batch: Frames, t: int, prev: TemporalContext | None, b: slice = slice(None)) -> Gaussians:
        images = batch.images[b, t]
        feats = self.encoder(images)
        return self.decoder(feats, batch.K[b, t], batch.T_ego_cam[b, t], tuple(images.shape[-2:]), prev)

    def _carry(self, g: Gaussians, T_global_src: Tensor, T_global_dst: Tensor, dt: Tensor) -> TemporalContext:
        """Context for the frame at ``T_global_dst`` from Gaussians decoded at ``T_global_src``."""
        T_dst_src = torch.linalg.inv(T_global_dst.double()) @ T_global_src.double()
        return carry_to_next_frame(g, T_dst_src.to(g.means.dtype), self.flow, dt.to(g.means.dtype))

    @torch.no_grad()
    def _history_context(self, batch: Frames) -> TemporalContext | None:
        """Training: the temporal context of the current frame built recurrently (no
        gradient, GaussianFlowOcc ``prepare_prev_feat``) from the batch's past frames (negative
        time offset), oldest first, at most ``temporal_frames`` of them; None without any."""
        B = batch.images.shape[0]
        contexts = []
        for b in range(B):
            dts = batch.timestamps[b] - batch.timestamps[b, 0]
            past = [int(t) for t in torch.argsort(dts) if dts[t] < 0][-self.temporal_frames :] if self.temporal_frames else []
            if not past:
                return None  # a batch mixes samples with and without history: no context for any
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
        """Evaluation: GaussianFlowOcc's recurrent test-time scheme. The previous sample of
        the same scene (earlier timestamp) gives the context through flow + ego motion; at
        the first sample of a scene the frame is decoded once without context and its own
        Gaussians are the context (as ``simple_test`` does when ``has_prev_sample`` is
        false). Frames other than the current one of the batch are never used as inputs
        (they are evaluation targets). The same sample decoded twice (occupancy, then depth)
        is served from memory."""
        if batch.images.shape[0] != 1:
            raise ValueError("GaussianOcc: recurrent temporal evaluation needs batches of one sample")
        scene, time = batch.scene_names[0], float(batch.timestamps[0, 0])
        mem = getattr(self, "_memory", None)
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
        """Gaussians (batched, ego frame of the current frame) from the current frame's images
        and, with temporal attention, the previous frames' Gaussians: in training built from
        the batch's past frames (:meth:`_history_context`), in evaluation recurrently
        (:meth:`_recurrent`, with ``recurrent_eval``)."""
        self._check_batched(batch, "decode")
        if self.decoder.temporal_attention == "none":
            return self._decode_frame(batch, 0, None)
        if not self.training and self.recurrent_eval:
            return self._recurrent(batch)
        return self._decode_frame(batch, 0, self._history_context(batch) if self.training else None)

    def _depth_target(self, batch: Frames, b: int, t: int, hw: tuple[int, int]) -> Tensor:
        """[V, h, w] depth target (metres, 0 = unknown) of sample b, frame t at render size."""
        if self.depth_target == "pseudo":
            maps = batch.depth_maps
            if maps is None:
                raise ValueError("GaussianOcc: depth_target='pseudo' needs batch.depth_maps [B, T, V, H, W]")
            target = F.interpolate(maps[b, t][:, None].float(), size=hw, mode="nearest")[:, 0]
        else:
            points = batch.points_ego[b][t]
            target = sparse_depth_grid(
                points, batch.K[b, t], batch.T_ego_cam[b, t], tuple(batch.images.shape[-2:]), hw[0], hw[1], self.min_depth
            )
        return torch.where(target <= self.max_depth, target, torch.zeros_like(target))

    def forward(self, batch: Frames) -> ModelOutput:
        """Decode, move, render at every frame, and compute the weighted losses.

        Raises:
            ValueError: unbatched input, or LiDAR depth supervision with no neighbour frame
                and ``supervise_current_depth=False``.
        """
        self._check_batched(batch, "forward")
        B, T, V, _, H, W = batch.images.shape
        h, w = self.render_hw or (H, W)
        depth_frames = [t for t in range(T) if t > 0 or self.supervise_current_depth or self.depth_target == "pseudo"]
        if not depth_frames and self.loss_weights["depth"] > 0:
            raise ValueError(
                "GaussianOcc: LiDAR depth supervision without neighbour frames; add neighbours "
                "or set supervise_current_depth=True"
            )
        g = self.decode(batch)
        dt = (batch.timestamps - batch.timestamps[:, :1]).to(g.means.dtype)
        flow = self.flow(g, dt) if self.flow is not None else g.means.new_zeros(B, T, *g.means.shape[1:])
        T_ego0_cam = batch.T_ego0_cam()
        K_r = scale_intrinsics(batch.K, (H, W), (h, w))
        valid = F.interpolate(batch.valid_masks.float(), size=(h, w), mode="nearest") > 0.5  # [B V h w]
        sem_maps = batch.semantic_maps
        k = g.semantics.shape[-1]

        depth_terms, sem_terms, photo_terms, abs_rel = [], [], [], []
        preview = None
        for b in range(B):
            gb = g[b]
            feats = gb.semantics if gb.colors is None else torch.cat([gb.semantics, gb.colors], dim=-1)
            for t in range(T):
                out = splat(gb.moved(gb.means + flow[b, t]), feats, T_ego0_cam[b, t], K_r[b, t], h, w, self.backend)
                if b == 0 and t == 0:
                    preview = out.depth[0].detach()
                if t in depth_frames:
                    target = self._depth_target(batch, b, t, (h, w))
                    rendered = out.accumulated_depth if self.depth_loss_on == "accumulated" else out.depth
                    depth_terms.append(depth_mse_loss(rendered, target, valid[b]))
                    with torch.no_grad():
                        ok = (target > 0) & valid[b]
                        rel = (out.depth - target).abs() / target.clamp(min=1e-3)
                        abs_rel.append(masked_mean(rel, ok))
                if sem_maps is not None:
                    labels = F.interpolate(sem_maps[b, t][:, None].float(), size=(h, w), mode="nearest")[:, 0].long()
                    ignore = labels < 0
                    if batch.depth_maps is not None:
                        far = F.interpolate(batch.depth_maps[b, t][:, None].float(), size=(h, w), mode="nearest")[:, 0]
                        ignore = ignore | (far > self.max_depth)
                    labels = torch.where(ignore, torch.full_like(labels, IGNORE_INDEX), labels)
                    sem_terms.append(
                        semantic_loss(out.features[..., :k].reshape(-1, k), labels.reshape(-1), valid[b].reshape(-1))
                    )
                if gb.colors is not None and self.loss_weights["photometric"] > 0:
                    rgb = out.features[..., k:].permute(0, 3, 1, 2)
                    target_rgb = F.interpolate(batch.images[b, t], size=(h, w), mode="bilinear", align_corners=False)
                    photo_terms.append(rgb_loss(rgb, target_rgb, valid[b]))

        zero = g.means.sum() * 0.0
        terms = {
            "depth": torch.stack(depth_terms).mean() if depth_terms else zero,
            "semantic": torch.stack(sem_terms).mean() if sem_terms else zero,
            "photometric": torch.stack(photo_terms).mean() if photo_terms else zero,
            "flow_reg": flow_regularization(flow) if self.flow is not None else zero,
        }
        loss = sum(self.loss_weights[name] * value for name, value in terms.items())
        logs = {f"loss_{name}": value.detach() for name, value in terms.items()}
        if abs_rel:
            logs["depth_abs_rel"] = torch.stack(abs_rel).mean()
        logs["mean_opacity"] = g.opacities.detach().mean()
        if self.flow is not None:
            logs["moving_fraction"] = self.flow.moving_mask(g.semantics.detach()).mean()
        return ModelOutput(loss=loss, terms=logs, images={"depth": depth_image(preview)})

    @torch.no_grad()
    def predict_occupancy(self, batch: Frames) -> UInt8[Tensor, "B X Y Z"]:
        """Occ3D labels of the current frame via :func:`voxelize_gaussians`."""
        g = self.decode(batch)
        return torch.stack(
            [
                voxelize_gaussians(
                    g[b], self.grid, self.nbh, self.density_threshold, self.max_z_index,
                    semantic_weight=self.semantic_weight,
                )
                for b in range(g.means.shape[0])
            ]
        )

    @torch.no_grad()
    def render_depth(
        self,
        batch: Frames,
        K: Float[Tensor, "B V 3 3"],
        T_ego_cam: Float[Tensor, "B V 4 4"],
        height: int,
        width: int,
    ) -> Float[Tensor, "B V H W"]:
        """Expected camera depth (metres) of the current frame's Gaussians (no flow) at the
        given cameras; 0 where the accumulated alpha is below ``alpha_min``."""
        g = self.decode(batch)
        depths = []
        for b in range(g.means.shape[0]):
            gb = g[b]
            out = splat(gb, gb.means.new_zeros(gb.means.shape[0], 0), T_ego_cam[b], K[b], height, width, self.backend)
            if self.eval_depth == "accumulated":
                depths.append(out.accumulated_depth)
            else:
                depths.append(torch.where(out.alpha >= self.alpha_min, out.depth, torch.zeros_like(out.depth)))
        return torch.stack(depths)


def depth_image(depth: Float[Tensor, "H W"]) -> Float[Tensor, "3 H W"]:
    """Grey inverse-depth picture in [0, 1] for TensorBoard (near = bright, no hit = black)."""
    inv = torch.where(depth > 0, 1.0 / depth.clamp(min=0.5), torch.zeros_like(depth))
    inv = inv / inv.max().clamp(min=1e-6)
    return inv[None].expand(3, -1, -1).clamp(0.0, 1.0)
