"""Differentiable volume rendering of SDF fields (NeuS) and density fields.

The renderer knows no dataset and no network: it samples points along rays, asks a
``field`` callable for the SDF and per-point features (RGB, semantic logits, ...), turns the
SDF into opacities with NeuS' discrete formula, and composites.

Two backends compute the transmittance ``T_i = prod_{j<i} (1 - alpha_j)``:

* ``"torch"``: our own exclusive cumulative product / sum, here in this file;
* ``"nerfacc"``: nerfacc's dense (batched ``[R S]``) ``render_weight_from_alpha`` /
  ``render_weight_from_density``, which run on CPU and GPU alike.

``"auto"`` takes nerfacc when it can be imported, else torch. Both give the same values and
gradients (tested). Where the leftover transmittance goes: nowhere. ``opacity = sum_i w_i``
is reported and no background colour or depth is added, so a ray that leaves the sampled
interval partly transparent has ``dist`` and ``features`` weighted by less than one; callers
that want SelfOcc's normalised depth use ``VolumeRenderOutput.normalized_dist``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from render.precision import ambient_autocast, full_precision, to_full

__all__ = [
    "BACKENDS",
    "FieldSamples",
    "VolumeRenderOutput",
    "DensityRenderOutput",
    "NeuSRenderer",
    "neus_alpha",
    "weights_from_alpha",
    "weights_from_density",
    "render_density",
    "depth_from_dist",
    "resolve_backend",
]

BACKENDS = ("auto", "torch", "nerfacc")


def _nerfacc():
    """nerfacc imported on first use (its CUDA kernels are only built for packed inputs)."""
    try:
        return importlib.import_module("nerfacc")
    except ImportError:
        return None


def resolve_backend(backend: str) -> str:
    """Map ``"auto"`` to ``"nerfacc"`` when nerfacc imports, else ``"torch"``.

    Raises:
        ValueError: for a name not in ``BACKENDS``, or ``"nerfacc"`` when it is not installed.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "nerfacc" if _nerfacc() is not None else "torch"
    if backend == "nerfacc" and _nerfacc() is None:
        raise ValueError("backend='nerfacc' but nerfacc cannot be imported; use 'torch'")
    return backend


def _exclusive_cumprod(x: Tensor) -> Tensor:
    """``y_i = prod_{j<i} x_j`` along the last dimension (``y_0 = 1``)."""
    y = torch.cumprod(x, dim=-1)
    return torch.cat([torch.ones_like(x[..., :1]), y[..., :-1]], dim=-1)


def _exclusive_cumsum(x: Tensor) -> Tensor:
    """``y_i = sum_{j<i} x_j`` along the last dimension (``y_0 = 0``)."""
    y = torch.cumsum(x, dim=-1)
    return torch.cat([torch.zeros_like(x[..., :1]), y[..., :-1]], dim=-1)


@full_precision
def weights_from_alpha(
    alphas: Float[Tensor, "R S"], backend: str = "auto"
) -> tuple[Float[Tensor, "R S"], Float[Tensor, "R S"]]:
    """Compositing weights ``w_i = alpha_i prod_{j<i} (1 - alpha_j)`` from per-sample opacity.

    Args:
        alphas: opacity of each sample interval, in [0, 1], samples ordered near to far.
        backend: ``"auto"``, ``"torch"`` or ``"nerfacc"`` (see the module docstring).

    Returns:
        ``(weights, transmittance)``, transmittance ``T_i = prod_{j<i} (1 - alpha_j)``.

    Raises:
        ValueError: for an unknown backend.

    Source: Max 1995, "Optical models for direct volume rendering"; NeRF (Mildenhall et al.
    2020) eq. 3 in alpha form.

    >>> w, T = weights_from_alpha(torch.tensor([[0.5, 0.5, 1.0]]), backend="torch")
    >>> w
    tensor([[0.5000, 0.2500, 0.2500]])
    """
    if resolve_backend(backend) == "nerfacc":
        weights, trans = _nerfacc().render_weight_from_alpha(alphas)
        return weights, trans
    trans = _exclusive_cumprod(1.0 - alphas)
    return trans * alphas, trans


@full_precision
def weights_from_density(
    sigmas: Float[Tensor, "R S"],
    t_starts: Float[Tensor, "R S"],
    t_ends: Float[Tensor, "R S"],
    backend: str = "auto",
) -> tuple[Float[Tensor, "R S"], Float[Tensor, "R S"], Float[Tensor, "R S"]]:
    """Compositing weights from a piecewise-constant density.

    ``alpha_i = 1 - exp(-sigma_i delta_i)``, ``T_i = exp(-sum_{j<i} sigma_j delta_j)``,
    ``w_i = T_i alpha_i`` with ``delta_i = t_end_i - t_start_i``.

    Args:
        sigmas: density, 1/metre, ``>= 0``.
        t_starts, t_ends: sample interval bounds along the ray, metres.
        backend: ``"auto"``, ``"torch"`` or ``"nerfacc"``.

    Returns:
        ``(weights, transmittance, alphas)``.

    Raises:
        ValueError: for an unknown backend.

    Source: NeRF (Mildenhall et al. 2020) eq. 3.
    """
    if resolve_backend(backend) == "nerfacc":
        weights, trans, alphas = _nerfacc().render_weight_from_density(t_starts, t_ends, sigmas)
        return weights, trans, alphas
    sigma_dt = sigmas * (t_ends - t_starts)
    alphas = 1.0 - torch.exp(-sigma_dt)
    trans = torch.exp(-_exclusive_cumsum(sigma_dt))
    return trans * alphas, trans, alphas


@full_precision
def neus_alpha(
    sdf: Float[Tensor, "R S"],
    cos: Float[Tensor, "R S"],
    deltas: Float[Tensor, "R S"],
    inv_s: Float[Tensor, ""],
    cos_anneal_ratio: float = 1.0,
) -> Float[Tensor, "R S"]:
    """NeuS' discrete opacity of a sample interval from the SDF at its midpoint.

    The SDF at the interval ends is extrapolated linearly from the midpoint value ``f`` with
    slope ``c <= 0``: ``f_prev = f - c d / 2`` (near end), ``f_next = f + c d / 2`` (far end),
    and ``alpha = clip((Phi(s f_prev) - Phi(s f_next) + 1e-5) / (Phi(s f_prev) + 1e-5), 0, 1)``
    with ``Phi`` the sigmoid. With ``c <= 0``, ``f_prev >= f_next``, so alpha is the relative
    drop of ``Phi(s f)`` across the interval.

    How ``c <= 0`` is enforced, following NeuS and SelfOcc's code (``iter_cos``):
    ``c = -(relu(0.5 - 0.5 cos) (1 - r) + relu(-cos) r)`` with the anneal ratio ``r``. SelfOcc
    ramps ``r`` linearly from 0 to 1 over its first 5000 iterations (its cos-anneal hook,
    called every iteration; ``SDFOcc(cos_anneal_steps=...)`` does the same here), NeuS over
    its first 50k; ``r = 1``, i.e. ``c = -relu(-cos)``, is the default here (no anneal). This
    is NeuS eq. 13, ``alpha_i = max((Phi_s(f(p(t_i))) - Phi_s(f(p(t_i+1)))) / Phi_s(f(p(t_i))), 0)``,
    with the near-end value first, and the interval ends estimated from the midpoint as in
    its code (``render_core``: ``estimated_prev_sdf = sdf - iter_cos * dists * 0.5``).

    The ``1e-5`` gives every free-space interval an opacity of about ``1e-5``; for a linear
    SDF the formula is otherwise exact, so the expected distance is biased towards the near
    end by about ``1e-5 * sum_free (t_surface - t_i)`` (3 mm for 256 samples over 10 m).

    Args:
        sdf: signed distance at the interval midpoints, metres (positive outside).
        cos: directional derivative of the SDF along the unit ray direction (``d . grad f``,
            the cosine for a true SDF), not normalised, as in NeuS.
        deltas: interval lengths, metres.
        inv_s: NeuS sharpness ``s`` (the inverse standard deviation of the logistic density).
        cos_anneal_ratio: ``r`` above, in [0, 1].

    Returns:
        Opacity per interval, in [0, 1].

    Source: NeuS (Wang et al. 2021) eq. 13 and its code (``models/renderer.py``); SelfOcc
    (Huang et al. 2024) ``SDFCustomField.get_alpha``.
    """
    iter_cos = -(F.relu(0.5 - 0.5 * cos) * (1.0 - cos_anneal_ratio) + F.relu(-cos) * cos_anneal_ratio)
    half_step = iter_cos * deltas * 0.5
    prev_cdf = torch.sigmoid((sdf - half_step) * inv_s)
    next_cdf = torch.sigmoid((sdf + half_step) * inv_s)
    return ((prev_cdf - next_cdf + 1e-5) / (prev_cdf + 1e-5)).clip(0.0, 1.0)


def median_distance(
    weights: Float[Tensor, "*b S"], t: Float[Tensor, "*b S"], eps: float = 1e-10
) -> Float[Tensor, "*b"]:
    """Median distance of each ray: the first sample where the accumulated weight reaches
    half of the ray's total weight, ``t_k`` with ``k = min{k : sum_{i<=k} w_i >= 0.5 sum_i w_i}``.

    Unlike the expected distance ``sum_i w_i t_i / sum_i w_i``, it does not fall between two
    surfaces when a ray's weight is split between them (a thin canopy in front of a far
    wall, a blurred object edge): it is the distance where the ray's transmittance, given
    that it stops, crosses one half. Not differentiable in ``weights`` (use it for
    evaluation and pictures).

    Args:
        weights: compositing weights ``w_i >= 0`` in sample order (the background sample,
            if any, last).
        t: the samples' distances along the ray, metres, non-decreasing.
        eps: guards rays whose weights sum to 0 (they get their last sample's distance).

    Returns:
        the median distance of every ray, metres.

    Raises:
        ValueError: if the shapes differ.

    Source: the "median depth" of NeRF-style renderers (e.g. Mip-NeRF 360, Barron et al.
    2022; nerfstudio's ``DepthRenderer(method="median")``).
    """
    if weights.shape != t.shape:
        raise ValueError(f"median_distance: weights {tuple(weights.shape)} and t {tuple(t.shape)} must match")
    cum = torch.cumsum(weights, dim=-1)
    half = 0.5 * cum[..., -1:]
    k = (cum < half).sum(dim=-1, keepdim=True).clamp_max(t.shape[-1] - 1)
    k = torch.where(half > eps, k, torch.full_like(k, t.shape[-1] - 1))
    return torch.gather(t, -1, k).squeeze(-1)


def depth_from_dist(dist: Float[Tensor, "*b"], depth_per_dist: Float[Tensor, "*b"]) -> Float[Tensor, "*b"]:
    """Camera depth (z in the camera frame) from distance along a unit ray, metres.

    ``depth_per_dist`` comes from ``render.rays.pixel_rays`` (``Rays.depth_per_dist``).
    """
    return dist * depth_per_dist


@dataclass
class FieldSamples:
    """What a field returns at ``P`` query points.

    Attributes:
        sdf: signed distance, metres, positive in free space.
        features: any per-point channels to composite (RGB, semantic logits, ...).
        sdf_gradients: optional analytic or numerical SDF gradient (SelfOcc uses central
            differences); when absent, the renderer differentiates ``sdf`` with autograd.
    """

    sdf: Float[Tensor, "P"]
    features: Float[Tensor, "P C"]
    sdf_gradients: Float[Tensor, "P 3"] | None = None


@dataclass
class VolumeRenderOutput:
    """NeuS rendering of ``R`` rays with ``S`` samples each.

    Attributes:
        dist: expected distance along the ray, ``sum_i w_i t_i``, metres; not normalised by
            the opacity and no background added (see ``normalized_dist``).
        opacity: ``sum_i w_i``, in [0, 1]; ``1 - opacity`` is the leftover transmittance.
        features: composited features ``sum_i w_i feat_i``.
        weights: compositing weights ``w_i``.
        t: sample (interval midpoint) distances along the ray, metres.
        deltas: interval lengths, metres.
        points: sample positions, metres, in the rays' frame.
        sdf: SDF at the samples, metres.
        alphas: NeuS opacity per interval.
        sdf_gradients: SDF gradient at the samples (for the eikonal loss), or ``None`` when
            gradients were not computed.
        inv_s: NeuS sharpness ``s = exp(10 v)``.
    """

    dist: Float[Tensor, "R"]
    opacity: Float[Tensor, "R"]
    features: Float[Tensor, "R C"]
    weights: Float[Tensor, "R S"]
    t: Float[Tensor, "R S"]
    deltas: Float[Tensor, "R S"]
    points: Float[Tensor, "R S 3"]
    sdf: Float[Tensor, "R S"]
    alphas: Float[Tensor, "R S"]
    sdf_gradients: Float[Tensor, "R S 3"] | None
    inv_s: Float[Tensor, ""]

    def normalized_dist(self, eps: float = 1e-10) -> Float[Tensor, "R"]:
        """``dist / (opacity + eps)``: the expected distance given that the ray stops.

        This is the "expected" depth of SelfOcc's NeuS head (nerfstudio ``DepthRenderer``),
        except that no clamping to the sample range is applied.
        """
        return self.dist / (self.opacity + eps)


def _cat_outputs(outputs: list[VolumeRenderOutput]) -> VolumeRenderOutput:
    """Concatenate per-chunk outputs along the ray dimension."""
    if len(outputs) == 1:
        return outputs[0]
    merged = {}
    for f in fields(VolumeRenderOutput):
        values = [getattr(o, f.name) for o in outputs]
        if f.name == "inv_s":
            merged[f.name] = values[0]
        elif values[0] is None:
            merged[f.name] = None
        else:
            merged[f.name] = torch.cat(values, dim=0)
    return VolumeRenderOutput(**merged)


class NeuSRenderer(nn.Module):
    """NeuS volume renderer for SDF fields, with SelfOcc's choices as defaults.

    Samples ``num_samples`` contiguous intervals covering ``[near, far]`` of each ray
    (uniform in distance, or with ``spacing="log"`` uniform in log-distance; with ``perturb``
    and in training mode the interior interval edges are jittered, edge ``k`` uniformly
    between the centres of bins ``k - 1`` and ``k`` of that spacing, so the intervals still
    tile ``[near, far]`` exactly), evaluates the field at interval midpoints,
    and composites with ``neus_alpha``. SelfOcc evaluates the SDF at interval starts and
    reports the midpoint as the sample distance; we evaluate at the midpoint, where NeuS'
    section formula is centred.

    The sharpness ``s = exp(10 v)`` (clipped to [1e-6, 1e6]) has one learnable parameter ``v``
    (``variance``), starting at ``init_variance``; the buffer ``min_inv_s`` (0 by default)
    bounds it from below for a sharpness schedule.

    Args:
        num_samples: samples per ray ``S`` (SelfOcc: 256 uniform).
        init_variance: initial ``v`` (SelfOcc: 0.1, i.e. ``s = e``).
        perturb: jitter the interval edges in training mode (never in eval mode).
        spacing: ``"uniform"`` (SelfOcc) or ``"log"``: edges ``near (far / near)^u`` for
            uniform ``u``, the same relative resolution at every distance (an interval is a
            fixed fraction of its distance; needs ``near > 0``). Not in SelfOcc.
        backend: ``"auto"``, ``"torch"`` or ``"nerfacc"`` for the transmittance.
        chunk: rays rendered per pass; bounds peak memory when no graph is kept (eval /
            ``torch.no_grad``). In training the graph of every chunk is kept, so chunking
            only splits the work.
        cos_anneal_ratio: NeuS' cosine anneal ratio ``r`` (see ``neus_alpha``); a plain
            attribute that the model updates during training (``SDFOcc.cos_anneal_steps``).

    Raises:
        ValueError: for ``num_samples < 1``, ``chunk < 1``, an unknown backend or spacing, and
            (at render time) ``spacing="log"`` with a ray whose ``near <= 0``.

    Source: NeuS (Wang et al. 2021) eq. 13; SelfOcc (Huang et al. 2024) NeuS head.
    """

    def __init__(
        self,
        num_samples: int = 64,
        init_variance: float = 0.1,
        perturb: bool = True,
        backend: str = "auto",
        chunk: int = 8192,
        cos_anneal_ratio: float = 1.0,
        spacing: str = "uniform",
    ) -> None:
        super().__init__()
        if spacing not in ("uniform", "log"):
            raise ValueError(f"spacing must be 'uniform' or 'log', got {spacing!r}")
        self.spacing = spacing
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        resolve_backend(backend)
        self.num_samples = num_samples
        self.perturb = perturb
        self.backend = backend
        self.chunk = chunk
        self.cos_anneal_ratio = cos_anneal_ratio
        self.variance = nn.Parameter(torch.tensor(float(init_variance)))
        # A lower bound on s that a training schedule may raise (SDFOcc.sharpness_ramp);
        # saved, so evaluation and a resumed run use the bound training reached.
        self.register_buffer("min_inv_s", torch.zeros(()))

    @property
    def inv_s(self) -> Tensor:
        """NeuS sharpness ``s = max(exp(10 v), min_inv_s)``, clipped to [1e-6, 1e6] as in
        SelfOcc (``min_inv_s`` is 0 unless a schedule raises it)."""
        return torch.maximum(torch.exp(self.variance * 10.0), self.min_inv_s).clip(1e-6, 1e6)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints from before the sharpness bound existed: no bound (0).
        state_dict.setdefault(prefix + "min_inv_s", torch.zeros(()))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (
            f"num_samples={self.num_samples}, perturb={self.perturb}, backend={self.backend!r}, "
            f"chunk={self.chunk}, cos_anneal_ratio={self.cos_anneal_ratio}, spacing={self.spacing!r}"
        )

    @full_precision
    def forward(
        self,
        field: Callable[[Float[Tensor, "P 3"]], FieldSamples],
        origins: Float[Tensor, "R 3"],
        directions: Float[Tensor, "R 3"],
        near: Float[Tensor, "R"],
        far: Float[Tensor, "R"],
        compute_gradients: bool = True,
        generator: torch.Generator | None = None,
    ) -> VolumeRenderOutput:
        """Render rays through an SDF field.

        Args:
            field: maps points ``[P, 3]`` (metres, the rays' frame) to ``FieldSamples``.
            origins: ray origins, metres.
            directions: unit ray directions.
            near, far: sampled interval along each ray, metres (e.g. from ``ray_aabb``).
                Rays with ``far <= near`` get zero weights (opacity 0, dist 0).
            compute_gradients: differentiate the SDF at the samples (autograd; with
                ``create_graph`` whenever grad mode is on, so an eikonal loss and the
                cosine term train the field). When off and the field gives no gradients,
                the cosine is estimated from SDF differences between neighbouring samples
                along the ray and ``sdf_gradients`` is ``None``.
            generator: random generator for the sample jitter.

        Returns:
            ``VolumeRenderOutput``.

        Precision: runs with autocast off and half-precision inputs cast to float32
        (``render.precision``); the field is queried in the caller's autocast state and its
        outputs are cast to float32 before NeuS alpha and compositing.

        Raises:
            ValueError: if the field returns something other than ``FieldSamples`` of the
                right length, or the directions are not unit-norm.
        """
        norms = directions.detach().norm(dim=-1)
        if directions.shape[0] > 0 and not torch.allclose(norms, torch.ones_like(norms), atol=1e-3):
            raise ValueError(
                f"NeuSRenderer: directions must be unit-norm (norms in "
                f"[{norms.min().item():.4f}, {norms.max().item():.4f}])"
            )
        outputs = [
            self._render_chunk(
                field,
                origins[i : i + self.chunk],
                directions[i : i + self.chunk],
                near[i : i + self.chunk],
                far[i : i + self.chunk],
                compute_gradients,
                generator,
            )
            for i in range(0, max(origins.shape[0], 1), self.chunk)
        ]
        return _cat_outputs(outputs)

    def _sample_edges(self, near: Tensor, far: Tensor, generator: torch.Generator | None) -> Tensor:
        """Interval edges ``[R, S + 1]`` tiling ``[near, far]`` (see the class docstring)."""
        S = self.num_samples
        u = torch.linspace(0.0, 1.0, S + 1, device=near.device, dtype=near.dtype)
        u = u.expand(near.shape[0], S + 1)
        if self.perturb and self.training and S > 1:
            centres = 0.5 * (u[:, 1:] + u[:, :-1])
            lo, hi = centres[:, :-1], centres[:, 1:]
            r = torch.rand(lo.shape, generator=generator, device=near.device, dtype=near.dtype)
            u = torch.cat([u[:, :1], lo + (hi - lo) * r, u[:, -1:]], dim=-1)
        if self.spacing == "log":
            if bool((near <= 0).any()):
                raise ValueError("NeuSRenderer: spacing='log' needs near > 0 on every ray")
            far = torch.maximum(far, near)  # empty rays stay empty
            edges = near[:, None] * torch.exp(torch.log(far / near)[:, None] * u)
            return torch.cat([near[:, None], edges[:, 1:-1], far[:, None]], dim=-1)  # exact ends
        return near[:, None] + (far - near)[:, None] * u

    def _query_field(
        self,
        field: Callable[[Tensor], FieldSamples],
        points: Tensor,
        compute_gradients: bool,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Evaluate the field at ``points [P, 3]``; return sdf, features, gradients."""
        keep_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            if compute_gradients and not points.requires_grad:
                points = points.detach().requires_grad_(True)
            # The field (the costly part) runs in the caller's autocast state; what it
            # returns is cast to float32 before NeuS alpha and compositing.
            with ambient_autocast():
                samples = field(points)
            if not isinstance(samples, FieldSamples):
                raise ValueError(f"NeuSRenderer: field must return FieldSamples, got {type(samples).__name__}")
            P = points.shape[0]
            if samples.sdf.shape != (P,) or samples.features.ndim != 2 or samples.features.shape[0] != P:
                raise ValueError(
                    f"NeuSRenderer: field returned sdf {tuple(samples.sdf.shape)} and features "
                    f"{tuple(samples.features.shape)} for {P} points; expected ({P},) and ({P}, C)"
                )
            grads = samples.sdf_gradients
            if grads is None and compute_gradients:
                (grads,) = torch.autograd.grad(
                    samples.sdf,
                    points,
                    grad_outputs=torch.ones_like(samples.sdf),
                    create_graph=keep_graph,
                    allow_unused=True,
                )
                # A field that does not depend on position has a zero gradient.
                if grads is None:
                    grads = torch.zeros_like(points)
        sdf, features = to_full(samples.sdf), to_full(samples.features)
        grads = to_full(grads)
        if not keep_graph:
            sdf, features = sdf.detach(), features.detach()
            grads = grads.detach() if grads is not None else None
        return sdf, features, grads

    def _render_chunk(
        self,
        field: Callable[[Tensor], FieldSamples],
        origins: Tensor,
        directions: Tensor,
        near: Tensor,
        far: Tensor,
        compute_gradients: bool,
        generator: torch.Generator | None,
    ) -> VolumeRenderOutput:
        R, S = origins.shape[0], self.num_samples
        edges = self._sample_edges(near, far, generator)
        t = 0.5 * (edges[:, 1:] + edges[:, :-1])
        deltas = edges[:, 1:] - edges[:, :-1]
        points = origins[:, None, :] + directions[:, None, :] * t[..., None]

        sdf, features, grads = self._query_field(field, points.reshape(R * S, 3), compute_gradients)
        sdf = sdf.reshape(R, S)
        features = features.reshape(R, S, -1)
        if grads is not None:
            grads = grads.reshape(R, S, 3)
            cos = (directions[:, None, :] * grads).sum(dim=-1)
        else:
            cos = _along_ray_slope(sdf, t)

        inv_s = self.inv_s
        alphas = neus_alpha(sdf, cos, deltas, inv_s, self.cos_anneal_ratio)
        alphas = torch.where((far > near)[:, None], alphas, torch.zeros_like(alphas))
        weights, _ = weights_from_alpha(alphas, self.backend)
        return VolumeRenderOutput(
            dist=(weights * t).sum(dim=-1),
            opacity=weights.sum(dim=-1),
            features=(weights[..., None] * features).sum(dim=-2),
            weights=weights,
            t=t,
            deltas=deltas,
            points=points,
            sdf=sdf,
            alphas=alphas,
            sdf_gradients=grads,
            inv_s=inv_s,
        )


def _along_ray_slope(sdf: Tensor, t: Tensor) -> Tensor:
    """Directional derivative of the SDF along the ray from neighbouring samples ``[R, S]``.

    Mean of the slopes to the previous and next sample (one-sided at the ends); zero for a
    single sample.
    """
    if sdf.shape[-1] < 2:
        return torch.zeros_like(sdf)
    dt = (t[:, 1:] - t[:, :-1]).clamp_min(torch.finfo(t.dtype).tiny)
    slope = (sdf[:, 1:] - sdf[:, :-1]) / dt
    left = torch.cat([slope[:, :1], slope], dim=-1)
    right = torch.cat([slope, slope[:, -1:]], dim=-1)
    return 0.5 * (left + right)


@dataclass
class DensityRenderOutput:
    """Density (NeRF-style) rendering of ``R`` rays with ``S`` samples.

    Attributes:
        weights: compositing weights ``w_i``.
        dist: ``sum_i w_i t_i`` with ``t_i`` the interval midpoints, metres (no background).
        features: ``sum_i w_i feat_i``.
        opacity: ``sum_i w_i``.
    """

    weights: Float[Tensor, "R S"]
    dist: Float[Tensor, "R"]
    features: Float[Tensor, "R C"]
    opacity: Float[Tensor, "R"]


@full_precision
def render_density(
    sigmas: Float[Tensor, "R S"],
    t_starts: Float[Tensor, "R S"],
    t_ends: Float[Tensor, "R S"],
    features: Float[Tensor, "R S C"],
    backend: str = "auto",
) -> DensityRenderOutput:
    """Composite a density field sampled on ray intervals (BEV / voxel volumes).

    ``alpha_i = 1 - exp(-sigma_i (t_end_i - t_start_i))``, ``w_i = alpha_i prod_{j<i} (1 - alpha_j)``.

    Args:
        sigmas: density per interval, 1/metre, ``>= 0``.
        t_starts, t_ends: interval bounds along unit rays, metres, ordered near to far.
        features: per-interval features to composite.
        backend: ``"auto"``, ``"torch"`` or ``"nerfacc"``.

    Returns:
        ``DensityRenderOutput`` (leftover transmittance ``1 - opacity`` is not filled).

    Raises:
        ValueError: for an unknown backend.

    Source: NeRF (Mildenhall et al. 2020) eq. 3.

    >>> out = render_density(torch.full((1, 4), 1e3), torch.tensor([[0.0, 1, 2, 3]]),
    ...                      torch.tensor([[1.0, 2, 3, 4]]), torch.ones(1, 4, 1), backend="torch")
    >>> out.dist, out.opacity
    (tensor([0.5000]), tensor([1.]))
    """
    weights, _, _ = weights_from_density(sigmas, t_starts, t_ends, backend)
    t = 0.5 * (t_starts + t_ends)
    return DensityRenderOutput(
        weights=weights,
        dist=(weights * t).sum(dim=-1),
        features=(weights[..., None] * features).sum(dim=-2),
        opacity=weights.sum(dim=-1),
    )

