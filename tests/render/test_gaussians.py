"""Gaussian splatting: closed-form single/two-Gaussian images, culling, tiling vs brute force,
gradients (gradcheck in float64, finite differences), and gsplat vs torch on a GPU."""

from __future__ import annotations

import math

import pytest
import torch

from render.gaussians import GaussianRenderOutput, _rasterize_dense, rasterize_gaussians

F64 = torch.float64


def _pinhole(f: float, cx: float, cy: float, dtype=F64) -> torch.Tensor:
    return torch.tensor([[[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]]], dtype=dtype)


def _identity_quats(n: int, dtype=F64) -> torch.Tensor:
    return torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=dtype).repeat(n, 1)


def _look_from(eye: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """T_cam_world of an OpenCV camera at ``eye`` looking at ``target`` (world z up)."""
    z = torch.nn.functional.normalize(target - eye, dim=0)
    x = torch.nn.functional.normalize(torch.linalg.cross(z, torch.tensor([0.0, 0.0, 1.0], dtype=eye.dtype)), dim=0)
    y = torch.linalg.cross(z, x)
    rot = torch.stack([x, y, z])
    t = torch.eye(4, dtype=eye.dtype)
    t[:3, :3] = rot
    t[:3, 3] = -rot @ eye
    return t


def _random_scene(n: int, num_cams: int, d: int, seed: int, dtype=torch.float32, device="cpu"):
    """Gaussians in a 4 m cube around the origin, cameras on a ring looking at it."""
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g) - 0.5) * 4.0
    quats = torch.randn(n, 4, generator=g)
    scales = torch.rand(n, 3, generator=g) * 0.3 + 0.05
    opacities = torch.rand(n, generator=g) * 0.9 + 0.05
    features = torch.randn(n, d, generator=g)
    views, ks = [], []
    for c in range(num_cams):
        ang = 2 * math.pi * c / num_cams + 0.3
        eye = torch.tensor([6.0 * math.cos(ang), 6.0 * math.sin(ang), 1.0])
        views.append(_look_from(eye, torch.zeros(3)))
        ks.append(_pinhole(22.0 + 3 * c, 24.0 + c, 16.0 - c, torch.float32)[0])
    tensors = [means, quats, scales, opacities, features, torch.stack(views), torch.stack(ks)]
    return [t.to(dtype=dtype, device=device) for t in tensors]


# ---------------------------------------------------------------- closed-form images


@pytest.mark.parametrize("mode", ["classic", "antialiased"])
def test_single_isotropic_gaussian_head_on(mode):
    f, z, s, opacity, eps2d = 40.0, 4.0, 0.15, 0.7, 0.3
    width, height = 48, 32
    # Principal point on the centre of pixel (i=16, j=24): u = j + 0.5, v = i + 0.5.
    ks = _pinhole(f, 24.5, 16.5)
    feat = torch.tensor([[0.25, -2.0, 3.0]], dtype=F64)
    out = rasterize_gaussians(
        torch.tensor([[0.0, 0.0, z]], dtype=F64), _identity_quats(1), torch.full((1, 3), s, dtype=F64),
        torch.tensor([opacity], dtype=F64), feat, torch.eye(4, dtype=F64)[None], ks, width, height,
        eps2d=eps2d, rasterize_mode=mode, backend="torch", tile_size=8,
    )
    assert isinstance(out, GaussianRenderOutput)
    sigma2 = (f * s / z) ** 2
    blurred = sigma2 + eps2d
    peak = opacity * (sigma2 / blurred if mode == "antialiased" else 1.0)
    assert out.alpha[0, 16, 24].item() == pytest.approx(peak, rel=1e-12)

    jj, ii = torch.meshgrid(torch.arange(width, dtype=F64), torch.arange(height, dtype=F64), indexing="xy")
    r2 = (jj - 24) ** 2 + (ii - 16) ** 2
    analytic = peak * torch.exp(-0.5 * r2 / blurred)
    analytic = torch.where(analytic >= 1 / 255, analytic, torch.zeros_like(analytic))  # gsplat skip rule
    torch.testing.assert_close(out.alpha[0], analytic, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.features[0], analytic[..., None] * feat[0], rtol=1e-10, atol=1e-12)
    hit = analytic > 0
    assert hit.sum() > 20
    torch.testing.assert_close(out.depth[0][hit], torch.full_like(out.depth[0][hit], z))
    assert (out.depth[0][~hit] == 0).all() and (out.accumulated_depth[0][~hit] == 0).all()
    torch.testing.assert_close(out.accumulated_depth[0], analytic * z)
    # Radius: ceil(min(3.33, sqrt(2 ln(255 o))) * sqrt(blurred var)) pixels in both axes.
    radius = math.ceil(min(3.33, math.sqrt(2 * math.log(255 * peak))) * math.sqrt(blurred))
    assert out.radii[0, 0].tolist() == [radius, radius]


def test_two_gaussians_front_to_back_independent_of_order():
    f, width, height = 30.0, 12, 8
    ks = _pinhole(f, 6.0, 4.0)  # centres of both Gaussians project to the pixel corner (6, 4)
    means = torch.tensor([[0.0, 0.0, 3.0], [0.0, 0.0, 6.0]], dtype=F64)
    scales = torch.tensor([[0.1] * 3, [0.3] * 3], dtype=F64)
    opac = torch.tensor([0.6, 0.9], dtype=F64)
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=F64)
    args = dict(viewmats=torch.eye(4, dtype=F64)[None], Ks=ks, width=width, height=height, backend="torch")
    out = rasterize_gaussians(means, _identity_quats(2), scales, opac, feats, **args)
    perm = torch.tensor([1, 0])
    swapped = rasterize_gaussians(means[perm], _identity_quats(2), scales[perm], opac[perm], feats[perm], **args)
    for name in ("features", "alpha", "depth", "accumulated_depth"):
        torch.testing.assert_close(getattr(out, name), getattr(swapped, name), rtol=0, atol=0)

    jj, ii = torch.meshgrid(torch.arange(width, dtype=F64) + 0.5, torch.arange(height, dtype=F64) + 0.5, indexing="xy")
    r2 = (jj - 6.0) ** 2 + (ii - 4.0) ** 2

    def profile(k):
        var = (f * scales[k, 0].item() / means[k, 2].item()) ** 2 + 0.3
        a = opac[k] * torch.exp(-0.5 * r2 / var)
        return torch.where(a >= 1 / 255, a, torch.zeros_like(a))

    a1, a2 = profile(0), profile(1)
    torch.testing.assert_close(out.features[0, ..., 0], a1)
    torch.testing.assert_close(out.features[0, ..., 1], (1 - a1) * a2)
    torch.testing.assert_close(out.alpha[0], a1 + (1 - a1) * a2)
    torch.testing.assert_close(out.accumulated_depth[0], 3.0 * a1 + 6.0 * (1 - a1) * a2)


def test_saturated_pixel_stops_before_transmittance_drops_below_1e_4():
    # Three opaque Gaussians on the optical axis at z = 2, 3, 4; the axis hits the centre of
    # pixel (i=3, j=5).
    ks = _pinhole(30.0, 5.5, 3.5)
    z = [2.0, 3.0, 4.0]
    means = torch.tensor([[0.0, 0.0, zk] for zk in z], dtype=F64)
    out = rasterize_gaussians(
        means, _identity_quats(3), torch.full((3, 3), 0.3, dtype=F64), torch.ones(3, dtype=F64),
        torch.eye(3, dtype=F64), torch.eye(4, dtype=F64)[None], ks, 12, 8, backend="torch",
    )
    # Centre: alpha clamps at 0.999 (T = 1e-3); the second would leave T = 1e-6 <= 1e-4, so
    # it and everything behind it are excluded.
    torch.testing.assert_close(out.features[0, 3, 5], torch.tensor([0.999, 0.0, 0.0], dtype=F64))
    assert out.alpha[0, 3, 5].item() == pytest.approx(0.999, rel=1e-12)
    assert out.depth[0, 3, 5].item() == pytest.approx(2.0, rel=1e-12)
    # One pixel to the right (1 px off-centre): T stays above 1e-4 through all three.
    a = [math.exp(-0.5 / ((30 * 0.3 / zk) ** 2 + 0.3)) for zk in z]
    expected = [a[0], (1 - a[0]) * a[1], (1 - a[0]) * (1 - a[1]) * a[2]]
    assert (1 - a[0]) * (1 - a[1]) * (1 - a[2]) > 1e-4
    torch.testing.assert_close(out.features[0, 3, 6], torch.tensor(expected, dtype=F64))
    assert out.alpha[0, 3, 6].item() == pytest.approx(sum(expected), rel=1e-12)


def test_culling_behind_camera_and_outside_near_far():
    ks = _pinhole(20.0, 6.0, 4.0)
    means = torch.tensor(
        [
            [0.0, 0.0, -3.0],  # behind the camera
            [0.0, 0.0, 0.2],  # in front, but before near_plane = 0.5
            [0.0, 0.0, 20.0],  # beyond far_plane = 10
            [30.0, 0.0, 3.0],  # in depth range, far off the image
            [0.0, 0.0, 3.0],  # visible
        ],
        dtype=F64,
    )
    n = means.shape[0]
    out = rasterize_gaussians(
        means, _identity_quats(n), torch.full((n, 3), 0.2, dtype=F64), torch.full((n,), 0.8, dtype=F64),
        torch.ones(n, 1, dtype=F64), torch.eye(4, dtype=F64)[None], ks, 12, 8,
        near_plane=0.5, far_plane=10.0, backend="torch",
    )
    assert (out.radii[0, :4] == 0).all() and (out.radii[0, 4] > 0).all()
    only_visible = rasterize_gaussians(
        means[4:], _identity_quats(1), torch.full((1, 3), 0.2, dtype=F64), torch.full((1,), 0.8, dtype=F64),
        torch.ones(1, 1, dtype=F64), torch.eye(4, dtype=F64)[None], ks, 12, 8, backend="torch",
    )
    torch.testing.assert_close(out.features, only_visible.features, rtol=0, atol=0)
    torch.testing.assert_close(out.depth, only_visible.depth, rtol=0, atol=0)
    assert torch.allclose(out.depth[out.alpha > 0], torch.tensor(3.0, dtype=F64))

    nothing = rasterize_gaussians(
        means[:3], _identity_quats(3), torch.full((3, 3), 0.2, dtype=F64), torch.full((3,), 0.8, dtype=F64),
        torch.ones(3, 1, dtype=F64), torch.eye(4, dtype=F64)[None], ks, 12, 8,
        near_plane=0.5, far_plane=10.0, backend="torch",
    )
    assert (nothing.alpha == 0).all() and (nothing.depth == 0).all() and nothing.gaussians_per_tile.sum() == 0


def test_viewmat_is_t_cam_world():
    # A camera at (0, -5, 0) looking along world +y (z up): world point (0.4, 0, 0.3) is at
    # x_cam = 0.4 (right), y_cam = -0.3 (up is -y), z_cam = 5.
    view = _look_from(torch.tensor([0.0, -5.0, 0.0], dtype=F64), torch.tensor([0.0, 0.0, 0.0], dtype=F64))
    f, cx, cy = 50.0, 24.0, 16.0
    out = rasterize_gaussians(
        torch.tensor([[0.4, 0.0, 0.3]], dtype=F64), _identity_quats(1), torch.full((1, 3), 0.03, dtype=F64),
        torch.tensor([0.9], dtype=F64), torch.ones(1, 1, dtype=F64), view[None], _pinhole(f, cx, cy), 48, 32,
        backend="torch",
    )
    u, v = f * 0.4 / 5 + cx, f * -0.3 / 5 + cy  # (28, 13), a pixel corner
    # The splat is a 2D Gaussian centred at (u, v), sampled on a grid symmetric about it.
    alpha = out.alpha[0]
    jj, ii = torch.meshgrid(torch.arange(48, dtype=F64) + 0.5, torch.arange(32, dtype=F64) + 0.5, indexing="xy")
    centroid = ((alpha * jj).sum() / alpha.sum(), (alpha * ii).sum() / alpha.sum())
    assert [c.item() for c in centroid] == pytest.approx([u, v], abs=1e-9)
    assert alpha[12:14, 27:29].min() > 0.99 * alpha.max()  # the four pixels around the corner
    torch.testing.assert_close(out.depth[0][alpha > 0], torch.full_like(alpha[alpha > 0], 5.0))


def test_radius_clip_culls_small_gaussians():
    ks = _pinhole(20.0, 6.0, 4.0)
    means = torch.tensor([[0.0, 0.0, 4.0], [0.1, 0.0, 3.0]], dtype=F64)
    scales = torch.tensor([[0.02] * 3, [0.6] * 3], dtype=F64)
    kwargs = dict(viewmats=torch.eye(4, dtype=F64)[None], Ks=ks, width=12, height=8, backend="torch")
    args = (means, _identity_quats(2), scales, torch.full((2,), 0.9, dtype=F64), torch.ones(2, 1, dtype=F64))
    kept = rasterize_gaussians(*args, **kwargs)
    small_radius = kept.radii[0, 0].max().item()
    clipped = rasterize_gaussians(*args, radius_clip=float(small_radius), **kwargs)
    assert (kept.radii[0] > 0).all()
    assert (clipped.radii[0, 0] == 0).all() and (clipped.radii[0, 1] == kept.radii[0, 1]).all()


# ---------------------------------------------------------------- tiling vs brute force


@pytest.mark.parametrize(
    "tile_size,chunk_size,mode",
    [(4, 2, "classic"), (8, 5, "antialiased"), (16, 32, "classic"), (5, 3, "antialiased")],
)
def test_tiled_chunked_matches_dense_reference(tile_size, chunk_size, mode):
    scene = _random_scene(48, 3, 4, seed=1, dtype=F64)
    # A cluster of big opaque Gaussians, so that pixels saturate (the 1e-4 stop rule).
    scene[3][:12] = 1.0
    scene[0][:12] *= 0.3
    scene[2][:12] = 0.5
    kwargs = dict(width=40, height=28, rasterize_mode=mode)
    tiled = rasterize_gaussians(*scene, backend="torch", tile_size=tile_size, chunk_size=chunk_size, **kwargs)
    dense = _rasterize_dense(*scene, **kwargs)
    # alpha never exceeds 1 - 1e-4; above 1 - 5e-4 the next opaque Gaussian is cut off.
    assert (dense.alpha > 0.9995).sum() > 10
    for name in ("features", "alpha", "depth", "accumulated_depth"):
        torch.testing.assert_close(getattr(tiled, name), getattr(dense, name), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(tiled.radii, dense.radii)
    assert tiled.gaussians_per_tile.shape == (3, math.ceil(28 / tile_size), math.ceil(40 / tile_size))


@pytest.mark.parametrize("use_checkpoint", [True, False])
def test_tiled_gradients_match_dense_reference(use_checkpoint):
    scene = [t.requires_grad_() for t in _random_scene(24, 2, 3, seed=2, dtype=F64)[:5]]
    cams = _random_scene(24, 2, 3, seed=2, dtype=F64)[5:]
    target = torch.randn(2, 20, 28, 3, generator=torch.Generator().manual_seed(0), dtype=F64)

    def loss(out):
        return (out.features * target).sum() + out.depth.sum() * 0.1 + out.alpha.square().sum()

    tiled = rasterize_gaussians(*scene, *cams, 28, 20, backend="torch", tile_size=8, chunk_size=3,
                                checkpoint=use_checkpoint)
    g_tiled = torch.autograd.grad(loss(tiled), scene)
    g_dense = torch.autograd.grad(loss(_rasterize_dense(*scene, *cams, 28, 20)), scene)
    for a, b in zip(g_tiled, g_dense):
        assert b.abs().sum() > 0
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_batch_of_cameras_equals_one_call_per_camera():
    scene = _random_scene(32, 3, 2, seed=3)
    batched = rasterize_gaussians(*scene, 24, 16, backend="torch", tile_size=8)
    for c in range(3):
        single = rasterize_gaussians(*scene[:5], scene[5][c : c + 1], scene[6][c : c + 1], 24, 16,
                                     backend="torch", tile_size=8)
        torch.testing.assert_close(batched.features[c : c + 1], single.features)
        torch.testing.assert_close(batched.depth[c : c + 1], single.depth)


def test_projection_matches_gsplat_torch_reference():
    """Our projection against gsplat's own PyTorch reference (runs on CPU)."""
    from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci

    from render._gaussians_torch import project, quat_scale_to_covar, quat_scale_to_half

    means, quats, scales, _, _, views, ks = _random_scene(40, 2, 1, seed=4, dtype=F64)
    covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_preci=False)
    torch.testing.assert_close(quat_scale_to_covar(quats, scales), covars)
    _, means2d, depths, conics, comps = _fully_fused_projection(
        means, covars, views, ks, 40, 28, eps2d=0.3, calc_compensations=True
    )
    ours = project(means[None], quat_scale_to_half(quats, scales)[None], views[:, None], ks[:, None], 40, 28, 0.3)
    torch.testing.assert_close(ours["means2d"], means2d)
    torch.testing.assert_close(ours["depth"], depths)
    torch.testing.assert_close(ours["conic"], conics)
    torch.testing.assert_close(ours["compensation"], comps)


# ---------------------------------------------------------------- gradients


def test_gradcheck_float64():
    means = torch.tensor([[0.1, -0.05, 2.0], [-0.15, 0.1, 2.6], [0.2, 0.15, 3.1]], dtype=F64)
    quats = torch.tensor([[0.9, 0.1, -0.2, 0.3], [0.7, -0.3, 0.2, 0.1], [1.0, 0.2, 0.1, -0.4]], dtype=F64)
    scales = torch.tensor([[0.12, 0.08, 0.1], [0.15, 0.2, 0.1], [0.1, 0.25, 0.2]], dtype=F64)
    opac = torch.tensor([0.55, 0.7, 0.8], dtype=F64)
    feats = torch.tensor([[0.3, -1.0], [1.2, 0.4], [-0.5, 0.9]], dtype=F64)
    inputs = tuple(t.clone().requires_grad_() for t in (means, quats, scales, opac, feats))
    views = torch.eye(4, dtype=F64)[None]
    ks = _pinhole(14.0, 6.0, 4.0)

    def fn(*x):
        out = rasterize_gaussians(*x, views, ks, 12, 8, backend="torch", tile_size=4, chunk_size=2,
                                  rasterize_mode="antialiased")
        return out.features, out.depth, out.alpha

    assert fn(*inputs)[2].max() > 0.5
    # fast_mode checks random projections of the Jacobian: the full one needs one backward
    # per output pixel and channel (~1 min on 2 cores).
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


def test_finite_difference_directional_derivatives():
    """Central differences along random directions, one per parameter group, on a busier
    scene than gradcheck's. float64 with h = 1e-6: the image is discontinuous where a
    Gaussian's alpha crosses 1/255 (expected depth jumps from 0 to z), which float32 steps
    large enough to beat rounding would cross."""
    scene = _random_scene(32, 2, 3, seed=5, dtype=F64)
    params, cams = scene[:5], scene[5:]
    target = torch.randn(2, 16, 24, 3, generator=torch.Generator().manual_seed(1), dtype=F64)

    def loss(*p):
        out = rasterize_gaussians(*p, *cams, 24, 16, backend="torch", tile_size=8, chunk_size=8)
        return (out.features * target).sum() + 0.5 * out.depth.sum() + out.alpha.square().sum()

    leaves = [t.clone().requires_grad_() for t in params]
    grads = torch.autograd.grad(loss(*leaves), leaves)
    g = torch.Generator().manual_seed(2)
    h = 1e-6
    for k, grad in enumerate(grads):
        direction = torch.randn(grad.shape, generator=g, dtype=F64)
        with torch.no_grad():
            plus = list(params)
            minus = list(params)
            plus[k] = params[k] + h * direction
            minus[k] = params[k] - h * direction
            numeric = (loss(*plus) - loss(*minus)).item() / (2 * h)
        analytic = (grad * direction).sum().item()
        assert abs(analytic) > 1e-2
        assert numeric == pytest.approx(analytic, rel=1e-5, abs=1e-6)


# ---------------------------------------------------------------- API and errors


def test_auto_backend_on_cpu_is_torch_and_errors_are_clear():
    scene = _random_scene(8, 1, 3, seed=6)
    auto = rasterize_gaussians(*scene, 12, 8)
    torch_ = rasterize_gaussians(*scene, 12, 8, backend="torch")
    torch.testing.assert_close(auto.features, torch_.features, rtol=0, atol=0)
    with pytest.raises(ValueError, match="CUDA"):
        rasterize_gaussians(*scene, 12, 8, backend="gsplat")
    with pytest.raises(ValueError, match="near_plane"):
        rasterize_gaussians(*scene, 12, 8, near_plane=5.0, far_plane=1.0)
    with pytest.raises(ValueError, match="rasterize_mode"):
        rasterize_gaussians(*scene, 12, 8, rasterize_mode="mip")
    with pytest.raises(ValueError, match="backend"):
        rasterize_gaussians(*scene, 12, 8, backend="cuda")


def test_shape_error_names_the_field():
    from render.gaussians import _check_inputs

    scene = _random_scene(8, 1, 3, seed=7)
    scene[2] = scene[2][:5]
    with pytest.raises(ValueError, match="scales"):
        _check_inputs(*scene, 12, 8, 0.01, 1e10, 16, 32, "classic")


def test_empty_scene_and_zero_feature_channels():
    scene = _random_scene(0, 2, 0, seed=8)
    out = rasterize_gaussians(*scene, 12, 8, backend="torch")
    assert out.features.shape == (2, 8, 12, 0) and (out.alpha == 0).all() and out.radii.shape == (2, 0, 2)


# ---------------------------------------------------------------- gsplat (CUDA) vs torch


def _compare(a: torch.Tensor, b: torch.Tensor, atol: float, frac: float = 0.999, max_abs: float | None = 2e-2):
    """Most entries within atol; the rest (float32 flips of the 1/255 skip or the 1e-4 stop,
    worth at most ~1/255 of a feature) bounded by max_abs. Expected depth is not bounded:
    a flip on an otherwise empty pixel switches it between 0 and z."""
    close = (a - b).abs() <= atol + 1e-3 * b.abs()
    assert close.float().mean() >= frac, f"only {close.float().mean():.4f} within {atol}"
    if max_abs is not None:
        assert (a - b).abs().max() <= max_abs


@pytest.mark.requires_cuda
@pytest.mark.parametrize("d", [3, 16])
@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("mode", ["classic", "antialiased"])
def test_gsplat_matches_torch(d, packed, mode):
    scene = _random_scene(64, 4, d, seed=10 + d, device="cuda")
    kwargs = dict(width=48, height=32, rasterize_mode=mode, tile_size=16)
    leaves_g = [t.clone().requires_grad_() for t in scene[:5]]
    leaves_t = [t.clone().requires_grad_() for t in scene[:5]]
    out_g = rasterize_gaussians(*leaves_g, *scene[5:], backend="gsplat", packed=packed, **kwargs)
    out_t = rasterize_gaussians(*leaves_t, *scene[5:], backend="torch", **kwargs)
    torch.testing.assert_close(out_g.radii, out_t.radii, rtol=0, atol=1)
    assert (out_g.radii > 0).sum() > 20
    for name in ("features", "alpha"):
        _compare(getattr(out_g, name), getattr(out_t, name), atol=1e-4)
    _compare(out_g.accumulated_depth, out_t.accumulated_depth, atol=1e-3, max_abs=0.2)  # z up to ~10 m
    _compare(out_g.depth, out_t.depth, atol=1e-3, max_abs=None)
    torch.testing.assert_close(out_g.gaussians_per_tile, out_t.gaussians_per_tile, rtol=0, atol=2)

    target = torch.randn_like(out_t.features)

    def loss(out):
        return (out.features * target).sum() + 0.1 * out.accumulated_depth.sum() + out.alpha.sum()

    grads_g = torch.autograd.grad(loss(out_g), leaves_g)
    grads_t = torch.autograd.grad(loss(out_t), leaves_t)
    for name, a, b in zip(("means", "quats", "scales", "opacities", "features"), grads_g, grads_t):
        rel = (a - b).norm() / b.norm().clamp(min=1e-12)
        assert rel < 2e-2, f"{name}: relative gradient error {rel:.3g}"


@pytest.mark.requires_cuda
def test_torch_backend_runs_on_cuda_like_on_cpu():
    scene = _random_scene(48, 2, 5, seed=11)
    cpu = rasterize_gaussians(*scene, 40, 24, backend="torch")
    gpu = rasterize_gaussians(*[t.cuda() for t in scene], 40, 24, backend="torch")
    torch.testing.assert_close(gpu.features.cpu(), cpu.features, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gpu.alpha.cpu(), cpu.alpha, rtol=1e-4, atol=1e-5)
