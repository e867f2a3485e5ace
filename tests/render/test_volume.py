"""NeuS and density volume rendering against analytic scenes (planes, spheres, slabs)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from render.volume import (
    FieldSamples,
    NeuSRenderer,
    depth_from_dist,
    median_distance,
    neus_alpha,
    render_density,
    resolve_backend,
    weights_from_alpha,
    weights_from_density,
)


def plane_field(x0: float = 5.0, colour=(0.2, 0.5, 0.9)):
    """Plane ``x = x0`` with free space (positive SDF) towards ``x < x0``."""
    colour = torch.tensor(colour)

    def field(p):
        return FieldSamples(sdf=x0 - p[:, 0], features=colour.to(p).expand(p.shape[0], -1))

    return field


def sphere_field(centre, radius: float):
    def field(p):
        return FieldSamples(sdf=(p - centre.to(p)).norm(dim=-1) - radius, features=torch.ones_like(p[:, :1]))

    return field


def x_rays(n: int, dtype=torch.float64):
    origins = torch.zeros(n, 3, dtype=dtype)
    directions = torch.zeros(n, 3, dtype=dtype)
    directions[:, 0] = 1.0
    return origins, directions


def renderer(**kwargs) -> NeuSRenderer:
    return NeuSRenderer(**kwargs).double().eval()


@pytest.mark.parametrize("num_samples", [16, 64, 256])
@pytest.mark.parametrize("variance", [0.1, 0.5])
def test_plane_head_on_renders_its_distance(num_samples, variance):
    # For a linear SDF NeuS' section formula is exact (the weights telescope into
    # Phi(s f(t_start)) - Phi(s f(t_end))), so the only bias is the 1e-5 of the formula,
    # which gives every free-space sample an opacity of about 1e-5: |bias| <= 1e-5 S L.
    origins, directions = x_rays(3)
    near, far = torch.zeros(3, dtype=torch.float64), torch.full((3,), 10.0, dtype=torch.float64)
    out = renderer(num_samples=num_samples, init_variance=variance)(plane_field(), origins, directions, near, far)
    bound = 1e-5 * num_samples * 10.0
    torch.testing.assert_close(out.dist, torch.full((3,), 5.0, dtype=torch.float64), atol=bound, rtol=0)
    torch.testing.assert_close(out.opacity, torch.ones(3, dtype=torch.float64), atol=1e-4, rtol=0)
    colour = torch.tensor([[0.2, 0.5, 0.9]], dtype=torch.float64).expand(3, 3)
    torch.testing.assert_close(out.features, colour, atol=1e-4, rtol=0)


def test_sphere_distance_converges_with_samples_and_sharpness():
    centre = torch.tensor([10.0, 0.0, 0.0], dtype=torch.float64)
    radius = 2.0
    angles = torch.tensor([0.0, 0.05, 0.1, 0.15], dtype=torch.float64)
    directions = torch.stack([torch.cos(angles), torch.sin(angles), torch.zeros_like(angles)], dim=-1)
    origins = torch.zeros_like(directions)
    b = directions @ centre
    expected = b - torch.sqrt(b**2 - centre.dot(centre) + radius**2)  # first ray-sphere hit
    near, far = torch.full((4,), 5.0, dtype=torch.float64), torch.full((4,), 15.0, dtype=torch.float64)

    def error(num_samples, variance):
        r = renderer(num_samples=num_samples, init_variance=variance)
        out = r(sphere_field(centre, radius), origins, directions, near, far)
        return (out.dist - expected).abs().max().item(), out

    err_32, _ = error(32, 0.5)
    err_128, _ = error(128, 0.5)
    err_512, out = error(512, 0.5)
    assert err_512 < err_128 < err_32
    assert err_512 < 0.01
    torch.testing.assert_close(out.opacity, torch.ones(4, dtype=torch.float64), atol=1e-3, rtol=0)
    err_blurry, _ = error(512, 0.1)  # s = e: the logistic density is ~0.7 m wide
    assert err_blurry > 10 * err_512


def test_empty_space_is_transparent():
    origins, directions = x_rays(5)
    near, far = torch.zeros(5, dtype=torch.float64), torch.full((5,), 40.0, dtype=torch.float64)
    out = renderer(num_samples=64, init_variance=0.3)(plane_field(x0=1000.0), origins, directions, near, far)
    assert out.opacity.max().item() < 64 * 2e-5
    assert out.features.abs().max().item() < 64 * 2e-5


def test_surface_inside_the_interval_collects_all_weight_behind_it_none():
    origins, directions = x_rays(2)
    near = torch.tensor([0.0, 6.0], dtype=torch.float64)
    far = torch.tensor([10.0, 10.0], dtype=torch.float64)
    out = renderer(num_samples=128, init_variance=0.5)(plane_field(), origins, directions, near, far)
    assert out.opacity[0].item() == pytest.approx(1.0, abs=1e-4)
    # The second ray starts inside the solid: it is opaque at once, at its near bound.
    assert out.weights[1, 0].item() > 0.99
    assert out.dist[1].item() == pytest.approx(6.0 + 4.0 / 256, abs=1e-3)


def test_features_composite_to_the_surface_colour():
    colour_before, colour_after = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 1.0])

    def field(p):
        # Colour changes 0.5 m before the surface: what is rendered is what lies at the surface.
        before = (p[:, 0] < 4.5)[:, None]
        return FieldSamples(sdf=5.0 - p[:, 0], features=torch.where(before, colour_before.to(p), colour_after.to(p)))

    origins, directions = x_rays(2)
    near, far = torch.zeros(2, dtype=torch.float64), torch.full((2,), 10.0, dtype=torch.float64)
    out = renderer(num_samples=256, init_variance=0.5)(field, origins, directions, near, far)
    torch.testing.assert_close(out.features, colour_after.double().expand(2, 3), atol=1e-2, rtol=0)


def test_missed_rays_and_empty_intervals_render_nothing():
    origins, directions = x_rays(2)
    near = torch.tensor([0.0, 3.0], dtype=torch.float64)
    far = torch.tensor([0.0, 2.0], dtype=torch.float64)
    out = renderer(num_samples=8)(plane_field(x0=0.5), origins, directions, near, far)
    assert torch.all(out.weights == 0)
    assert torch.all(out.dist == 0) and torch.all(out.opacity == 0)


def test_outputs_have_documented_shapes_and_depth_conversion():
    origins, directions = x_rays(6)
    near, far = torch.zeros(6, dtype=torch.float64), torch.full((6,), 10.0, dtype=torch.float64)
    out = renderer(num_samples=12)(plane_field(), origins, directions, near, far)
    assert out.weights.shape == out.t.shape == out.sdf.shape == out.alphas.shape == (6, 12)
    assert out.points.shape == out.sdf_gradients.shape == (6, 12, 3)
    assert out.features.shape == (6, 3) and out.inv_s.shape == ()
    torch.testing.assert_close(out.points[..., 0], out.t)
    torch.testing.assert_close(out.sdf_gradients, torch.tensor([-1.0, 0, 0], dtype=torch.float64).expand(6, 12, 3))
    assert out.inv_s.item() == pytest.approx(math.exp(1.0))
    depth_per_dist = torch.full((6,), 0.5, dtype=torch.float64)
    torch.testing.assert_close(depth_from_dist(out.dist, depth_per_dist), 0.5 * out.dist)
    torch.testing.assert_close(out.normalized_dist(), out.dist / out.opacity)


def test_without_gradients_the_along_ray_slope_gives_the_same_plane():
    origins, directions = x_rays(2)
    directions = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0]], dtype=torch.float64)
    near, far = torch.zeros(2, dtype=torch.float64), torch.full((2,), 10.0, dtype=torch.float64)
    r = renderer(num_samples=64, init_variance=0.3)
    with_grad = r(plane_field(), origins, directions, near, far)
    without = r(plane_field(), origins, directions, near, far, compute_gradients=False)
    assert without.sdf_gradients is None
    torch.testing.assert_close(without.dist, with_grad.dist)
    torch.testing.assert_close(with_grad.dist, torch.tensor([5.0, 6.25], dtype=torch.float64), atol=1e-2, rtol=0)


def test_field_supplied_gradients_are_used():
    def field_with(gradient):
        def field(p):
            grads = torch.tensor(gradient, dtype=p.dtype).expand(p.shape[0], 3)
            return FieldSamples(sdf=5.0 - p[:, 0], features=torch.ones_like(p[:, :1]), sdf_gradients=grads)

        return field

    origins, directions = x_rays(1)
    near, far = torch.zeros(1, dtype=torch.float64), torch.full((1,), 10.0, dtype=torch.float64)
    r = renderer(num_samples=32, init_variance=0.3)
    autograd = r(plane_field(), origins, directions, near, far)
    exact = r(field_with([-1.0, 0.0, 0.0]), origins, directions, near, far)
    torch.testing.assert_close(exact.dist, autograd.dist)
    # With a zero gradient c = 0: alpha only rises deep inside the solid, where
    # Phi(s f) itself vanishes, so the rendered surface moves behind the true one.
    flat = r(field_with([0.0, 0.0, 0.0]), origins, directions, near, far)
    torch.testing.assert_close(flat.sdf_gradients, torch.zeros(1, 32, 3, dtype=torch.float64))
    assert flat.dist.item() > 5.5


def test_perturbation_only_in_training_and_samples_tile_the_interval():
    origins, directions = x_rays(4)
    near, far = torch.full((4,), 1.0, dtype=torch.float64), torch.full((4,), 9.0, dtype=torch.float64)
    r = renderer(num_samples=16)
    a = r(plane_field(), origins, directions, near, far)
    b = r(plane_field(), origins, directions, near, far)
    torch.testing.assert_close(a.t, b.t)
    r.train()
    c = r(plane_field(), origins, directions, near, far, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(c.t, a.t)
    assert torch.all(c.t[:, 1:] > c.t[:, :-1])
    torch.testing.assert_close(c.deltas.sum(dim=-1), far - near)
    torch.testing.assert_close(c.t[:, 0] - c.deltas[:, 0] / 2, near)


def test_chunking_does_not_change_the_result():
    g = torch.Generator().manual_seed(0)
    directions = torch.randn(37, 3, generator=g, dtype=torch.float64)
    directions = directions / directions.norm(dim=-1, keepdim=True)
    origins = torch.zeros_like(directions)
    near, far = torch.zeros(37, dtype=torch.float64), torch.full((37,), 8.0, dtype=torch.float64)
    field = sphere_field(torch.zeros(3), 4.0)  # seen from inside: every ray hits
    whole = renderer(num_samples=24, chunk=1000)(field, origins, directions, near, far)
    with torch.no_grad():
        chunked = renderer(num_samples=24, chunk=5)(field, origins, directions, near, far)
    assert not chunked.dist.requires_grad
    for name in ("dist", "opacity", "features", "weights", "t", "points", "sdf_gradients"):
        torch.testing.assert_close(getattr(chunked, name), getattr(whole, name).detach())


class LearnablePlane(nn.Module):
    def __init__(self):
        super().__init__()
        self.offset = nn.Parameter(torch.tensor(5.0, dtype=torch.float64))
        self.slope = nn.Parameter(torch.tensor(1.2, dtype=torch.float64))
        self.colour = nn.Parameter(torch.tensor([0.3, 0.6], dtype=torch.float64))

    def forward(self, p):
        return FieldSamples(
            sdf=self.slope * (self.offset - p[:, 0]), features=self.colour.expand(p.shape[0], -1)
        )


def test_gradients_reach_field_parameters_variance_and_eikonal_term():
    field = LearnablePlane()
    r = renderer(num_samples=64, init_variance=0.2).train()
    origins, directions = x_rays(3)
    near, far = torch.zeros(3, dtype=torch.float64), torch.full((3,), 10.0, dtype=torch.float64)
    out = r(field, origins, directions, near, far, generator=torch.Generator().manual_seed(0))
    eikonal = ((out.sdf_gradients.norm(dim=-1) - 1.0) ** 2).mean()
    loss = out.dist.sum() + out.features.sum() + eikonal
    loss.backward()
    # d dist / d offset = 1 for a plane; the eikonal term alone moves the slope towards 1.
    assert field.offset.grad.item() == pytest.approx(3.0, rel=1e-2)
    assert field.slope.grad.item() > 0
    assert torch.all(field.colour.grad > 0)
    assert r.variance.grad is not None and torch.isfinite(r.variance.grad)
    assert r.variance.grad.abs().item() > 0


def test_alpha_and_weights_pass_gradcheck():
    g = torch.Generator().manual_seed(0)
    sdf = (torch.rand(3, 6, generator=g, dtype=torch.float64) - 0.5).requires_grad_()
    # Keep cos away from the relu kink at 0 and alpha away from its clip at 0 and 1.
    cos = (-0.3 - 0.6 * torch.rand(3, 6, generator=g, dtype=torch.float64)).requires_grad_()
    deltas = (0.1 + 0.2 * torch.rand(3, 6, generator=g, dtype=torch.float64)).requires_grad_()
    inv_s = torch.tensor(4.0, dtype=torch.float64, requires_grad=True)
    for ratio in (1.0, 0.3):
        alpha = lambda *a: neus_alpha(*a, cos_anneal_ratio=ratio)  # noqa: E731
        assert torch.autograd.gradcheck(alpha, (sdf, cos, deltas, inv_s))
    alphas = (0.05 + 0.9 * torch.rand(3, 6, generator=g, dtype=torch.float64)).requires_grad_()
    for backend in ("torch", "nerfacc"):
        assert torch.autograd.gradcheck(lambda a: weights_from_alpha(a, backend), (alphas,))
    sigmas = (torch.rand(3, 6, generator=g, dtype=torch.float64) * 2).requires_grad_()
    t_starts = torch.arange(6, dtype=torch.float64).expand(3, 6) * 0.5
    for backend in ("torch", "nerfacc"):
        weights = lambda s: weights_from_density(s, t_starts, t_starts + 0.5, backend)  # noqa: E731
        assert torch.autograd.gradcheck(weights, (sigmas,))


def test_neus_alpha_orientation():
    # Entering a surface along the gradient's opposite (cos < 0, sdf dropping) is opaque;
    # leaving it (cos > 0) is clamped to c = 0 and transparent.
    sdf = torch.zeros(1, 2, dtype=torch.float64)
    cos = torch.tensor([[-1.0, 1.0]], dtype=torch.float64)
    deltas = torch.full((1, 2), 0.5, dtype=torch.float64)
    alpha = neus_alpha(sdf, cos, deltas, torch.tensor(50.0, dtype=torch.float64))
    assert alpha[0, 0].item() > 0.9
    assert alpha[0, 1].item() < 1e-4


def test_torch_and_nerfacc_backends_agree_on_values_and_gradients():
    origins, _ = x_rays(9)
    g = torch.Generator().manual_seed(1)
    forward = torch.tensor([3.0, 0.0, 0.0], dtype=torch.float64)
    directions = torch.randn(9, 3, generator=g, dtype=torch.float64) + forward
    directions = torch.nn.functional.normalize(directions, dim=-1)
    near, far = torch.zeros(9, dtype=torch.float64), torch.full((9,), 10.0, dtype=torch.float64)
    results = {}
    for backend in ("torch", "nerfacc"):
        field = LearnablePlane()
        r = renderer(num_samples=32, init_variance=0.2, backend=backend).train()
        out = r(field, origins, directions, near, far, generator=torch.Generator().manual_seed(0))
        (out.dist.sum() + out.features.square().sum() + out.sdf_gradients.square().sum()).backward()
        results[backend] = (out, field.offset.grad, field.slope.grad, field.colour.grad, r.variance.grad)
    ref, other = results["torch"], results["nerfacc"]
    for name in ("dist", "opacity", "features", "weights"):
        torch.testing.assert_close(getattr(other[0], name), getattr(ref[0], name))
    for a, b in zip(other[1:], ref[1:]):
        torch.testing.assert_close(a, b)


def test_unknown_backend_and_bad_field_raise():
    assert resolve_backend("auto") == "nerfacc"  # pinned in requirements.txt
    with pytest.raises(ValueError, match="backend"):
        NeuSRenderer(backend="cuda")
    origins, directions = x_rays(2)
    near, far = torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    r = renderer(num_samples=4)
    with pytest.raises(ValueError, match="FieldSamples"):
        r(lambda p: p[:, 0], origins, directions, near, far)
    with pytest.raises(ValueError, match="expected"):
        r(lambda p: FieldSamples(sdf=p[:3, 0], features=p[:3]), origins, directions, near, far)
    with pytest.raises(ValueError, match="unit-norm"):
        r(plane_field(), origins, 2 * directions, near, far)


def test_density_rendering_of_a_homogeneous_medium_is_analytic():
    sigma, length, S = 0.3, 6.0, 512
    edges = torch.linspace(0.0, length, S + 1, dtype=torch.float64)
    t_starts, t_ends = edges[:-1].expand(2, S), edges[1:].expand(2, S)
    sigmas = torch.full((2, S), sigma, dtype=torch.float64)
    features = torch.ones(2, S, 1, dtype=torch.float64)
    out = render_density(sigmas, t_starts, t_ends, features)
    opacity = 1.0 - math.exp(-sigma * length)
    # E[t 1(t < L)] for an exponential distribution of rate sigma.
    dist = (1.0 - math.exp(-sigma * length) * (1.0 + sigma * length)) / sigma
    torch.testing.assert_close(out.opacity, torch.full((2,), opacity, dtype=torch.float64))
    torch.testing.assert_close(out.features[:, 0], out.opacity)
    torch.testing.assert_close(out.dist, torch.full((2,), dist, dtype=torch.float64), atol=1e-4, rtol=0)


def test_density_wall_renders_its_distance_in_both_backends():
    edges = torch.linspace(0.0, 10.0, 101, dtype=torch.float64)
    t_starts, t_ends = edges[:-1][None], edges[1:][None]
    sigmas = torch.where(t_starts >= 4.0, 1e4, 0.0).requires_grad_()
    features = torch.rand(1, 100, 4, dtype=torch.float64)
    outs = {b: render_density(sigmas, t_starts, t_ends, features, backend=b) for b in ("torch", "nerfacc")}
    assert outs["torch"].dist.item() == pytest.approx(4.05)
    torch.testing.assert_close(outs["torch"].features, features[:, 40])
    grads = [torch.autograd.grad(o.dist.sum() + o.features.sum(), sigmas)[0] for o in outs.values()]
    for name in ("weights", "dist", "features", "opacity"):
        torch.testing.assert_close(getattr(outs["nerfacc"], name), getattr(outs["torch"], name))
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.requires_cuda
def test_cuda_renderer_matches_cpu_torch_values_and_gradients():
    origins, directions = x_rays(64, dtype=torch.float32)
    directions = torch.nn.functional.normalize(directions + 0.1 * torch.randn(64, 3), dim=-1)
    near, far = torch.zeros(64), torch.full((64,), 10.0)
    results = []
    for device, backend in (("cpu", "torch"), ("cuda", "torch"), ("cuda", "nerfacc")):
        field = LearnablePlane().float().to(device)
        r = NeuSRenderer(num_samples=64, init_variance=0.3, backend=backend).to(device).eval()
        out = r(field, origins.to(device), directions.to(device), near.to(device), far.to(device))
        (out.dist.sum() + out.features.sum() + out.sdf_gradients.square().sum()).backward()
        results.append([out.dist, out.features, out.weights, field.offset.grad, field.slope.grad, r.variance.grad])
    for other in results[1:]:
        for a, b in zip(other, results[0]):
            torch.testing.assert_close(a.cpu(), b, atol=1e-4, rtol=1e-4)


@pytest.mark.requires_cuda
def test_nerfacc_packed_cuda_weights_match_torch():
    import nerfacc

    g = torch.Generator().manual_seed(0)
    alphas = (0.9 * torch.rand(16, 20, generator=g)).requires_grad_()
    ref, _ = weights_from_alpha(alphas, backend="torch")
    flat = alphas.detach().cuda().reshape(-1).requires_grad_()
    ray_indices = torch.arange(16, device="cuda").repeat_interleave(20)
    packed, _ = nerfacc.render_weight_from_alpha(flat, ray_indices=ray_indices, n_rays=16)
    torch.testing.assert_close(packed.reshape(16, 20).cpu(), ref.detach(), atol=1e-6, rtol=1e-5)
    upstream = torch.rand(16, 20, generator=g)
    (grad_ref,) = torch.autograd.grad(ref, alphas, upstream)
    (grad_packed,) = torch.autograd.grad(packed, flat, upstream.cuda().reshape(-1))
    torch.testing.assert_close(grad_packed.reshape(16, 20).cpu(), grad_ref, atol=1e-5, rtol=1e-4)


def test_neus_renderer_loads_a_checkpoint_without_the_sharpness_bound():
    from render.volume import NeuSRenderer

    old = NeuSRenderer(num_samples=4, init_variance=0.2, backend="torch").state_dict()
    del old["min_inv_s"]  # what checkpoints written before the bound hold
    new = NeuSRenderer(num_samples=4, init_variance=0.0, backend="torch")
    new.min_inv_s.fill_(5.0)
    new.load_state_dict(old)
    assert float(new.min_inv_s) == 0.0
    assert float(new.inv_s.detach()) == pytest.approx(float(torch.exp(torch.tensor(2.0))))


def test_log_spacing_tiles_the_ray_with_a_constant_ratio_and_renders_planes_exactly():
    near = torch.tensor([0.5, 2.0, 3.0], dtype=torch.float64)
    far = torch.tensor([60.0, 10.0, 3.0], dtype=torch.float64)  # the last ray is empty
    r = renderer(num_samples=32, spacing="log")
    edges = r._sample_edges(near, far, None)
    torch.testing.assert_close(edges[:, 0], near)
    torch.testing.assert_close(edges[:, -1], far)
    ratio = edges[:2, 1:] / edges[:2, :-1]
    torch.testing.assert_close(ratio, (far[:2] / near[:2]).pow(1 / 32)[:, None].expand_as(ratio))
    r.train()
    jittered = r._sample_edges(near[:2], far[:2], torch.Generator().manual_seed(0))
    assert bool((jittered[:, 1:] > jittered[:, :-1]).all())
    torch.testing.assert_close(jittered[:, [0, -1]], edges[:2, [0, -1]])
    assert not torch.allclose(jittered, edges[:2])
    # A plane renders at its distance to within half the interval that holds it (at s = e^5
    # the weight falls inside one interval; its midpoint is the rendered distance).
    origins, directions = x_rays(2)
    out = renderer(num_samples=64, init_variance=0.5, spacing="log")(
        plane_field(), origins, directions, torch.full((2,), 0.5, dtype=torch.float64), torch.full((2,), 10.0, dtype=torch.float64))
    half_interval = 0.5 * 5.0 * (20.0 ** (1 / 64) - 1)  # 0.12 m
    assert float((out.dist.detach() - 5.0).abs().max()) < half_interval
    torch.testing.assert_close(out.opacity, torch.ones(2, dtype=torch.float64), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="near > 0"):
        renderer(spacing="log")._sample_edges(torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64), None)
    with pytest.raises(ValueError, match="spacing"):
        NeuSRenderer(spacing="disparity")


def test_median_distance_picks_the_surface_holding_half_the_weight():
    t = torch.tensor([[1.0, 2.0, 3.0, 4.0]]).expand(4, 4)
    w = torch.tensor([
        [0.0, 0.4, 0.0, 0.6],  # split between two surfaces: expected 3.2 m, median 4 m
        [0.0, 0.6, 0.0, 0.4],  # the nearer one holds more than half
        [0.0, 0.0, 0.0, 0.0],  # nothing stops the ray: its last sample
        [0.0, 2.0, 0.0, 2.0],  # unnormalised weights: half of their sum, exactly reached
    ])
    torch.testing.assert_close(median_distance(w, t), torch.tensor([4.0, 2.0, 4.0, 2.0]))
    with pytest.raises((ValueError, TypeError)):  # jaxtyping's run-time check, or ours without it
        median_distance(w[:, :3], t)


def test_median_distance_of_a_rendered_plane_is_the_plane_within_one_sample():
    origins, directions = x_rays(2)
    near, far = torch.zeros(2, dtype=torch.float64), torch.full((2,), 10.0, dtype=torch.float64)
    out = renderer(num_samples=64, init_variance=0.3)(plane_field(5.0), origins, directions, near, far)
    spacing = 10.0 / 64
    assert (median_distance(out.weights, out.t) - 5.0).abs().max() <= spacing
