"""Losses of selfsup.losses on hand-worked cases."""

from __future__ import annotations

import math

import pytest
import torch
from jaxtyping import TypeCheckError

from selfsup.losses import (
    axis_offsets,
    depth_l1_loss,
    eikonal_loss,
    hessian_loss,
    photometric_error,
    project_points,
    reprojection_loss,
    rgb_loss,
    sample_image,
    semantic_loss,
    sparse_depth_grid,
    ssim_dissimilarity,
)


def test_identical_images_have_zero_photometric_error():
    img = torch.rand(2, 3, 8, 12)
    assert photometric_error(img, img).abs().max() < 1e-6
    assert rgb_loss(img, img).abs() < 1e-6


def test_photometric_error_of_constant_images_matches_hand_formula():
    a, b = 0.2, 0.6
    pred = torch.full((1, 3, 6, 6), a, dtype=torch.float64)
    target = torch.full((1, 3, 6, 6), b, dtype=torch.float64)
    c1 = 0.01**2
    ssim = (2 * a * b + c1) / (a * a + b * b + c1)  # sigmas are 0, the C2 factors cancel
    expected = 0.85 * (1 - ssim) / 2 + 0.15 * abs(a - b)
    expected_map = torch.full((1, 6, 6), expected, dtype=torch.float64)
    assert torch.allclose(photometric_error(pred, target), expected_map, atol=1e-9)


def test_ssim_rejects_mismatched_shapes():
    # Under pytest the jaxtyping annotation catches it first; without it, the ValueError.
    with pytest.raises((ValueError, TypeCheckError)):
        ssim_dissimilarity(torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 5))


def test_rgb_loss_ignores_masked_pixels():
    target = torch.rand(1, 3, 6, 8)
    pred = target.clone()
    pred[..., :3] = 1.0 - pred[..., :3]  # wrong only in the left columns (and their SSIM neighbours)
    mask = torch.ones(1, 6, 8, dtype=torch.bool)
    mask[..., :4] = False
    assert rgb_loss(pred, target, mask).abs() < 1e-6
    assert rgb_loss(pred, target) > 0.05


def _single_sample(warped):
    """Reprojection inputs for one sample per ray with weight 1 (warped colours ``[M N 3 H W]``
    as given), in the loss's ray-major layout."""
    m, n, _, h, w = warped.shape
    return warped.permute(0, 1, 3, 4, 2)[:, :, :, :, None], torch.ones(n, h, w, 1), torch.ones(m, n, h, w, 1, dtype=torch.bool)


def test_reprojection_takes_the_minimum_over_sources():
    target = torch.rand(1, 3, 8, 12)
    good, bad = target.clone(), torch.rand(1, 3, 8, 12)
    colours, weights, in_view = _single_sample(torch.stack([bad, good]))
    assert reprojection_loss(colours, weights, in_view, target).abs() < 1e-6
    colours, weights, in_view = _single_sample(torch.stack([bad]))
    expected = photometric_error(bad, target).mean()
    assert torch.allclose(reprojection_loss(colours, weights, in_view, target), expected, atol=1e-6)


def test_reprojection_ignores_sources_out_of_view():
    target = torch.rand(1, 3, 8, 12)
    good, bad = target.clone(), torch.rand(1, 3, 8, 12)
    colours, weights, in_view = _single_sample(torch.stack([bad, good]))
    in_view[1] = False  # the perfect source does not see the points
    expected = photometric_error(bad, target).mean()
    assert torch.allclose(reprojection_loss(colours, weights, in_view, target), expected, atol=1e-6)


def test_reprojection_l1_is_weighted_by_normalised_rendering_weights():
    f64 = dict(dtype=torch.float64)
    target = torch.full((1, 3, 4, 4), 0.5, **f64)
    # Two samples per ray: colour 0.5 (right) with weight 0.3 and 0.9 with weight 0.1.
    colours = torch.stack([torch.full((1, 4, 4, 3), 0.5, **f64), torch.full((1, 4, 4, 3), 0.9, **f64)], dim=-2)[None]
    weights = torch.stack([torch.full((1, 4, 4), 0.3, **f64), torch.full((1, 4, 4), 0.1, **f64)], dim=-1)
    in_view = torch.ones(1, 1, 4, 4, 2, dtype=torch.bool)
    warped = 0.75 * 0.5 + 0.25 * 0.9  # weights / opacity 0.4 = (0.75, 0.25)
    c1 = 0.01**2
    ssim = (2 * warped * 0.5 + c1) / (warped**2 + 0.25 + c1)
    expected = 0.85 * (1 - ssim) / 2 + 0.15 * 0.25 * 0.4
    assert math.isclose(float(reprojection_loss(colours, weights, in_view, target)), expected, rel_tol=1e-9)


def test_automask_masks_static_pixels():
    g = torch.Generator().manual_seed(1)
    target = 0.3 * torch.rand(1, 3, 8, 12, generator=g)
    warped = (target + 0.02 * torch.randn(1, 3, 8, 12, generator=g)).clamp(0, 1)
    colours, weights, in_view = _single_sample(warped[None])
    # The unwarped source equals the target on the left half (a static region): the identity
    # error 0 beats the warped one there, so only the right half counts.
    identity = 1.0 - target
    identity[..., :6] = target[..., :6]
    loss = reprojection_loss(colours, weights, in_view, target, identity[None])
    per_pixel = photometric_error(warped, target)
    keep = per_pixel < photometric_error(identity, target)
    assert not keep[..., :5].any() and keep[..., 6:].all()  # column 5's SSIM window sees column 6
    assert torch.allclose(loss, per_pixel[keep].mean(), atol=1e-6)
    assert reprojection_loss(colours, weights, in_view, target, target[None]).abs() < 1e-7
    # A source flagged as missing neither warps nor auto-masks.
    two = torch.cat([colours, colours])
    loss = reprojection_loss(
        two, weights, torch.cat([in_view, in_view]), target, torch.stack([target, 1.0 - target]),
        source_valid=torch.tensor([[False], [True]]),
    )
    assert torch.allclose(loss, per_pixel.mean(), atol=1e-6)


def _texture(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A smooth colour texture on a plane (metres -> RGB in [0, 1])."""
    return torch.stack(
        [0.5 + 0.4 * torch.sin(1.3 * x) * torch.cos(0.9 * y), 0.5 + 0.4 * torch.cos(0.7 * x + 0.5 * y),
         0.5 + 0.3 * torch.sin(0.8 * y - 0.4 * x)],
        dim=0,
    )


def _plane_image(K, cam_x, depth, h, w):
    """Analytic image of the textured plane z = depth seen by a camera at (cam_x, 0, 0) looking +z."""
    v, u = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    x = cam_x + (u - K[0, 2]) / K[0, 0] * depth
    y = (v - K[1, 2]) / K[1, 1] * depth
    return _texture(x, y)


def test_reprojection_of_a_textured_plane_is_zero_at_the_true_depth():
    h, w, plane_depth, baseline = 48, 64, 10.0, 1.0
    K = torch.tensor([[60.0, 0, w / 2], [0, 60.0, h / 2], [0, 0, 1]])
    target = _plane_image(K, 0.0, plane_depth, h, w)[None]
    source = _plane_image(K, baseline, plane_depth, h, w)[None]
    T_src = torch.eye(4)
    T_src[0, 3] = baseline  # source camera -> reference frame (the target camera's frame)
    v, u = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    rays = torch.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], torch.ones_like(u)], dim=-1)

    def loss_at(depth: float) -> torch.Tensor:
        points = (rays * depth).reshape(1, -1, 3)  # one sample per ray at camera z = depth
        uv, _, in_front = project_points(points, K[None], T_src[None])
        colours, inside = sample_image(source, uv)
        colours = colours.reshape(1, h, w, 1, 3)
        in_view = (in_front & inside).reshape(1, h, w, 1)
        # Ignore the border columns that the source camera cannot see.
        mask = torch.zeros(1, h, w, dtype=torch.bool)
        mask[..., 2:-12] = True
        return reprojection_loss(colours[None], torch.ones(1, h, w, 1), in_view[None], target, source[None], mask)

    right, wrong = loss_at(plane_depth), loss_at(0.6 * plane_depth)
    assert right < 5e-3
    assert wrong > 5 * right and wrong > 0.02


def test_eikonal_of_exact_sdfs_is_zero():
    x = (torch.randn(200, 3) * 5).requires_grad_(True)
    normal = torch.tensor([0.3, -0.4, 0.5])
    normal = normal / normal.norm()
    for sdf in (x @ normal + 1.0, x.norm(dim=-1) - 2.0):
        (grad,) = torch.autograd.grad(sdf.sum(), x)
        assert eikonal_loss(grad) < 1e-10
    (grad,) = torch.autograd.grad((2 * x.norm(dim=-1)).sum(), x)
    assert torch.allclose(eikonal_loss(grad), torch.tensor(1.0), atol=1e-5)


def test_eikonal_respects_mask():
    grads = torch.tensor([[1.0, 0, 0], [3.0, 0, 0]])
    assert eikonal_loss(grads, torch.tensor([True, False])) == 0
    assert eikonal_loss(grads) == 2.0


def test_hessian_of_a_plane_is_zero_and_of_a_sphere_is_its_curvature():
    points = torch.randn(50, 3) * 3
    stencil = axis_offsets(points, 0.2)
    plane = stencil @ torch.tensor([0.6, 0.0, 0.8]) - 0.5
    assert hessian_loss(plane, 0.2).abs() < 1e-4
    # |x| at (5, 0, 0): Hessian (I - e_x e_x^T) / 5, diagonal L1 norm 2 / 5.
    sphere = axis_offsets(torch.tensor([[5.0, 0.0, 0.0]]), 0.2).norm(dim=-1) - 1.0
    assert math.isclose(float(hessian_loss(sphere, 0.2)), 0.4, rel_tol=1e-3)
    with pytest.raises(ValueError):
        hessian_loss(plane, 0.0)


def test_semantic_loss_ignores_unlabelled():
    logits = torch.tensor([[2.0, 0.0], [0.0, 5.0], [1.0, 1.0]])
    labels = torch.tensor([0, 255, 1])
    expected = (math.log(1 + math.exp(-2.0)) + math.log(2.0)) / 2
    assert math.isclose(float(semantic_loss(logits, labels)), expected, rel_tol=1e-6)
    only_first = semantic_loss(logits, labels, torch.tensor([True, True, False]))
    assert math.isclose(float(only_first), math.log(1 + math.exp(-2.0)), rel_tol=1e-6)
    assert semantic_loss(logits, torch.full((3,), 255)) == 0


def test_depth_l1_uses_only_valid_targets():
    pred = torch.tensor([10.0, 5.0, 7.0])
    target = torch.tensor([12.0, 0.0, 6.0])
    assert math.isclose(float(depth_l1_loss(pred, target)), 1.5)
    assert math.isclose(float(depth_l1_loss(pred, target, torch.tensor([True, True, False]))), 2.0)


def test_sparse_depth_grid_keeps_the_nearest_point_per_cell():
    K = torch.tensor([[[10.0, 0, 8], [0, 10.0, 4], [0, 0, 1]]])
    T = torch.eye(4)[None]  # camera frame == ego frame here
    points = torch.tensor([[0.0, 0.0, 5.0], [0.01, 0.0, 4.0], [0.0, 0.0, -3.0], [100.0, 0.0, 1.0]])
    depth = sparse_depth_grid(points, K, T, (8, 16), 4, 8)
    # (0, 0, z) projects to pixel (8, 4): row 4 * 4 / 8 = 2, column 8 * 8 / 16 = 4.
    assert depth[0, 2, 4] == 4.0
    assert (depth > 0).sum() == 1


def test_gaussian_blur_keeps_constants_and_spreads_an_impulse_by_sigma():
    from selfsup.losses import gaussian_blur

    flat = torch.full((2, 3, 12, 16), 0.3, dtype=torch.float64)
    assert torch.allclose(gaussian_blur(flat, 1.5), flat)
    impulse = torch.zeros(1, 1, 41, 41, dtype=torch.float64)
    impulse[0, 0, 20, 20] = 1.0
    out = gaussian_blur(impulse, 2.0)[0, 0]
    assert float(out.sum()) == pytest.approx(1.0, abs=1e-12)
    x = torch.arange(41, dtype=torch.float64) - 20
    # Second moment along each axis is sigma^2 (the kernel is cut at 3 sigma: 0.9% short).
    var_x = float((out.sum(0) * x**2).sum())
    assert var_x == pytest.approx(4.0, rel=0.02)
    # Separable: the 2-D peak is the product of two 1-D peaks.
    k = torch.exp(-0.5 * (torch.arange(-6, 7, dtype=torch.float64) / 2.0) ** 2)
    assert float(out[20, 20]) == pytest.approx(float((k[6] / k.sum()) ** 2), rel=1e-9)
    assert gaussian_blur(impulse, 0.0) is impulse
    with pytest.raises(TypeCheckError):  # the annotation; untyped callers get a ValueError
        gaussian_blur(impulse[0], 1.0)
