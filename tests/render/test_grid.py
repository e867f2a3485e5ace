"""Dense-grid fields: trilinear lookups against analytic fields."""

from __future__ import annotations

import torch

from render.grid import GridField, grid_spacing, sample_grid
from render.volume import NeuSRenderer


def _centres(shape, lower, upper):
    axes = [lower[a] + (upper[a] - lower[a]) * (torch.arange(n) + 0.5) / n for a, n in enumerate(shape)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)


def test_lookup_is_exact_at_centres_and_for_linear_fields():
    lower, upper = torch.tensor([-4.0, -2.0, -1.0]), torch.tensor([4.0, 6.0, 2.0])
    shape = (8, 5, 6)
    xyz = _centres(shape, lower, upper)
    linear = 0.5 * xyz[..., 0] - 2.0 * xyz[..., 1] + 3.0 * xyz[..., 2] + 1.0
    volume = torch.stack([linear, torch.randn(shape)])
    values = sample_grid(volume, lower, upper, xyz.reshape(-1, 3))
    assert torch.allclose(values, volume.reshape(2, -1).T, atol=1e-5)
    # Trilinear interpolation reproduces a linear function between the outermost centres.
    spacing = grid_spacing(shape, lower, upper)
    pts = lower + spacing / 2 + torch.rand(500, 3) * (upper - lower - spacing)
    got = sample_grid(linear[None], lower, upper, pts)[:, 0]
    want = 0.5 * pts[:, 0] - 2.0 * pts[:, 1] + 3.0 * pts[:, 2] + 1.0
    assert torch.allclose(got, want, atol=1e-4)


def test_grid_field_renders_a_plane_at_its_depth():
    # SDF of the plane x = 10 seen from the origin along +x; the rendered distance is 10 m.
    lower, upper = torch.tensor([0.0, -2.0, -2.0]), torch.tensor([20.0, 2.0, 2.0])
    shape = (100, 4, 4)
    xyz = _centres(shape, lower, upper)
    field = GridField(10.0 - xyz[..., 0], torch.zeros(0, *shape), lower, upper)
    outside = field(torch.tensor([[25.0, 0.0, 0.0]]))
    assert float(outside.sdf[0]) == 100.0
    renderer = NeuSRenderer(num_samples=400, init_variance=0.5, backend="torch").eval()
    with torch.no_grad():
        out = renderer(field, torch.zeros(1, 3), torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([0.5]),
                       torch.tensor([19.5]), compute_gradients=False)
    assert abs(float(out.normalized_dist()[0]) - 10.0) < 0.1
    assert float(out.opacity[0]) > 0.99
