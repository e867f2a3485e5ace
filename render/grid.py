"""Fields stored on a dense voxel grid and read by trilinear interpolation.

A neural field decoded once per step on a regular grid (SelfOcc decodes its TPV this way)
makes each ray sample a cheap trilinear lookup instead of an MLP evaluation, so hundreds of
samples per ray are affordable, and derivatives for the eikonal / smoothness regularisers
become finite differences on the grid instead of a double backward through the MLP.

Grid convention: a volume ``[C, X, Y, Z]`` holds values at the cell centres
``lower + (upper - lower) (i + 0.5) / n`` of an axis-aligned box; lookups use
``grid_sample`` with ``align_corners=False`` and border padding (values are clamped to the
outermost centres). A :class:`BoxWarp` generalises the box: cells regular in a unit cube
that maps piecewise linearly onto metres, fine in an inner box and coarse in a shell around
it (an unbounded scene's far structure at little cost). Knows no dataset.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from render.volume import FieldSamples

__all__ = ["BoxWarp", "sample_grid", "sample_grid_unit", "GridField", "grid_spacing"]


def grid_spacing(shape: tuple[int, int, int], lower: Tensor, upper: Tensor) -> Float[Tensor, "3"]:
    """Cell edge lengths (metres) of a grid of ``shape`` cells over ``[lower, upper]``."""
    return (upper - lower) / torch.tensor(shape, dtype=lower.dtype, device=lower.device)


@dataclass(frozen=True)
class BoxWarp:
    """A box in metres whose cells are fine inside an inner box and coarse in a shell around it.

    Per axis, a piecewise-linear, increasing map from metres to the unit coordinate
    ``u in [-1, 1]`` (``grid_sample``'s, ``align_corners=False``) with knots ``lower ->
    -1``, ``inner_lower -> -1 + 2 b / n``, ``inner_upper -> -1 + 2 (b + m) / n``, ``upper
    -> 1``, where ``m = inner_cells``, ``(b, a) = shell_cells`` (cells below and above the
    inner box) and ``n = b + m + a`` the grid's cells along the axis (:attr:`shape`). A grid
    of :attr:`shape` cells regular in ``u`` then has cells of ``(inner_upper - inner_lower) /
    m`` metres inside the inner box and of ``(inner_lower - lower) / b`` below it (likewise
    above). Points beyond the box map past +-1 with the slope of the end segment. Without a
    shell (the default, ``lower = inner_lower`` and ``upper = inner_upper``) the map is the
    plain affine ``u = 2 (x - lower) / (upper - lower) - 1``.

    Args:
        inner_lower, inner_upper: the inner box's corners, metres (e.g. the Occ3D grid).
        inner_cells: grid cells along each axis of the inner box (needed with a shell).
        lower, upper: the outer box's corners (``None``: the inner box's).
        shell_cells: per axis, cells (below, above) the inner box; positive exactly where
            the outer box extends past the inner one.

    Raises:
        ValueError: corners out of order, or shell cells that do not match the outer box.

    Source: the idea of mip-NeRF 360's scene contraction (Barron et al. 2022, eq. 10), made
    separable and piecewise linear so that a dense decoded grid, its trilinear lookups and
    its finite-difference regularisers keep working.
    """

    inner_lower: tuple[float, float, float]
    inner_upper: tuple[float, float, float]
    inner_cells: tuple[int, int, int] | None = None
    lower: tuple[float, float, float] | None = None
    upper: tuple[float, float, float] | None = None
    shell_cells: tuple[tuple[int, int], tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0), (0, 0))

    def __post_init__(self):
        lo = tuple(float(x) for x in (self.lower if self.lower is not None else self.inner_lower))
        hi = tuple(float(x) for x in (self.upper if self.upper is not None else self.inner_upper))
        object.__setattr__(self, "lower", lo)
        object.__setattr__(self, "upper", hi)
        shell = tuple((int(b), int(a)) for b, a in self.shell_cells)
        object.__setattr__(self, "shell_cells", shell)
        for k in range(3):
            if not lo[k] <= self.inner_lower[k] < self.inner_upper[k] <= hi[k]:
                raise ValueError(f"BoxWarp: need lower <= inner_lower < inner_upper <= upper, got {lo}, "
                                 f"{self.inner_lower}, {self.inner_upper}, {hi}")
            b, a = shell[k]
            if (b > 0) != (lo[k] < self.inner_lower[k]) or (a > 0) != (hi[k] > self.inner_upper[k]) or min(b, a) < 0:
                raise ValueError(f"BoxWarp: axis {k} needs shell cells exactly where the outer box extends past the "
                                 f"inner one, got cells {shell[k]} for {lo[k]}..{self.inner_lower[k]} and "
                                 f"{self.inner_upper[k]}..{hi[k]}")
        if self.has_shell and (self.inner_cells is None or min(self.inner_cells) < 1):
            raise ValueError(f"BoxWarp: a shell needs inner_cells >= 1 per axis, got {self.inner_cells}")

    @property
    def has_shell(self) -> bool:
        return any(b or a for b, a in self.shell_cells)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Grid cells per axis that put the knots on cell boundaries (inner + shell)."""
        if self.inner_cells is None:
            raise ValueError("BoxWarp: shape needs inner_cells")
        return tuple(m + b + a for m, (b, a) in zip(self.inner_cells, self.shell_cells))

    def box(self, device: torch.device | str = "cpu") -> tuple[Float[Tensor, "3"], Float[Tensor, "3"]]:
        """The outer box's (lower, upper) corners, float32 metres."""
        return (torch.tensor(self.lower, dtype=torch.float32, device=device),
                torch.tensor(self.upper, dtype=torch.float32, device=device))

    def _knots(self, device, dtype) -> tuple[Tensor, Tensor]:
        """World and unit knots ``[3, 4]`` each, built once per device and dtype (no
        host-to-device copy per lookup)."""
        cache = self.__dict__.setdefault("_knot_cache", {})
        key = (str(device), dtype)
        if key not in cache:
            cache[key] = self._build_knots(device, dtype)
        return cache[key]

    def _build_knots(self, device, dtype) -> tuple[Tensor, Tensor]:
        world = torch.tensor([[self.lower[k], self.inner_lower[k], self.inner_upper[k], self.upper[k]] for k in range(3)],
                             device=device, dtype=dtype)
        unit = []
        for k, (b, a) in enumerate(self.shell_cells):
            n = b + self.inner_cells[k] + a
            unit.append([-1.0, -1.0 + 2.0 * b / n, -1.0 + 2.0 * (b + self.inner_cells[k]) / n, 1.0])
        return world, torch.tensor(unit, device=device, dtype=dtype)

    @staticmethod
    def _piecewise(x: Tensor, src: Tensor, dst: Tensor) -> Tensor:
        """Map ``x [..., 3]`` through per-axis piecewise-linear functions with knots ``src -> dst``
        ``[3, 4]``; degenerate end segments take the middle segment's slope."""
        slope = (dst[:, 1:] - dst[:, :-1]) / (src[:, 1:] - src[:, :-1]).clamp_min(1e-12)  # [3 3]
        width = src[:, 1:] - src[:, :-1]
        slope = torch.where(width > 0, slope, slope[:, 1:2].expand_as(slope))
        lower = torch.where(x < src[:, 1], dst[:, 1] + (x - src[:, 1]) * slope[:, 0], dst[:, 1] + (x - src[:, 1]) * slope[:, 1])
        return torch.where(x > src[:, 2], dst[:, 2] + (x - src[:, 2]) * slope[:, 2], lower)

    def to_unit(self, xyz: Float[Tensor, "*s 3"]) -> Float[Tensor, "*s 3"]:
        """Metres -> unit coordinates (``[-1, 1]`` inside the box)."""
        if not self.has_shell:
            lower, upper = self.box(xyz.device)
            return 2.0 * (xyz - lower.to(xyz.dtype)) / (upper - lower).to(xyz.dtype) - 1.0
        world, unit = self._knots(xyz.device, xyz.dtype)
        return self._piecewise(xyz, world, unit)

    def from_unit(self, u: Float[Tensor, "*s 3"]) -> Float[Tensor, "*s 3"]:
        """Unit coordinates -> metres (the inverse of :meth:`to_unit`)."""
        if not self.has_shell:
            lower, upper = self.box(u.device)
            return lower.to(u.dtype) + (upper - lower).to(u.dtype) * (u + 1.0) / 2.0
        world, unit = self._knots(u.device, u.dtype)
        return self._piecewise(u, unit, world)

    def axis_centres(self, axis: int, n: int, device: torch.device | str = "cpu",
                     dtype: torch.dtype = torch.float32) -> Float[Tensor, "n"]:
        """Metres of the centres of ``n`` cells regular in ``u`` along ``axis``."""
        u = torch.zeros(n, 3, device=device, dtype=dtype)
        u[:, axis] = -1.0 + 2.0 * (torch.arange(n, device=device, dtype=dtype) + 0.5) / n
        return self.from_unit(u)[:, axis]


def sample_grid_unit(volume: Float[Tensor, "C X Y Z"], unit: Float[Tensor, "P 3"]) -> Float[Tensor, "P C"]:
    """Trilinear interpolation of a cell-centred volume at unit coordinates (``grid_sample``'s
    ``align_corners=False`` convention, border padding); see :func:`sample_grid`."""
    # grid_sample's 5-D input is [N, C, D, H, W] = [1, C, X, Y, Z]; its grid is (w, h, d).
    grid = unit.flip(-1).reshape(1, -1, 1, 1, 3).to(volume.dtype)
    out = F.grid_sample(volume[None], grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.reshape(volume.shape[0], -1).T


def sample_grid(
    volume: Float[Tensor, "C X Y Z"],
    lower: Float[Tensor, "3"],
    upper: Float[Tensor, "3"],
    xyz: Float[Tensor, "P 3"],
) -> Float[Tensor, "P C"]:
    """Trilinear interpolation of a cell-centred volume at points (border padding).

    Args:
        volume: values at the cell centres, indexed [x, y, z].
        lower, upper: box corners, metres, in the points' frame.
        xyz: query points, metres.

    Returns:
        Interpolated values; exactly the stored value at a cell centre.

    Source: trilinear interpolation as in ``torch.nn.functional.grid_sample``
    (``align_corners=False``): the unit coordinate ``2 (x - lower) / (upper - lower) - 1``.
    """
    return sample_grid_unit(volume, 2.0 * (xyz - lower) / (upper - lower) - 1.0)


@dataclass
class GridField:
    """An SDF and per-point features on a dense grid, callable as a renderer field.

    Attributes:
        sdf: signed distance at the cell centres, metres (positive in free space).
        features: channels to composite (colour, semantic logits), ``C >= 0``.
        lower, upper: box corners, metres.
        outside_sdf: SDF returned outside the box (empty space).
        warp: the cells are regular in this warp's unit coordinates (its outer box must be
            ``[lower, upper]``); ``None``: regular in metres.
    """

    sdf: Float[Tensor, "X Y Z"]
    features: Float[Tensor, "C X Y Z"]
    lower: Float[Tensor, "3"]
    upper: Float[Tensor, "3"]
    outside_sdf: float = 100.0
    warp: BoxWarp | None = None

    def __call__(self, xyz: Float[Tensor, "P 3"]) -> FieldSamples:
        """SDF and features at ``xyz`` (metres); gradients are left to the renderer (it takes
        the along-ray slope when asked not to differentiate)."""
        volume = torch.cat([self.sdf[None], self.features], dim=0)
        if self.warp is not None and self.warp.has_shell:
            values = sample_grid_unit(volume, self.warp.to_unit(xyz))
        else:
            values = sample_grid(volume, self.lower, self.upper, xyz)
        outside = ((xyz < self.lower) | (xyz > self.upper)).any(dim=-1)
        sdf = torch.where(outside, torch.full_like(values[:, 0], self.outside_sdf), values[:, 0])
        return FieldSamples(sdf=sdf, features=values[:, 1:])
