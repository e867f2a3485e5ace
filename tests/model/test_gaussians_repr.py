"""GaussianDecoder, GaussianFlow and voxelize_gaussians on seeded tiny inputs and hand cases."""

from __future__ import annotations

import math

import pytest
import torch

from selfsup.grid import OCC3D_FREE, OCC3D_GRID, VoxelGrid
from selfsup.representations.gaussians import (
    DYNAMIC_CLASSES,
    GaussianDecoder,
    GaussianFlow,
    Gaussians,
    ImageCrossAttention,
    TemporalContext,
    carry_to_next_frame,
    gaussian_precision,
    quat_to_rotmat,
    splat_gaussians_to_grid,
    voxelize_gaussians,
)

# A forward-looking camera (OpenCV z = ego x, x = -ego y, y = -ego z) 1.5 m above the ego origin.
CAM_TO_EGO = torch.tensor(
    [[0.0, 0.0, 1.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 1.5], [0.0, 0.0, 0.0, 1.0]]
)
K_SMALL = torch.tensor([[20.0, 0.0, 12.0], [0.0, 20.0, 8.0], [0.0, 0.0, 1.0]])  # 24 x 16 image


def tiny_decoder(**kw) -> GaussianDecoder:
    args = dict(
        num_gaussians=32, embed_dims=16, feat_channels=8, num_levels=2, num_blocks=2, num_points=3,
        num_heads=2, num_inducing=4, scale_range=(0.1, 1.5),
    )  # fmt: skip
    args.update(kw)
    return GaussianDecoder(**args)


def tiny_inputs(b: int = 2, v: int = 2):
    feats = [torch.randn(b, v, 8, 4, 6), torch.randn(b, v, 8, 2, 3)]
    K = K_SMALL.expand(b, v, 3, 3).clone()
    T = CAM_TO_EGO.expand(b, v, 4, 4).clone()
    if v > 1:  # second camera looks backwards
        T[:, 1, :2, :3] *= -1
    return feats, K, T, (16, 24)


def one_gaussian(mean, scale=0.2, opacity=1.0, label=4, k=17) -> Gaussians:
    sem = torch.full((1, k), -5.0)
    sem[0, label] = 5.0
    return Gaussians(
        means=torch.tensor([mean], dtype=torch.float32),
        quats=torch.tensor([[1.0, 0.0, 0.0, 0.0]]),
        scales=torch.full((1, 3), float(scale)),
        opacities=torch.tensor([float(opacity)]),
        semantics=sem,
        features=torch.zeros(1, 4),
    )


def random_gaussians(n: int, grid: VoxelGrid, k: int = 5, seed: int = 0) -> Gaussians:
    gen = torch.Generator().manual_seed(seed)
    lower, upper = grid.box()
    # Some means beyond the box on purpose: their neighbourhoods are partly outside.
    means = lower - 0.5 + (upper - lower + 1.0) * torch.rand(n, 3, generator=gen)
    return Gaussians(
        means=means,
        quats=torch.randn(n, 4, generator=gen),
        scales=0.1 + 0.6 * torch.rand(n, 3, generator=gen),
        opacities=torch.rand(n, generator=gen),
        semantics=torch.randn(n, k, generator=gen),
        features=torch.zeros(n, 2),
    )


# --- decoder ---------------------------------------------------------------------------


def test_decoder_shapes_ranges_and_box():
    dec = tiny_decoder(with_color=True, mean_param="bounded")
    g = dec(*tiny_inputs())
    lower, upper = OCC3D_GRID.box()
    assert g.means.shape == (2, 32, 3) and g.semantics.shape == (2, 32, 17) and g.features.shape == (2, 32, 16)
    assert ((g.means >= lower) & (g.means <= upper)).all()
    assert ((g.opacities > 0) & (g.opacities < 1)).all()
    assert ((g.scales >= 0.1) & (g.scales <= 1.5)).all()
    torch.testing.assert_close(g.quats.norm(dim=-1), torch.ones(2, 32))
    assert g.colors is not None and g.colors.shape == (2, 32, 3) and ((g.colors >= 0) & (g.colors <= 1)).all()
    assert tiny_decoder()(*tiny_inputs()).colors is None


def test_decoder_stays_in_box_after_large_refinement():
    dec = tiny_decoder(mean_param="bounded")
    with torch.no_grad():
        for blk in dec.blocks:
            blk.refine.bias.fill_(50.0)  # would push unconstrained positions far outside
    g = dec(*tiny_inputs())
    lower, upper = OCC3D_GRID.box()
    assert ((g.means >= lower) & (g.means <= upper)).all()


@pytest.mark.parametrize(
    "mode,mean_param", [("induced", "residual"), ("full", "bounded"), ("none", "residual"), ("induced", "bounded")]
)
def test_decoder_gradients_reach_queries_positions_and_features(mode, mean_param):
    dec = tiny_decoder(self_attention=mode, temporal_attention=mode, mean_param=mean_param)
    feats, K, T, hw = tiny_inputs()
    feats = [f.requires_grad_() for f in feats]
    g = dec(feats, K, T, hw)
    loss = g.means.sum() + g.opacities.sum() + g.semantics.square().sum() + g.scales.sum() + g.quats[..., 1].sum()
    loss.backward()
    assert dec.queries.grad.abs().sum() > 0
    positions = dec.position_logits if mean_param == "bounded" else dec.initial_means
    assert positions.grad.abs().sum() > 0
    assert feats[0].grad.abs().sum() > 0 and feats[1].grad.abs().sum() > 0
    offsets = dec.blocks[0].cross_attn.sampling_offsets
    assert offsets.weight.grad.abs().sum() > 0  # deformable offsets learn (bilinear sampling)


def test_temporal_attention_reads_the_previous_frame():
    torch.manual_seed(0)
    dec = tiny_decoder().eval()
    feats, K, T, hw = tiny_inputs()
    prev = TemporalContext(means=torch.randn(2, 7, 3) * 5, features=torch.randn(2, 7, 16))
    other = TemporalContext(means=prev.means + 3.0, features=torch.randn(2, 7, 16))
    with torch.no_grad():
        a, b, none = dec(feats, K, T, hw, prev), dec(feats, K, T, hw, other), dec(feats, K, T, hw)
    assert (a.features - b.features).abs().max() > 1e-3  # the context changes the output
    assert (a.features - none.features).abs().max() > 1e-3
    # ... and switching temporal attention off makes the decoder blind to it
    blind = tiny_decoder(temporal_attention="none").eval()
    with torch.no_grad():
        torch.testing.assert_close(blind(feats, K, T, hw, prev).features, blind(feats, K, T, hw, other).features)
    with pytest.raises(ValueError, match="batch"):
        dec(feats, K, T, hw, TemporalContext(means=prev.means[:1], features=prev.features[:1]))


def test_carry_to_next_frame_applies_flow_then_ego_motion():
    labels = [4, 11]  # car (dynamic), driveable surface (static)
    g = _gaussians_with_labels(labels)
    g = Gaussians(**{**g.__dict__, "means": torch.tensor([[[1.0, 2.0, 0.5], [3.0, -1.0, 0.0]]])})
    flow = GaussianFlow(embed_dims=16, hidden_dims=16)
    with torch.no_grad():
        flow.mlp[-1].bias.copy_(torch.tensor([0.5, 0.0, 0.0]))  # every moving Gaussian drives +0.5 m in x
    # the ego drives 2 m forward: a point at x in the current frame is at x - 2 in the next
    T_next_cur = torch.eye(4)[None].clone()
    T_next_cur[0, 0, 3] = -2.0
    ctx = carry_to_next_frame(g, T_next_cur, flow, torch.tensor([0.5]))
    torch.testing.assert_close(ctx.means[0, 0], torch.tensor([1.0 + 0.5 - 2.0, 2.0, 0.5]))
    torch.testing.assert_close(ctx.means[0, 1], torch.tensor([3.0 - 2.0, -1.0, 0.0]))  # static: ego motion only
    assert ctx.features is g.features
    ctx_off = carry_to_next_frame(g, T_next_cur, None, None)
    torch.testing.assert_close(ctx_off.means[0, 0], torch.tensor([1.0 - 2.0, 2.0, 0.5]))


def test_decoder_rejects_bad_arguments():
    with pytest.raises(ValueError, match="self_attention"):
        tiny_decoder(self_attention="windowed")
    with pytest.raises(ValueError, match="temporal_attention"):
        tiny_decoder(temporal_attention="lstm")
    with pytest.raises(ValueError, match="mean_param"):
        tiny_decoder(mean_param="free")
    with pytest.raises(ValueError, match="scale_range"):
        tiny_decoder(scale_range=(1.0, 0.5))
    feats, K, T, hw = tiny_inputs()
    with pytest.raises(ValueError, match="feature levels"):
        tiny_decoder()(feats[:1], K, T, hw)


def _identity_cross_attention(num_cams: int = 1) -> ImageCrossAttention:
    """One head, one level, one point at the reference (zero offsets), identity value and
    output projections, no embeddings: the output is the feature at the projected mean."""
    att = ImageCrossAttention(embed_dims=2, feat_channels=2, num_levels=1, num_points=1, num_heads=1,
                              num_cams=num_cams, cam_embeds=False, level_embeds=False)  # fmt: skip
    with torch.no_grad():
        att.sampling_offsets.bias.zero_()
        for lin in (att.value_proj, att.output_proj):
            lin.weight.copy_(torch.eye(2))
            lin.bias.zero_()
    return att


def test_cross_attention_samples_the_projected_pixel():
    # Feature map = pixel-centre coordinates (u, v): bilinear sampling of a linear ramp is
    # exact, so the output is the projection of the Gaussian's mean.
    h, w = 16, 24
    vv, uu = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    feat = torch.stack([uu, vv])[None, None]  # [1 1 2 h w]
    mean_ego = torch.tensor([10.0, 1.0, 1.0])  # 10 m ahead, 1 m left, 0.5 m below the camera
    p_cam = torch.tensor([-1.0, 0.5, 10.0])  # the same point in the camera frame
    uv = (K_SMALL @ p_cam)[:2] / p_cam[2]
    att = _identity_cross_attention()
    out = att(torch.zeros(1, 1, 2), mean_ego.view(1, 1, 3), [feat], K_SMALL[None, None], CAM_TO_EGO[None, None], (h, w))
    torch.testing.assert_close(out[0, 0], uv, atol=1e-4, rtol=0)
    # an offset of (+2, -1) pixels at that level moves the sample by exactly that
    with torch.no_grad():
        att.sampling_offsets.bias.copy_(torch.tensor([2.0, -1.0]))
    out = att(torch.zeros(1, 1, 2), mean_ego.view(1, 1, 3), [feat], K_SMALL[None, None], CAM_TO_EGO[None, None], (h, w))
    torch.testing.assert_close(out[0, 0], uv + torch.tensor([2.0, -1.0]), atol=1e-4, rtol=0)


def test_cross_attention_heads_sample_their_own_channels_and_offsets():
    h, w = 16, 24
    vv, uu = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    feat = torch.stack([uu, vv, uu, vv])[None, None]  # heads 0 and 1 both see (u, v)
    att = ImageCrossAttention(embed_dims=4, feat_channels=4, num_levels=1, num_points=1, num_heads=2,
                              num_cams=1, cam_embeds=False, level_embeds=False)  # fmt: skip
    with torch.no_grad():
        att.sampling_offsets.bias.copy_(torch.tensor([0.0, 0.0, 3.0, 1.0]))  # head 1 looks 3 px right, 1 down
        for lin in (att.value_proj, att.output_proj):
            lin.weight.copy_(torch.eye(4))
            lin.bias.zero_()
    mean_ego = torch.tensor([10.0, 1.0, 1.0])
    uv = (K_SMALL @ torch.tensor([-1.0, 0.5, 10.0]))[:2] / 10.0
    out = att(torch.zeros(1, 1, 4), mean_ego.view(1, 1, 3), [feat], K_SMALL[None, None], CAM_TO_EGO[None, None], (h, w))
    torch.testing.assert_close(out[0, 0, :2], uv, atol=1e-4, rtol=0)
    torch.testing.assert_close(out[0, 0, 2:], uv + torch.tensor([3.0, 1.0]), atol=1e-4, rtol=0)


def test_cross_attention_averages_cameras_that_see_the_point_and_ignores_the_rest():
    h, w = 16, 24
    feats = [torch.full((1, 2, 2, h, w), 3.0)]
    feats[0][:, 1] = 7.0  # the backward camera
    K = K_SMALL.expand(1, 2, 3, 3)
    T = CAM_TO_EGO.expand(1, 2, 4, 4).clone()
    T[:, 1, :2, :3] *= -1
    att = _identity_cross_attention(num_cams=2)
    means = torch.tensor([[[10.0, 0.0, 1.5], [-10.0, 0.0, 1.5], [0.0, 10.0, 1.5]]])  # front, back, side
    out = att(torch.zeros(1, 3, 2), means, feats, K, T, (h, w))
    torch.testing.assert_close(out[0, 0], torch.tensor([3.0, 3.0]))
    torch.testing.assert_close(out[0, 1], torch.tensor([7.0, 7.0]))
    torch.testing.assert_close(out[0, 2], torch.tensor([0.0, 0.0]))  # seen by no camera


def test_cross_attention_camera_and_level_embeddings_are_added_to_values():
    h, w = 16, 24
    att = _identity_cross_attention(num_cams=2)
    att.cam_embeds = torch.nn.Parameter(torch.tensor([[1.0, 0.0], [0.0, 5.0]]))
    att.level_embeds = torch.nn.Parameter(torch.tensor([[10.0, 20.0]]))
    feats = [torch.zeros(1, 2, 2, h, w)]
    K = K_SMALL.expand(1, 2, 3, 3)
    T = CAM_TO_EGO.expand(1, 2, 4, 4).clone()
    T[:, 1, :2, :3] *= -1
    out = att(torch.zeros(1, 2, 2), torch.tensor([[[10.0, 0.0, 1.5], [-10.0, 0.0, 1.5]]]), feats, K, T, (h, w))
    torch.testing.assert_close(out[0, 0], torch.tensor([11.0, 20.0]))
    torch.testing.assert_close(out[0, 1], torch.tensor([10.0, 25.0]))
    with pytest.raises(ValueError, match="num_cams"):
        att(torch.zeros(1, 2, 2), torch.zeros(1, 2, 3), [torch.zeros(1, 3, 2, h, w)], K_SMALL.expand(1, 3, 3, 3),
            CAM_TO_EGO.expand(1, 3, 4, 4), (h, w))  # fmt: skip


# --- flow ------------------------------------------------------------------------------


def _gaussians_with_labels(labels: list[int], e: int = 16) -> Gaussians:
    n = len(labels)
    sem = torch.full((1, n, 17), -3.0)
    sem[0, torch.arange(n), torch.tensor(labels)] = 3.0
    return Gaussians(
        means=torch.zeros(1, n, 3), quats=torch.tensor([1.0, 0, 0, 0]).expand(1, n, 4),
        scales=torch.ones(1, n, 3), opacities=torch.ones(1, n), semantics=sem, features=torch.randn(1, n, e),
    )  # fmt: skip


def _randomise_last_layer(flow: GaussianFlow) -> None:
    with torch.no_grad():
        flow.mlp[-1].weight.normal_()
        flow.mlp[-1].bias.normal_()


def test_flow_starts_at_zero_and_moves_only_dynamic_classes():
    labels = [4, 11, 7, 15, 2, 16]  # car, driveable surface, pedestrian, manmade, bicycle, vegetation
    g = _gaussians_with_labels(labels)
    dt = torch.tensor([[0.0, -0.5, 1.0]])
    flow = GaussianFlow(embed_dims=16, hidden_dims=16)
    assert flow(g, dt).abs().max() == 0  # zero-initialised output layer
    _randomise_last_layer(flow)
    out = flow(g, dt)
    assert out.shape == (1, 3, 6, 3)
    moving = out.abs().sum(-1) > 0  # [1 T N]
    dynamic = torch.tensor([lab in DYNAMIC_CLASSES for lab in labels])
    assert (moving[0, 1:] == dynamic).all()
    assert not moving[0, 0].any()  # dt = 0: the current frame never moves


def test_flow_static_switch_moves_everything():
    g = _gaussians_with_labels([11, 15, 16])
    flow = GaussianFlow(embed_dims=16, hidden_dims=16, flow_static=True)
    _randomise_last_layer(flow)
    out = flow(g, torch.tensor([[0.0, 1.0]]))
    assert (out[0, 1].abs().sum(-1) > 0).all()


def test_flow_depends_on_time_offset():
    g = _gaussians_with_labels([4, 4])
    flow = GaussianFlow(embed_dims=16, hidden_dims=16)
    _randomise_last_layer(flow)
    out = flow(g, torch.tensor([[0.5, -0.5]]))
    assert not torch.allclose(out[0, 0], out[0, 1])


# --- geometry helpers -------------------------------------------------------------------


def test_quat_to_rotmat_and_precision():
    s = math.sqrt(0.5)
    R = quat_to_rotmat(torch.tensor([[1.0, 0, 0, 0], [s, 0, 0, s]]))
    torch.testing.assert_close(R[0], torch.eye(3))
    torch.testing.assert_close(R[1], torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]]), atol=1e-6, rtol=0)
    # 90 degrees about z swaps the x / y standard deviations.
    P = gaussian_precision(torch.tensor([s, 0, 0, s]), torch.tensor([1.0, 2.0, 4.0]))
    torch.testing.assert_close(P, torch.diag(torch.tensor([1 / 4, 1.0, 1 / 16])), atol=1e-6, rtol=0)


# --- voxelization ----------------------------------------------------------------------

SMALL_GRID = VoxelGrid(lower=(0.0, 0.0, 0.0), upper=(4.0, 3.2, 2.4), voxel_size=0.4)  # 10 x 8 x 6


def brute_force_splat(g: Gaussians, grid: VoxelGrid, nbh: int, probs: bool, opacity_weighted: bool = False):
    """Every Gaussian against every voxel centre, with an explicit Chebyshev-window test."""
    centres = grid.centers()  # [X Y Z 3]
    idx = torch.stack(torch.meshgrid(*[torch.arange(n) for n in grid.shape], indexing="ij"), -1)
    density = torch.zeros(grid.shape, dtype=torch.float64)
    evidence = torch.zeros(*grid.shape, g.semantics.shape[-1], dtype=torch.float64)
    sem = g.semantics.softmax(-1) if probs else g.semantics
    lower = torch.tensor(grid.lower)
    for i in range(g.means.shape[0]):
        own = torch.floor((g.means[i] - lower) / grid.voxel_size).long()
        window = ((idx - own).abs().max(-1).values <= nbh).double()
        d = (centres - g.means[i]).double()
        R = quat_to_rotmat(g.quats[i]).double()
        cov = R @ torch.diag(g.scales[i].double() ** 2) @ R.T
        m = (d @ torch.linalg.inv(cov) * d).sum(-1)
        falloff = torch.exp(-0.5 * m) * window
        density += g.opacities[i].double() * falloff
        sem_w = g.opacities[i].double() * falloff if opacity_weighted else falloff
        evidence += sem_w[..., None] * sem[i].double()
    return density, evidence


@pytest.mark.parametrize(
    "nbh,mode,weight", [(1, "logits", "falloff"), (2, "probs", "falloff"), (0, "logits", "falloff"), (1, "logits", "opacity_falloff")]
)
def test_splat_matches_brute_force(nbh, mode, weight):
    g = random_gaussians(12, SMALL_GRID, seed=nbh)
    density, evidence = splat_gaussians_to_grid(g, SMALL_GRID, nbh=nbh, semantic_mode=mode, chunk=5, semantic_weight=weight)
    ref_d, ref_e = brute_force_splat(g, SMALL_GRID, nbh, probs=mode == "probs", opacity_weighted=weight == "opacity_falloff")
    assert density.shape == SMALL_GRID.shape and evidence.shape == (*SMALL_GRID.shape, 5)
    assert ref_d.max() > 0.5  # the case is not trivially empty
    torch.testing.assert_close(density.double(), ref_d, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(evidence.double(), ref_e, atol=1e-4, rtol=1e-4)
    labels = voxelize_gaussians(
        g, SMALL_GRID, nbh=nbh, density_threshold=0.05, max_z_index=None, semantic_mode=mode, semantic_weight=weight
    )
    ref_labels = torch.where(ref_d.clamp(0, 1) < 0.05, torch.tensor(OCC3D_FREE), ref_e.argmax(-1))
    assert (labels.long() == ref_labels).all()


def test_splat_is_differentiable():
    g = random_gaussians(6, SMALL_GRID)
    g.means.requires_grad_()
    g.opacities.requires_grad_()
    density, evidence = splat_gaussians_to_grid(g, SMALL_GRID, nbh=2)
    (density.sum() + evidence.sum()).backward()
    assert g.means.grad.abs().sum() > 0 and g.opacities.grad.abs().sum() > 0


def test_single_gaussian_at_a_voxel_centre():
    centre = OCC3D_GRID.centers()[100, 120, 5]
    labels = voxelize_gaussians(one_gaussian(centre.tolist(), scale=0.05, label=9))
    assert labels.dtype == torch.uint8 and labels.shape == (200, 200, 16)
    assert labels[100, 120, 5] == 9
    # 0.4 m away is 8 sigma: exp(-32) is far below the threshold, so only one voxel is occupied.
    assert (labels != OCC3D_FREE).sum() == 1


def test_density_threshold():
    centre = OCC3D_GRID.centers()[50, 50, 3].tolist()
    g = one_gaussian(centre, scale=0.05, opacity=0.04, label=1)
    assert voxelize_gaussians(g, density_threshold=0.05)[50, 50, 3] == OCC3D_FREE
    assert voxelize_gaussians(g, density_threshold=0.03)[50, 50, 3] == 1


def test_density_is_clamped_before_thresholding():
    # Two overlapping Gaussians sum to density 2; clamped to 1, so a threshold of 1 keeps it.
    centre = OCC3D_GRID.centers()[10, 10, 2].tolist()
    a, b = one_gaussian(centre, scale=0.05, label=3), one_gaussian(centre, scale=0.05, label=3)
    g = Gaussians(*(torch.cat([getattr(a, f), getattr(b, f)]) for f in ("means", "quats", "scales", "opacities", "semantics", "features")))
    density, _ = splat_gaussians_to_grid(g)
    assert density[10, 10, 2] == pytest.approx(2.0)
    assert voxelize_gaussians(g, density_threshold=1.0)[10, 10, 2] == 3


def test_layers_from_max_z_index_are_cleared():
    high = OCC3D_GRID.centers()[100, 100, 12].tolist()  # z = 4.0 m, layer 12
    low = OCC3D_GRID.centers()[100, 100, 10].tolist()
    assert voxelize_gaussians(one_gaussian(high, scale=0.05))[100, 100, 12] == OCC3D_FREE
    assert voxelize_gaussians(one_gaussian(high, scale=0.05), max_z_index=None)[100, 100, 12] == 4
    assert voxelize_gaussians(one_gaussian(low, scale=0.05))[100, 100, 10] == 4


def test_neighbourhood_bounds_a_large_gaussian():
    centre = OCC3D_GRID.centers()[100, 100, 8].tolist()
    big = one_gaussian(centre, scale=3.0, label=15)  # would cover many metres without the window
    for nbh in (0, 1, 2, 4):
        labels = voxelize_gaussians(big, nbh=nbh, max_z_index=None)
        occupied = (labels != OCC3D_FREE).nonzero()
        assert occupied.shape[0] == (2 * nbh + 1) ** 3
        assert (occupied - torch.tensor([100, 100, 8])).abs().max() == nbh


def test_voxelize_rejects_bad_input():
    g = random_gaussians(3, SMALL_GRID)
    batched = Gaussians(*(getattr(g, f)[None] for f in ("means", "quats", "scales", "opacities", "semantics", "features")))
    with pytest.raises(ValueError, match="one sample"):
        voxelize_gaussians(batched, SMALL_GRID)
    with pytest.raises(ValueError, match="nbh"):
        voxelize_gaussians(g, SMALL_GRID, nbh=-1)
    with pytest.raises(ValueError, match="semantic_mode"):
        voxelize_gaussians(g, SMALL_GRID, semantic_mode="softmax")
