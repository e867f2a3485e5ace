"""Finite-difference eikonal and Hessian terms on dense grids, on analytic fields."""

from __future__ import annotations

import pytest
import torch

from selfsup.losses import grid_eikonal_loss, grid_gradient, grid_hessian_loss

SPACING = (0.4, 0.5, 0.3)


def _xyz(shape=(10, 12, 8)):
    axes = [torch.arange(n, dtype=torch.float64) * h for n, h in zip(shape, SPACING)]
    return torch.meshgrid(*axes, indexing="ij")


def test_plane_sdf_has_zero_eikonal_and_hessian():
    x, y, z = _xyz()
    f = 0.6 * x + 0.8 * z
    assert float(grid_eikonal_loss(f, SPACING)) < 1e-12
    assert float(grid_hessian_loss(f, SPACING)) < 1e-9
    g = grid_gradient(f, SPACING)
    assert g.shape == (3, 8, 10, 6)
    assert torch.allclose(g[0], torch.full_like(g[0], 0.6)) and torch.allclose(g[1], torch.zeros_like(g[1]))


def test_scaled_distance_and_quadratic_fields():
    x, y, z = _xyz()
    assert float(grid_eikonal_loss(2.0 * x, SPACING)) == pytest.approx(1.0)  # (|grad| - 1)^2 = 1
    # f = x y: the two mixed entries are 1, the rest 0 -> mean of the 9 entries = 2 / 9.
    assert float(grid_hessian_loss(x * y, SPACING)) == pytest.approx(2.0 / 9.0)
    # f = z^2: H_zz = 2 -> 2 / 9.
    assert float(grid_hessian_loss(z**2, SPACING)) == pytest.approx(2.0 / 9.0)


def test_too_small_grid_is_refused():
    with pytest.raises(ValueError, match="3 cells"):
        grid_hessian_loss(torch.zeros(2, 5, 5), SPACING)


def _irregular_axes(shape=(10, 12, 8)):
    """Cell-centre coordinates with fine cells in the middle and coarse ones at the ends
    (a BoxWarp's shell)."""
    axes = []
    for n, h in zip(shape, SPACING):
        steps = torch.full((n - 1,), h, dtype=torch.float64)
        steps[:2], steps[-2:] = 4 * h, 3 * h
        axes.append(torch.cat([torch.zeros(1, dtype=torch.float64), steps.cumsum(0)]))
    return tuple(axes)


def test_irregular_cells_give_exact_gradients_and_curvature():
    axes = _irregular_axes()
    x, y, z = torch.meshgrid(*axes, indexing="ij")
    f = 0.6 * x + 0.8 * z
    assert float(grid_eikonal_loss(f, axes)) < 1e-12
    assert float(grid_hessian_loss(f, axes)) < 1e-9
    g = grid_gradient(0.3 * x - 2.0 * y + z, axes)
    torch.testing.assert_close(g[1], torch.full_like(g[1], -2.0))
    # The three-point formula is exact for quadratics on irregular cells.
    assert float(grid_hessian_loss(z**2, axes)) == pytest.approx(2.0 / 9.0)
    assert float(grid_hessian_loss(x * y, axes)) == pytest.approx(2.0 / 9.0)
    # A uniform coordinate vector is the same as the scalar spacing.
    uniform = tuple(torch.arange(n, dtype=torch.float64) * h for n, h in zip(f.shape, SPACING))
    xu, yu, zu = torch.meshgrid(*uniform, indexing="ij")
    q = xu**2 + xu * zu - yu**2
    assert float(grid_hessian_loss(q, uniform)) == pytest.approx(float(grid_hessian_loss(q, SPACING)))
    assert float(grid_eikonal_loss(q, uniform)) == pytest.approx(float(grid_eikonal_loss(q, SPACING)))


def test_eikonal_gradient_of_a_flat_grid_is_finite():
    f = torch.zeros(6, 6, 6, requires_grad=True)
    grid_eikonal_loss(f, SPACING).backward()
    assert torch.isfinite(f.grad).all()
