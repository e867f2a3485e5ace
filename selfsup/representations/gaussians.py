"""3D semantic Gaussians with temporal flow (GaussianFlowOcc style) and their voxelizer.

A :class:`GaussianDecoder` turns multi-camera image features into a set of 3D Gaussians in
the ego frame of the current frame; :class:`GaussianFlow` moves them to neighbouring
timestamps; :func:`voxelize_gaussians` turns them into Occ3D labels for ``eval_iou.py``.

Dimension letters: B batch, V cameras, T frames, N Gaussians, P sampling points per
Gaussian, L feature levels, E query channels, C image-feature channels, K semantic classes,
X Y Z voxels.

Semantic channels: 17, one per Occ3D class 0-16 (index = label). GaussianFlowOcc drops
class 0 'others' and predicts 16 logits (its labels are argmax + 1); we keep 'others' so the
argmax is the Occ3D label itself and 'others' can be predicted where pseudo labels have it.

Source: Boeder et al., "GaussianFlowOcc: Sparse and Weakly Supervised Occupancy Estimation
using Gaussian Splatting and Temporal Flow" (2025), Sec. 3 and the public code's facts
recorded in REFERENCES.md (10,000 Gaussians, 256-d queries, 3 blocks, voxelization with
``nbh`` = 4, density threshold 0.05, z >= 11 cleared, flow only for dynamic classes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, UInt8
from torch import Tensor, nn

from render.geometry import quat_to_rotmat  # noqa: F401  (the one quaternion -> rotation; re-exported)
from render.precision import full_precision, no_autocast
from selfsup.constants import DYNAMIC_CLASSES, NUM_SEMANTIC_CLASSES
from selfsup.grid import OCC3D_FREE, OCC3D_GRID, VoxelGrid

# Occ3D-nuScenes classes that can move (mIoU_D): bicycle, bus, car, construction_vehicle,
# motorcycle, pedestrian, trailer, truck.


@dataclass
class Gaussians:
    """A set of 3D Gaussians in the ego frame of the current frame (metres).

    Leading ``*b`` is ``B`` for a batch and empty for one sample.

    Attributes:
        means: centres, ego frame, metres.
        quats: unit rotations (w, x, y, z) of the Gaussians' axes, ego frame.
        scales: standard deviations along the rotated axes, metres.
        opacities: in [0, 1].
        semantics: semantic logits, one channel per Occ3D class 0-16.
        features: decoder query features, input of :class:`GaussianFlow`.
        colors: optional RGB in [0, 1] for photometric losses.
    """

    means: Float[Tensor, "*b N 3"]
    quats: Float[Tensor, "*b N 4"]
    scales: Float[Tensor, "*b N 3"]
    opacities: Float[Tensor, "*b N"]
    semantics: Float[Tensor, "*b N K"]
    features: Float[Tensor, "*b N E"]
    colors: Float[Tensor, "*b N 3"] | None = None

    def __getitem__(self, index: int) -> "Gaussians":
        """The Gaussians of sample ``index`` of a batch."""
        if self.means.dim() != 3:
            raise IndexError("Gaussians: indexing needs a batch (means of shape [B, N, 3])")
        return Gaussians(
            means=self.means[index],
            quats=self.quats[index],
            scales=self.scales[index],
            opacities=self.opacities[index],
            semantics=self.semantics[index],
            features=self.features[index],
            colors=None if self.colors is None else self.colors[index],
        )

    def full_precision(self) -> "Gaussians":
        """The same Gaussians with float16 / bfloat16 fields cast to float32."""
        def up(x):
            return x.float() if x is not None and x.dtype in (torch.float16, torch.bfloat16) else x

        return Gaussians(**{f: up(getattr(self, f)) for f in self.__dataclass_fields__})

    def moved(self, means: Float[Tensor, "*b N 3"]) -> "Gaussians":
        """The same Gaussians with new centres (for rendering at another timestamp)."""
        return replace(self, means=means)


def gaussian_precision(
    quats: Float[Tensor, "*n 4"], scales: Float[Tensor, "*n 3"]
) -> Float[Tensor, "*n 3 3"]:
    """Inverse covariance ``R diag(1 / s^2) R^T`` of Gaussians with rotation ``quats`` and
    standard deviations ``scales`` (metres, so the result is in 1 / m^2)."""
    R = quat_to_rotmat(quats)
    return (R / scales.unsqueeze(-2).square()) @ R.transpose(-1, -2)


def splat_gaussians_to_grid(
    gaussians: Gaussians,
    grid: VoxelGrid = OCC3D_GRID,
    nbh: int = 4,
    semantic_mode: str = "logits",
    chunk: int = 2048,
    semantic_weight: str = "falloff",
) -> tuple[Float[Tensor, "X Y Z"], Float[Tensor, "X Y Z K"]]:
    """Density and semantic evidence of one sample's Gaussians at the voxel centres.

    Each Gaussian i adds ``opacity_i * g`` with the falloff ``g = exp(-0.5 d^T Sigma_i^-1 d)``
    (d = voxel centre - mean) to the density of every voxel within ``nbh`` voxels (Chebyshev
    distance) of the voxel that contains its mean, and ``g * semantics_i`` (GaussianFlowOcc,
    ``semantic_weight="falloff"``) or ``opacity_i * g * semantics_i``
    (``"opacity_falloff"``) to that voxel's semantic evidence. Voxels farther away get
    nothing, however large the Gaussian. Differentiable; computed in float32 with autocast
    off (half-precision Gaussians are cast up).

    Args:
        gaussians: one sample (no batch dim), ego frame, metres.
        grid: the voxel grid.
        nbh: neighbourhood half-width in voxels (GaussianFlowOcc ``max_neighborhood`` = 4,
            so 9^3 voxels per Gaussian).
        semantic_mode: "logits" adds the weighted logits (as GaussianFlowOcc does),
            "probs" the weighted softmax probabilities.
        chunk: Gaussians per scatter pass, bounding memory to chunk * (2 nbh + 1)^3 * K.
        semantic_weight: "falloff" (GaussianFlowOcc, the default) or "opacity_falloff"
            (also weighted by opacity, so transparent Gaussians vote less).

    Returns:
        density (unclamped sum) [X, Y, Z] and semantic evidence [X, Y, Z, K].

    Raises:
        ValueError: ``gaussians`` is batched, ``nbh`` < 0, ``semantic_mode`` or
            ``semantic_weight`` is unknown.

    Source: GaussianFlowOcc ``gaussians_to_occupancy`` (centre voxel = floor((mean - lower)
    / size), neighbourhood offsets, scatter-add of opacity x falloff and of falloff x logits,
    ``gaussianflowocc.py`` around line 223 at commit 0ad693e).
    """
    if gaussians.means.dim() != 2:
        raise ValueError(f"splat_gaussians_to_grid: expects one sample, got means {tuple(gaussians.means.shape)}")
    if nbh < 0:
        raise ValueError(f"splat_gaussians_to_grid: nbh must be >= 0, got {nbh}")
    if semantic_mode not in ("logits", "probs"):
        raise ValueError(f"splat_gaussians_to_grid: semantic_mode must be 'logits' or 'probs', got {semantic_mode!r}")
    if semantic_weight not in ("falloff", "opacity_falloff"):
        raise ValueError(
            f"splat_gaussians_to_grid: semantic_weight must be 'falloff' or 'opacity_falloff', got {semantic_weight!r}"
        )
    with no_autocast({"cpu", gaussians.means.device.type}):
        return _splat(gaussians.full_precision(), grid, nbh, semantic_mode, chunk, semantic_weight)


def _splat(gaussians: Gaussians, grid: VoxelGrid, nbh: int, semantic_mode: str, chunk: int, semantic_weight: str):
    device = gaussians.means.device
    shape = torch.tensor(grid.shape, device=device)
    lower, _ = grid.box(device)
    k = gaussians.semantics.shape[-1]
    num_voxels = int(shape.prod())
    density = gaussians.means.new_zeros(num_voxels)
    evidence = gaussians.means.new_zeros(num_voxels, k)

    r = torch.arange(-nbh, nbh + 1, device=device)
    offsets = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), dim=-1).reshape(-1, 3)  # [O, 3]
    precision = gaussian_precision(gaussians.quats, gaussians.scales)
    sem = gaussians.semantics if semantic_mode == "logits" else gaussians.semantics.softmax(-1)
    strides = torch.tensor([grid.shape[1] * grid.shape[2], grid.shape[2], 1], device=device)

    for start in range(0, gaussians.means.shape[0], chunk):
        sl = slice(start, start + chunk)
        means = gaussians.means[sl]
        centre = torch.floor((means - lower) / grid.voxel_size).long()  # [n, 3]
        idx = centre[:, None, :] + offsets[None]  # [n, O, 3]
        inside = ((idx >= 0) & (idx < shape)).all(-1)  # [n, O]
        xyz = lower + grid.voxel_size * (idx.to(means.dtype) + 0.5)
        d = xyz - means[:, None, :]
        mahal = torch.einsum("noi,nij,noj->no", d, precision[sl], d)
        falloff = (torch.exp(-0.5 * mahal) * inside)[inside]
        flat = (idx * strides).sum(-1)[inside]
        n_of = torch.arange(means.shape[0], device=device)[:, None].expand_as(inside)[inside]
        w = gaussians.opacities[sl][n_of] * falloff
        density = density.index_add(0, flat, w)
        w_sem = falloff if semantic_weight == "falloff" else w
        evidence = evidence.index_add(0, flat, w_sem[:, None] * sem[sl][n_of])
    return density.reshape(grid.shape), evidence.reshape(*grid.shape, k)


@torch.no_grad()
def voxelize_gaussians(
    gaussians: Gaussians,
    grid: VoxelGrid = OCC3D_GRID,
    nbh: int = 4,
    density_threshold: float = 0.05,
    max_z_index: int | None = 11,
    semantic_mode: str = "logits",
    free_label: int = OCC3D_FREE,
    chunk: int = 2048,
    semantic_weight: str = "falloff",
) -> UInt8[Tensor, "X Y Z"]:
    """Occ3D labels of one sample's Gaussians: the path ``eval_iou.py`` uses for them.

    Density and semantic evidence come from :func:`splat_gaussians_to_grid`; the density is
    clamped to [0, 1], voxels with density < ``density_threshold`` are free, layers
    z >= ``max_z_index`` are cleared (free), and the others take the argmax of the evidence.

    Args:
        gaussians: one sample (no batch dim), ego frame, metres.
        grid: the voxel grid (Occ3D by default).
        nbh: neighbourhood half-width in voxels (``--nbh``; GaussianFlowOcc: 4).
        density_threshold: free below this density (GaussianFlowOcc eval threshold 0.05).
        max_z_index: first z layer cleared (GaussianFlowOcc clears z >= 11, i.e. above
            3.4 m on Occ3D); None keeps every layer.
        semantic_mode: see :func:`splat_gaussians_to_grid`.
        free_label: label of free voxels (Occ3D: 17).
        chunk: Gaussians per scatter pass.
        semantic_weight: see :func:`splat_gaussians_to_grid` ("falloff": GaussianFlowOcc).

    Returns:
        uint8 labels [X, Y, Z].

    Raises:
        ValueError: see :func:`splat_gaussians_to_grid`.

    Source: GaussianFlowOcc ``gaussians_to_occupancy`` and ``simple_test`` (clamp to [0, 1],
    ``density[..., 11:] = 0``, free where density < ``eval_threshold_range`` = 0.05).
    """
    density, evidence = splat_gaussians_to_grid(gaussians, grid, nbh, semantic_mode, chunk, semantic_weight)
    density = density.clamp(0.0, 1.0)
    if max_z_index is not None:
        density[..., max_z_index:] = 0.0
    labels = evidence.argmax(-1).to(torch.uint8)
    return torch.where(density < density_threshold, torch.full_like(labels, free_label), labels)


def sinusoidal_embedding(
    t: Float[Tensor, "*n"], dims: int, min_period: float, max_period: float
) -> Float[Tensor, "*n D"]:
    """sin / cos of ``t`` at ``dims // 2`` periods spaced geometrically in [min, max] (units of t)."""
    periods = torch.logspace(
        math.log10(min_period), math.log10(max_period), dims // 2, device=t.device, dtype=t.dtype
    )
    phase = 2 * math.pi * t[..., None] / periods
    return torch.cat([phase.sin(), phase.cos()], dim=-1)


def _mlp(in_dims: int, hidden: int, out_dims: int, layers: int = 2) -> nn.Sequential:
    mods: list[nn.Module] = []
    d = in_dims
    for _ in range(layers - 1):
        mods += [nn.Linear(d, hidden), nn.GELU()]
        d = hidden
    mods.append(nn.Linear(d, out_dims))
    return nn.Sequential(*mods)


@dataclass
class TemporalContext:
    """The previous frame's Gaussians as seen from the current frame: what each decoder
    block's temporal attention attends to.

    Attributes:
        means: centres moved to the current time (flow of dynamic Gaussians) and expressed
            in the *current* ego frame, metres.
        features: their decoder query features.
    """

    means: Float[Tensor, "B M 3"]
    features: Float[Tensor, "B M E"]


class PointPositionalEncoding(nn.Module):
    """MLP embedding of ego-frame positions normalised to [0, 1] in the grid box.

    Source: GaussianFlowOcc ``PointPositionalEncoding`` (Linear, LeakyReLU, Linear,
    LeakyReLU, Linear, LayerNorm on the normalised position).
    """

    def __init__(self, embed_dims: int, grid: VoxelGrid):
        super().__init__()
        lower, upper = grid.box()
        self.register_buffer("lower", lower, persistent=False)
        self.register_buffer("extent", upper - lower, persistent=False)
        self.net = nn.Sequential(
            nn.Linear(3, embed_dims), nn.LeakyReLU(),
            nn.Linear(embed_dims, embed_dims), nn.LeakyReLU(),
            nn.Linear(embed_dims, embed_dims), nn.LayerNorm(embed_dims),
        )  # fmt: skip

    def forward(self, means: Float[Tensor, "*b N 3"]) -> Float[Tensor, "*b N E"]:
        return self.net((means - self.lower) / self.extent)


class _FFN(nn.Sequential):
    def __init__(self, embed_dims: int, dropout: float):
        super().__init__(
            nn.Linear(embed_dims, embed_dims), nn.LeakyReLU(), nn.Linear(embed_dims, embed_dims), nn.Dropout(dropout)
        )


class FullAttention(nn.Module):
    """Post-norm multi-head attention block: ``x = LN(x + MHA(x, k, k)); x = LN(x + FFN(x))``.

    O(N M) memory for N queries and M keys: for tiny N only (10,000 Gaussians attending to
    each other need 10^8 weights per head). Source: GaussianFlowOcc ``GaussianAttention``.
    """

    def __init__(self, embed_dims: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        self.attn = nn.MultiheadAttention(embed_dims, num_heads, dropout=dropout, batch_first=True)
        self.ffn = _FFN(embed_dims, dropout)
        self.ln1, self.ln2 = nn.LayerNorm(embed_dims), nn.LayerNorm(embed_dims)

    def forward(self, x: Float[Tensor, "B N E"], keys: Float[Tensor, "B M E"]) -> Float[Tensor, "B N E"]:
        x = self.ln1(x + self.attn(x, keys, keys, need_weights=False)[0])
        return self.ln2(x + self.ffn(x))


class InducedAttention(nn.Module):
    """Attention of N queries to M keys through I learned inducing points, O((N + M) I).

    The inducing points attend to the keys (then residual, LayerNorm, FFN, LayerNorm); the
    queries attend to that summary (same block structure). With keys = queries it is
    self-attention (Set Transformer's ISAB); with keys = the previous frame's Gaussians it
    is GaussianFlowOcc's temporal attention.

    Source: Lee et al., "Set Transformer" (ICML 2019), ISAB; GaussianFlowOcc
    ``InducedGaussianAttention`` (post-norm, 500 inducing points in its config).
    """

    def __init__(self, embed_dims: int, num_heads: int, num_inducing: int, dropout: float = 0.0):
        super().__init__()
        self.inducing = nn.Parameter(torch.randn(num_inducing, embed_dims))
        self.gather = nn.MultiheadAttention(embed_dims, num_heads, dropout=dropout, batch_first=True)
        self.gather_ffn = _FFN(embed_dims, dropout)
        self.scatter = nn.MultiheadAttention(embed_dims, num_heads, dropout=dropout, batch_first=True)
        self.scatter_ffn = _FFN(embed_dims, dropout)
        self.ln = nn.ModuleList(nn.LayerNorm(embed_dims) for _ in range(4))

    def forward(self, x: Float[Tensor, "B N E"], keys: Float[Tensor, "B M E"]) -> Float[Tensor, "B N E"]:
        ind = self.inducing.expand(x.shape[0], -1, -1)
        z = self.ln[0](ind + self.gather(ind, keys, keys, need_weights=False)[0])
        z = self.ln[1](z + self.gather_ffn(z))
        out = self.ln[2](x + self.scatter(x, z, z, need_weights=False)[0])
        return self.ln[3](out + self.scatter_ffn(out))


def _attention(kind: str, embed_dims: int, num_heads: int, num_inducing: int, dropout: float, what: str) -> nn.Module | None:
    if kind == "induced":
        return InducedAttention(embed_dims, num_heads, num_inducing, dropout)
    if kind == "full":
        return FullAttention(embed_dims, num_heads, dropout)
    if kind == "none":
        return None
    raise ValueError(f"GaussianDecoder: {what} must be 'induced', 'full' or 'none', got {kind!r}")


@full_precision
def project_to_cameras(
    means: Float[Tensor, "B N 3"],
    K: Float[Tensor, "B V 3 3"],
    T_ego_cam: Float[Tensor, "B V 4 4"],
    image_hw: tuple[int, int],
    min_depth: float = 1e-2,
) -> tuple[Float[Tensor, "B V N 2"], Bool[Tensor, "B V N"]]:
    """Normalised image coordinates (u / W, v / H; pixel centres at +0.5) of ego-frame
    points in every camera, and whether each point is in front (z > ``min_depth`` m) and
    strictly inside the image. Float32 with autocast off (a bf16 projection would be several
    pixels off at 704 px). Source: GaussianFlowOcc ``project_reference_points``.
    """
    T_cam_ego = torch.linalg.inv(T_ego_cam)
    pts = torch.einsum("bvij,bnj->bvni", T_cam_ego[..., :3, :3], means) + T_cam_ego[:, :, None, :3, 3]
    z = pts[..., 2]
    uvw = torch.einsum("bvij,bvnj->bvni", K, pts)
    h, w = image_hw
    uv = uvw[..., :2] / z.clamp(min=1e-4)[..., None] / torch.tensor([w, h], dtype=means.dtype, device=means.device)
    visible = (z > min_depth) & (uv > 0).all(-1) & (uv < 1).all(-1)
    return uv, visible


class ImageCrossAttention(nn.Module):
    """Multi-head 2D deformable cross-attention of Gaussian queries to multi-camera FPN maps.

    Each Gaussian's mean is projected into every camera (the reference point). Per head h,
    level l and point p the query predicts a 2D offset in pixels of level l and an attention
    weight (softmax over the L x P samples of a head). Values are the FPN features plus a
    learned camera embedding and level embedding, projected to E channels and split into
    heads; they are sampled bilinearly (``grid_sample``, zeros outside) at reference +
    offset. The per-camera results are summed over the cameras in which the mean is visible
    and divided by their number (zero where none sees it), then projected.

    Args:
        embed_dims: query channels E (divisible by ``num_heads``).
        feat_channels: channels C of the feature maps.
        num_levels: FPN levels L used (finest first).
        num_points: sampling points P per head and level.
        num_heads: heads H.
        num_cams: cameras the camera embedding has rows for (GaussianFlowOcc: 6).
        cam_embeds, level_embeds: add the learned embeddings to the values.

    Source: Zhu et al., "Deformable DETR" (ICLR 2021), multi-scale deformable attention;
    GaussianFlowOcc ``GaussianImageCrossAttention`` (8 heads, 8 points, 3 levels, camera and
    level embeddings, offsets initialised on a circle per head, scaled by point index, zero
    attention logits at start). Memory: it samples all Gaussians in all cameras
    (B V E N P values per level) instead of re-batching the visible ones per camera.
    """

    def __init__(
        self,
        embed_dims: int,
        feat_channels: int,
        num_levels: int,
        num_points: int,
        num_heads: int = 8,
        num_cams: int = 6,
        cam_embeds: bool = True,
        level_embeds: bool = True,
    ):
        super().__init__()
        if embed_dims % num_heads:
            raise ValueError(f"ImageCrossAttention: embed_dims {embed_dims} not divisible by num_heads {num_heads}")
        self.embed_dims, self.num_levels, self.num_points, self.num_heads = embed_dims, num_levels, num_points, num_heads
        self.num_cams = num_cams
        self.sampling_offsets = nn.Linear(embed_dims, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dims, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(feat_channels, embed_dims)
        self.output_proj = nn.Linear(embed_dims, embed_dims)
        self.cam_embeds = nn.Parameter(torch.randn(num_cams, feat_channels)) if cam_embeds else None
        self.level_embeds = nn.Parameter(torch.randn(num_levels, feat_channels)) if level_embeds else None
        nn.init.zeros_(self.sampling_offsets.weight)
        theta = torch.arange(num_heads, dtype=torch.float32) * (2 * math.pi / num_heads)
        ring = torch.stack([theta.cos(), theta.sin()], -1)
        ring = ring / ring.abs().max(-1, keepdim=True).values  # [H 2], on the unit square
        bias = ring[:, None, None, :] * torch.arange(1, num_points + 1, dtype=torch.float32)[None, None, :, None]
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(bias.expand(num_heads, num_levels, num_points, 2).flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)

    def forward(
        self,
        query: Float[Tensor, "B N E"],
        means: Float[Tensor, "B N 3"],
        feats: Sequence[Float[Tensor, "B V C _h _w"]],
        K: Float[Tensor, "B V 3 3"],
        T_ego_cam: Float[Tensor, "B V 4 4"],
        image_hw: tuple[int, int],
    ) -> Float[Tensor, "B N E"]:
        """The attended image features (before the block's residual), [B N E].

        Raises:
            ValueError: more cameras than ``num_cams`` with camera embeddings.
        """
        b, n, _ = query.shape
        v = K.shape[1]
        if self.cam_embeds is not None and v > self.num_cams:
            raise ValueError(f"ImageCrossAttention: {v} cameras but camera embeddings for {self.num_cams} (num_cams)")
        H, L, P, D = self.num_heads, self.num_levels, self.num_points, self.embed_dims // self.num_heads
        ref, visible = project_to_cameras(means, K, T_ego_cam, image_hw)  # [B V N 2], [B V N]
        offsets = self.sampling_offsets(query).view(b, n, H, L, P, 2)
        attn = self.attention_weights(query).view(b, n, H, L * P).softmax(-1).view(b, n, H, L, P)
        out = query.new_zeros(b, v, H, D, n)
        for lvl, f in enumerate(feats[:L]):
            hl, wl = f.shape[-2:]
            if self.cam_embeds is not None:
                f = f + self.cam_embeds[:v, :, None, None].to(f.dtype)
            if self.level_embeds is not None:
                f = f + self.level_embeds[lvl, :, None, None].to(f.dtype)
            value = self.value_proj(f.permute(0, 1, 3, 4, 2))  # [B V h w E]
            value = value.view(b * v, hl, wl, H, D).permute(0, 3, 4, 1, 2).reshape(b * v * H, D, hl, wl)
            scale = torch.tensor([wl, hl], dtype=offsets.dtype, device=offsets.device)
            loc = ref[:, :, :, None, None, :] + (offsets[:, None, :, :, lvl] / scale).to(ref.dtype)  # [B V N H P 2]
            grid = (2 * loc - 1).permute(0, 1, 3, 2, 4, 5).reshape(b * v * H, n, P, 2).to(value.dtype)
            sampled = F.grid_sample(value, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            sampled = sampled.view(b, v, H, D, n, P)
            w_l = attn[:, :, :, lvl].permute(0, 2, 1, 3)  # [B H N P]
            out = out + (sampled * w_l[:, None, :, None].to(sampled.dtype)).sum(-1)
        vis = visible.to(out.dtype)  # [B V N]
        count = vis.sum(1).clamp(min=1.0)  # [B N]
        out = (out * vis[:, :, None, None, :]).sum(1) / count[:, None, None, :]  # [B H D N]
        return self.output_proj(out.permute(0, 3, 1, 2).reshape(b, n, H * D))


class GaussianDecoderBlock(nn.Module):
    """One block: temporal attention to the previous frame's Gaussians, self-attention among
    the Gaussians, image cross-attention (residual + LayerNorm), optional FFN, and a
    position update. Source: GaussianFlowOcc ``GaussianDecoderBlock`` with
    ``operation_order=('temporal_att', 'self_att', 'cross_att', 'rect')``."""

    def __init__(
        self,
        embed_dims: int,
        feat_channels: int,
        num_levels: int,
        num_points: int,
        num_heads: int,
        self_attention: str,
        temporal_attention: str,
        num_inducing: int,
        num_cams: int,
        ffn: bool,
        mean_param: str,
        dropout: float,
    ):
        super().__init__()
        self.temporal_attn = _attention(temporal_attention, embed_dims, num_heads, num_inducing, dropout, "temporal_attention")
        self.self_attn = _attention(self_attention, embed_dims, num_heads, num_inducing, dropout, "self_attention")
        self.cross_attn = ImageCrossAttention(embed_dims, feat_channels, num_levels, num_points, num_heads, num_cams)
        self.cross_dropout = nn.Dropout(dropout)
        self.cross_norm = nn.LayerNorm(embed_dims)
        self.ffn = _mlp(embed_dims, 2 * embed_dims, embed_dims) if ffn else None
        self.ffn_norm = nn.LayerNorm(embed_dims) if ffn else None
        if mean_param == "bounded":
            # A delta on the position logits, starting at zero so the learned initial positions rule.
            self.refine = nn.Linear(embed_dims, 3)
            nn.init.zeros_(self.refine.weight)
            nn.init.zeros_(self.refine.bias)
        else:  # "residual": GaussianFlowOcc MeanRectifier, a metre offset from an MLP
            self.refine = nn.Sequential(nn.Linear(embed_dims, embed_dims), nn.LeakyReLU(), nn.Linear(embed_dims, 3))

    def forward(
        self,
        x: Float[Tensor, "B N E"],
        means: Float[Tensor, "B N 3"],
        prev_tokens: Float[Tensor, "B M E"] | None,
        feats: Sequence[Tensor],
        K: Tensor,
        T_ego_cam: Tensor,
        image_hw: tuple[int, int],
    ) -> tuple[Float[Tensor, "B N E"], Float[Tensor, "B N 3"]]:
        """Updated queries and the raw position update (logit delta or metres)."""
        if self.temporal_attn is not None and prev_tokens is not None:
            x = self.temporal_attn(x, prev_tokens)
        if self.self_attn is not None:
            x = self.self_attn(x, x)
        x = self.cross_norm(x + self.cross_dropout(self.cross_attn(x, means, feats, K, T_ego_cam, image_hw)))
        if self.ffn is not None:
            x = self.ffn_norm(x + self.ffn(x))
        return x, self.refine(x)


class GaussianDecoder(nn.Module):
    """Query-based decoder from multi-camera image features to 3D semantic Gaussians.

    ``num_gaussians`` learned initial positions and learned queries pass through
    ``num_blocks`` blocks (:class:`GaussianDecoderBlock`); before each block the positional
    encoding of the current means is added to the queries. Heads on the final queries give
    opacity (sigmoid), scale (sigmoid into ``scale_range`` metres), rotation (normalised
    wxyz quaternion), semantic logits and, optionally, RGB.

    Temporal attention: with ``temporal_attention`` not "none", every block attends to the
    tokens ``pos_enc(prev.means) + prev.features`` of a :class:`TemporalContext` (the
    previous frame's Gaussians moved into the current frame, see
    :func:`carry_to_next_frame`); with no context (first frame of a scene) the tokens of
    the initial means and queries are used, as GaussianFlowOcc does.

    Args:
        num_gaussians: number of Gaussians N (GaussianFlowOcc: 10,000).
        embed_dims: query channels E (GaussianFlowOcc: 256).
        feat_channels: channels C of the image features (``TimmFPN.out_channels``).
        num_levels: FPN levels used (the finest ``num_levels``).
        num_blocks: decoder blocks (GaussianFlowOcc: 3).
        num_points: deformable sampling points per head and level (GaussianFlowOcc: 8).
        num_heads: heads of every attention (GaussianFlowOcc: 8).
        self_attention: "induced" (O(N I) through ``num_inducing`` points, GaussianFlowOcc),
            "full" (O(N^2): tiny N only) or "none".
        temporal_attention: the same choices for the attention to the previous frame;
            "induced" is GaussianFlowOcc's, "none" switches temporal attention off.
        num_inducing: inducing points I (GaussianFlowOcc: 500).
        num_cams: cameras the cross-attention's camera embedding covers.
        ffn: add an FFN (residual + LayerNorm) after the cross-attention. Not in
            GaussianFlowOcc (its attention modules carry their own FFNs); kept as an option.
        mean_param: "residual" (GaussianFlowOcc: means += MLP(query) metres after every block;
            means may leave the grid box) or "bounded" (a logit per axis of the normalised
            position in the box, refined by a delta per block: means stay in the box).
        dropout: dropout in the attention blocks (GaussianFlowOcc: 0.1).
        scale_range: (min, max) standard deviation of a Gaussian, metres.
        num_classes: semantic channels K (17: Occ3D classes 0-16; see the module docstring).
        with_color: also predict RGB (for a photometric loss).
        grid: the box (lower, upper) the initial means are drawn in, ego frame.
    """

    def __init__(
        self,
        num_gaussians: int = 10_000,
        embed_dims: int = 256,
        feat_channels: int = 256,
        num_levels: int = 3,
        num_blocks: int = 3,
        num_points: int = 8,
        num_heads: int = 8,
        self_attention: str = "induced",
        temporal_attention: str = "induced",
        num_inducing: int = 500,
        num_cams: int = 6,
        ffn: bool = False,
        mean_param: str = "residual",
        dropout: float = 0.0,
        scale_range: tuple[float, float] = (0.05, 1.0),
        num_classes: int = NUM_SEMANTIC_CLASSES,
        with_color: bool = False,
        grid: VoxelGrid = OCC3D_GRID,
    ):
        super().__init__()
        if not 0 < scale_range[0] < scale_range[1]:
            raise ValueError(f"GaussianDecoder: scale_range must be 0 < min < max metres, got {scale_range}")
        if mean_param not in ("residual", "bounded"):
            raise ValueError(f"GaussianDecoder: mean_param must be 'residual' or 'bounded', got {mean_param!r}")
        self.num_gaussians, self.num_classes, self.with_color = num_gaussians, num_classes, with_color
        self.scale_range = scale_range
        self.num_levels = num_levels
        self.mean_param = mean_param
        self.temporal_attention = temporal_attention
        self.grid = grid
        lower, upper = grid.box()
        self.register_buffer("lower", lower, persistent=False)
        self.register_buffer("extent", upper - lower, persistent=False)
        # Uniform in the box, as GaussianFlowOcc's random initial means.
        u = torch.rand(num_gaussians, 3).clamp(0.01, 0.99)
        if mean_param == "bounded":
            self.position_logits = nn.Parameter(torch.logit(u))
        else:
            self.initial_means = nn.Parameter(lower + u * (upper - lower))
        self.queries = nn.Parameter(torch.randn(num_gaussians, embed_dims))
        self.pos_enc = PointPositionalEncoding(embed_dims, grid)
        self.blocks = nn.ModuleList(
            GaussianDecoderBlock(
                embed_dims, feat_channels, num_levels, num_points, num_heads, self_attention, temporal_attention,
                num_inducing, num_cams, ffn, mean_param, dropout,
            )
            for _ in range(num_blocks)
        )  # fmt: skip
        self.opacity_head = _mlp(embed_dims, embed_dims, 1)
        self.scale_head = _mlp(embed_dims, embed_dims, 3)
        self.rotation_head = _mlp(embed_dims, embed_dims, 4)
        self.semantic_head = _mlp(embed_dims, embed_dims, num_classes)
        self.color_head = _mlp(embed_dims, embed_dims, 3) if with_color else None
        # Identity rotations at the start: a bias of (1, 0, 0, 0) dominates small weights.
        with torch.no_grad():
            self.rotation_head[-1].weight.mul_(0.1)
            self.rotation_head[-1].bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))

    def _initial_means(self, b: int) -> Tensor:
        if self.mean_param == "bounded":
            return (self.lower + torch.sigmoid(self.position_logits) * self.extent).expand(b, -1, -1)
        return self.initial_means.expand(b, -1, -1)

    def forward(
        self,
        feats: Sequence[Float[Tensor, "B V C _h _w"]],
        K: Float[Tensor, "B V 3 3"],
        T_ego_cam: Float[Tensor, "B V 4 4"],
        image_hw: tuple[int, int],
        prev: TemporalContext | None = None,
    ) -> Gaussians:
        """Gaussians of the scene seen by the cameras, in the ego frame of those cameras.

        Args:
            feats: image features, finest level first (``TimmFPN`` output).
            K: pixel intrinsics of the images the features come from.
            T_ego_cam: camera (OpenCV) -> ego.
            image_hw: (height, width) of those images in pixels (``K``'s pixel units).
            prev: the previous frame's Gaussians in this frame (temporal attention); None
                at the first frame of a scene. Ignored with ``temporal_attention="none"``.

        Raises:
            ValueError: fewer feature levels than ``num_levels``; ``prev`` of another batch size.
        """
        if len(feats) < self.num_levels:
            raise ValueError(f"GaussianDecoder: got {len(feats)} feature levels, needs {self.num_levels}")
        b = K.shape[0]
        means = self._initial_means(b)
        x = self.queries.expand(b, -1, -1)
        prev_tokens = None
        if self.temporal_attention != "none":
            if prev is None:
                prev_tokens = self.pos_enc(means) + x
            else:
                if prev.means.shape[0] != b:
                    raise ValueError(f"GaussianDecoder: prev has batch {prev.means.shape[0]}, features have {b}")
                prev_tokens = self.pos_enc(prev.means.to(x.dtype)) + prev.features.to(x.dtype)
        logits = self.position_logits.expand(b, -1, -1) if self.mean_param == "bounded" else None
        for blk in self.blocks:
            x = x + self.pos_enc(means)
            x, delta = blk(x, means, prev_tokens, feats, K, T_ego_cam, image_hw)
            if logits is not None:
                logits = logits + delta
                means = self.lower + torch.sigmoid(logits) * self.extent
            else:
                means = means + delta
        smin, smax = self.scale_range
        return Gaussians(
            means=means,
            quats=F.normalize(self.rotation_head(x), dim=-1),
            scales=smin + (smax - smin) * torch.sigmoid(self.scale_head(x)),
            opacities=torch.sigmoid(self.opacity_head(x)).squeeze(-1),
            semantics=self.semantic_head(x),
            features=x,
            colors=torch.sigmoid(self.color_head(x)) if self.color_head is not None else None,
        )


@full_precision
def carry_to_next_frame(
    gaussians: Gaussians,
    T_next_cur: Float[Tensor, "B 4 4"],
    flow: "GaussianFlow | None" = None,
    dt: Float[Tensor, " B"] | None = None,
) -> TemporalContext:
    """The :class:`TemporalContext` of the next frame: this frame's Gaussians moved by their
    flow over ``dt`` seconds (dynamic classes only; nothing without ``flow``) and then
    expressed in the next frame's ego frame by ``T_next_cur`` (ego motion).

    Source: GaussianFlowOcc ``prepare_prev_feat`` / ``ego_motion_compensation`` (flow to
    the next time step, then ``inverse(ego2global_next) @ ego2global_cur``).
    """
    means = gaussians.means.float() if gaussians.means.dtype in (torch.float16, torch.bfloat16) else gaussians.means
    if flow is not None and dt is not None:
        means = means + flow(gaussians, dt[:, None].to(means.dtype))[:, 0].to(means.dtype)
    T = T_next_cur.to(means.dtype)
    moved = torch.einsum("bij,bnj->bni", T[:, :3, :3], means) + T[:, None, :3, 3]
    return TemporalContext(means=moved, features=gaussians.features)


class GaussianFlow(nn.Module):
    """Per-Gaussian 3D displacement to each target time offset (temporal flow).

    An MLP of (Gaussian feature, sinusoidal embedding of the time offset in seconds) gives a
    displacement in the ego frame of the current frame; ego motion is *not* part of it (it
    comes from the poses when rendering). Gaussians whose argmax class is static (not in
    ``dynamic_classes``) get zero flow unless ``flow_static``; the mask is hard (argmax, no
    gradient through it) as in GaussianFlowOcc. Offsets of exactly 0 s get zero flow.

    Args:
        embed_dims: channels E of ``Gaussians.features``.
        hidden_dims: MLP width.
        num_layers: MLP layers (GaussianFlowOcc: 3).
        time_embed_dims: channels of the time embedding.
        time_periods_s: (min, max) periods of the sinusoids, seconds.
        flow_static: let every Gaussian move, whatever its class.
        dynamic_classes: Occ3D labels allowed to move.
        enabled: the ablation switch: False gives zero flow everywhere (static Gaussians,
            the weights stay so checkpoints of both arms load alike); ``--set
            model.flow.enabled=False`` in a config.

    Source: GaussianFlowOcc ``TemporalFeedForwardNetwork`` and
    ``move_gaussians_temporal_module``; deliberate difference: the time input is the offset
    in seconds (embedded), not an index into 13 fixed frame offsets.
    """

    def __init__(
        self,
        embed_dims: int = 256,
        hidden_dims: int = 256,
        num_layers: int = 3,
        time_embed_dims: int = 32,
        time_periods_s: tuple[float, float] = (0.5, 20.0),
        flow_static: bool = False,
        dynamic_classes: tuple[int, ...] = DYNAMIC_CLASSES,
        enabled: bool = True,
    ):
        super().__init__()
        self.enabled = enabled
        self.time_embed_dims, self.time_periods_s = time_embed_dims, time_periods_s
        self.flow_static = flow_static
        self.register_buffer("dynamic_classes", torch.tensor(dynamic_classes, dtype=torch.long), persistent=False)
        self.mlp = _mlp(embed_dims + time_embed_dims, hidden_dims, 3, layers=num_layers)
        # Zero flow at the start: everything is static until the losses say otherwise.
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def moving_mask(self, semantics: Float[Tensor, "B N K"]) -> Float[Tensor, "B N"]:
        """1 for Gaussians allowed to move (dynamic argmax class, or all if ``flow_static``;
        none when the flow is disabled)."""
        if not self.enabled:
            return semantics.new_zeros(semantics.shape[:-1])
        if self.flow_static:
            return semantics.new_ones(semantics.shape[:-1])
        label = semantics.argmax(-1)
        return (label[..., None] == self.dynamic_classes).any(-1).to(semantics.dtype)

    def forward(self, gaussians: Gaussians, dt: Float[Tensor, "B T"]) -> Float[Tensor, "B T N 3"]:
        """Displacements (metres, current ego frame) of a batch of Gaussians.

        Args:
            gaussians: batched Gaussians (``features`` and ``semantics`` are used).
            dt: time offset of each target frame from the current frame, seconds.
        """
        feat = gaussians.features
        b, n, _ = feat.shape
        t = dt.shape[1]
        emb = sinusoidal_embedding(dt.to(feat.dtype), self.time_embed_dims, *self.time_periods_s)  # [B T D]
        x = torch.cat([feat[:, None].expand(b, t, n, -1), emb[:, :, None].expand(b, t, n, -1)], dim=-1)
        flow = self.mlp(x)
        keep = self.moving_mask(gaussians.semantics)[:, None, :, None] * (dt != 0).to(feat.dtype)[:, :, None, None]
        return flow * keep
