"""The staged model contract between representations, objectives, the training loop and the
evaluation scripts.

Every occupancy model is an ``nn.Module`` built from plain typed arguments (never a config
object) that subclasses :class:`OccupancyModel` and implements four typed stages:

``encode(batch: Frames) -> Scene``
    The representation of the *current* frame (t = 0) of a batch: TPV planes, Gaussians,
    a BEV / voxel volume. A :class:`Scene` subclass (a dataclass) with typed fields, in the
    ego frame of the current frame, metres.

``render(scene, K, T_ego_cam, grid, times=None, features=True) -> RenderedViews``
    Render the scene into ``V`` cameras per batch element at the pixels of a
    :class:`PixelGrid`. ``K [B V 3 3]`` are intrinsics of images of size ``grid.image_hw``;
    ``T_ego_cam [B V 4 4]`` maps each camera (OpenCV) into the ego frame of the *current*
    frame (for a neighbour frame t that is ``Frames.T_ego0_cam()[:, t]``, so ego motion
    comes from the poses). ``times [B]`` are seconds from the current frame (a dynamic
    representation moves itself there, e.g. Gaussian flow; static ones ignore it).
    ``features=False`` may skip colour / semantics (depth-only evaluation). Rasterisers
    that render whole images accept only regular grids (``grid.jittered == False``) and
    raise ``ValueError`` otherwise; ray-marching renderers accept any pixels.

``predict_occupancy(scene) -> OccupancyPrediction``
    Occ3D labels (uint8 ``[B X Y Z]``, 0-16, 17 free) on the model's voxel grid, plus voxel
    logits ``[B X Y Z C]`` with gradient where the representation has them (needed by a
    voxel objective; ``None`` otherwise). Callers evaluate it under ``torch.no_grad()``.

``regularizers(scene, views) -> dict[str, Tensor]``
    Representation-specific unweighted scalar terms (eikonal, hessian, flow), named from
    :data:`LOSS_NAMES`; ``views`` is the list the training step rendered.

Everything else is shared and concrete here:

``forward(batch) -> ModelOutput`` (training)
    ``scene = encode(batch)``; ``views = training_views(scene, batch)`` (one
    :class:`RenderedViews` per rendered frame; the default renders the frames
    ``train_frames`` on the ``train_grid``, jittered in training mode; models may override
    it); ``batch = objective_batch(batch)`` (the batch itself unless a model overrides it,
    e.g. SDFOcc's coarse-to-fine image blur); then every configured objective (see below)
    with a positive weight, the regularizers, ``loss = sum_k weight_k * term_k``; logs
    ``loss/<name>`` (unweighted, detached) and ``stats/<name>``
    (:meth:`OccupancyModel.statistics`) and an image ``"depth"``.

``render_depth(batch, K, T_ego_cam, height, width) -> [B V H W]`` (evaluation)
    Camera depth (z, metres) at every pixel centre, 0 where the opacity is below
    ``min_opacity``; built on ``encode`` + ``render`` (no time offset, so no flow).

Objectives (``selfsup.objectives``) are pure functions. A *view objective* is
``fn(views: RenderedViews, batch: Frames, mask: Bool[B V R]) -> scalar | None`` (``mask``:
the rays that may count, i.e. ``Frames.valid_masks`` read at the rays' pixels); it returns
``None`` when the batch lacks its target (no semantic labels, a single frame) and raises
``ValueError`` when the views lack a field it needs (e.g. colour). An *occupancy objective*
(decorated with :func:`occupancy_objective`; issue 10's voxel cross-entropy) is
``fn(prediction: OccupancyPrediction, batch: Frames) -> scalar | None`` and is evaluated once
per step on ``predict_occupancy(encode(batch))``. A model is given a mapping name ->
objective (``objectives``) and a mapping name -> weight (``loss_weights``, objectives and
regularizers alike); view-objective terms are averaged over the rendered frames. Keyword
parameters of an objective are bound in the config (``fdl.Partial(depth_objective,
source="pseudo")``) or by the model's defaults.

Log keys are one vocabulary across models: ``loss/<name>`` for ``name`` in
:data:`LOSS_NAMES` and ``stats/<name>`` for ``name`` in :data:`STAT_NAMES`
(:func:`check_log_keys`). Add a new name there, once, with its meaning.

A new representation therefore implements: a ``Scene`` dataclass, ``encode``, ``render``,
``predict_occupancy`` and ``regularizers`` (``{}`` if none), calls
:meth:`OccupancyModel.setup_objectives` in its ``__init__`` and sets ``encoder`` (an
``nn.Module`` whose ``backbone`` gets the backbone learning-rate multiplier),
``train_grid_hw``, ``train_jitter``, ``train_frames``, ``min_opacity``. ``train.py`` only
calls ``forward``; ``eval_iou.py`` calls ``predict_occupancy(encode(batch))``;
``eval_depth.py`` and ``eval_novel_depth.py`` call ``render_depth``.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from jaxtyping import Bool, Float, UInt8
from torch import Tensor, nn

from render.rays import jittered_pixel_grid
from selfsup.data.frames import Frames

# --------------------------------------------------------------------------- log vocabulary
LOSS_NAMES: dict[str, str] = {
    "photometric": "multi-view reprojection of rendered sample points, auto-masked (objectives.photometric)",
    "rgb": "rendered colour vs the image at the rays (objectives.rgb)",
    "depth": "rendered depth vs LiDAR or pseudo depth (objectives.depth)",
    "semantic": "rendered semantic logits vs 2D labels, cross-entropy (objectives.semantic)",
    "voxel": "voxel logits vs voxel labels, (class-weighted) cross-entropy (objectives.voxel)",
    "voxel_focal": "voxel logits vs voxel labels, softmax focal loss (objectives.voxel)",
    "lovasz": "voxel Lovasz-softmax (objectives.voxel)",
    "sem_scal": "MonoScene semantic scene-class affinity of the voxel logits (objectives.voxel)",
    "geo_scal": "MonoScene geometric scene-class affinity of the voxel logits (objectives.voxel)",
    "lss_depth": "LSS depth distribution vs one-hot LiDAR depth bins, BCE (regularizer of LSS lifting)",
    "eikonal": "SDF gradient norm 1 (regularizer)",
    "hessian": "SDF second-order smoothness (regularizer)",
    "flow_reg": "squared length of the temporal flow (regularizer)",
    "search": "rendered distance vs the non-local photometric depth search, L1 of logs (SDFOcc, losses.stereo)",
    "free_space": "negative SDF at the samples a ray passes before it stops (SDFOcc, losses.free_space_loss)",
    "patch_photometric": "photometric error with every sample matched by its own 3 x 3 patch, beside the ray-grid one (SDFOcc)",
    "distortion": "spread of each ray's weights in log distance, background included (SDFOcc, losses.distortion_loss)",
    "prior": "mean squared distance (m^2) of the decoded SDF grid from its analytic prior (SDFOcc)",
    "keypoint_depth": "rendered depth of rays through labelled pixels of sparse depth maps (triangulated keypoints) vs that depth (SDFOcc)",
}
STAT_NAMES: dict[str, str] = {
    "opacity": "mean rendered opacity of the training rays, all rendered frames",
    "depth": "mean rendered depth of the training rays, metres",
    "depth_abs_rel": "mean |d - d_gt| / d_gt of rendered depth on supervised rays",
    "inv_s": "NeuS sharpness s",
    "search_confident": "fraction of training rays with a confident photometric depth-search hypothesis",
    "cos_anneal": "NeuS cosine anneal ratio r",
    "gaussian_opacity": "mean opacity parameter of the Gaussians",
    "moving_fraction": "fraction of Gaussians allowed to move (dynamic argmax class)",
}


def loss_key(name: str) -> str:
    """``loss/<name>``; raises ``ValueError`` for a name not in :data:`LOSS_NAMES`."""
    if name not in LOSS_NAMES:
        raise ValueError(f"unknown loss name {name!r}; add it to selfsup.model_api.LOSS_NAMES ({sorted(LOSS_NAMES)})")
    return f"loss/{name}"


def stat_key(name: str) -> str:
    """``stats/<name>``; raises ``ValueError`` for a name not in :data:`STAT_NAMES`."""
    if name not in STAT_NAMES:
        raise ValueError(f"unknown stat name {name!r}; add it to selfsup.model_api.STAT_NAMES ({sorted(STAT_NAMES)})")
    return f"stats/{name}"


def check_log_keys(keys: Iterable[str]) -> None:
    """Raise ``ValueError`` naming every key that is not ``loss/<LOSS_NAMES>`` or
    ``stats/<STAT_NAMES>``."""
    allowed = {f"loss/{n}" for n in LOSS_NAMES} | {f"stats/{n}" for n in STAT_NAMES}
    bad = sorted(k for k in keys if k not in allowed)
    if bad:
        raise ValueError(f"log keys outside the shared vocabulary: {bad}")


# --------------------------------------------------------------------------- data classes
@dataclass
class Scene:
    """Base of every representation's per-batch state (ego frame of the current frame).

    Subclasses are dataclasses adding typed tensor fields with a leading batch dim ``B``
    (e.g. ``TPVScene.planes``, ``GaussianScene.gaussians``, a BEV volume).
    """


@dataclass(frozen=True)
class PixelGrid:
    """The pixels a render call shades: a ``rows x cols`` grid over an image.

    Attributes:
        image_hw: (H, W) of the images the intrinsics ``K`` refer to, pixels.
        grid_hw: (rows, cols) of the grid; ``R = rows * cols`` rays per camera.
        pixels: continuous pixel coordinates ``[R, 2]`` (u column, v row; centres at +0.5,
            the ``render.rays`` convention), row-major over the grid, the same for every
            camera.
        jittered: whether ``pixels`` are random inside their cells (else the cell centres).
    """

    image_hw: tuple[int, int]
    grid_hw: tuple[int, int]
    pixels: Float[Tensor, "R 2"]
    jittered: bool = False

    @classmethod
    def make(
        cls,
        image_hw: tuple[int, int],
        grid_hw: tuple[int, int] | None = None,
        jitter: bool = False,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> "PixelGrid":
        """A grid of ``grid_hw`` cells over ``image_hw`` (default: one per pixel), one
        pixel per cell: the centre, or uniform in the cell with ``jitter``
        (:func:`render.rays.jittered_pixel_grid`)."""
        grid_hw = tuple(grid_hw or image_hw)
        pixels = jittered_pixel_grid(*image_hw, *grid_hw, generator=generator, jitter=jitter, device=device)
        return cls(tuple(image_hw), grid_hw, pixels, jitter)

    @property
    def num_rays(self) -> int:
        return self.grid_hw[0] * self.grid_hw[1]


@dataclass
class RenderedViews:
    """Renders of ``V`` cameras per batch element at the ``R`` pixels of a :class:`PixelGrid`.

    Attributes:
        depth: expected camera depth (z, metres) of each ray, normalised by the opacity
            (``sum_i w_i z_i / sum_i w_i``); not thresholded.
        opacity: accumulated opacity ``sum_i w_i`` in [0, 1].
        pixels: the rays' pixel coordinates (``PixelGrid.pixels`` expanded), pixels.
        image_hw, grid_hw: as in :class:`PixelGrid`.
        frame: index into ``Frames`` T of the cameras rendered (0 = the current frame); set
            by :meth:`OccupancyModel.training_views`, it tells objectives which frame's
            targets to read.
        accumulated_depth: ``sum_i w_i z_i`` where the renderer has it exactly (Gaussians);
            ``None`` means ``depth * opacity`` (see :meth:`accumulated`).
        rgb: rendered colour in [0, 1] or ``None``.
        semantic_logits: rendered semantic logits (Occ3D classes) or ``None``.
        sample_points: per-ray sample positions, ego frame of the current frame, metres,
            no gradient; ``None`` for rasterisers.
        sample_weights: compositing weights ``w_i`` of those samples.
        extras: representation-specific tensors for its own regularizers (e.g.
            ``"sdf_gradients"``, ``"flow"``); shared objectives never read them.
    """

    depth: Float[Tensor, "B V R"]
    opacity: Float[Tensor, "B V R"]
    pixels: Float[Tensor, "B V R 2"]
    image_hw: tuple[int, int]
    grid_hw: tuple[int, int]
    frame: int = 0
    accumulated_depth: Float[Tensor, "B V R"] | None = None
    rgb: Float[Tensor, "B V R 3"] | None = None
    semantic_logits: Float[Tensor, "B V R K"] | None = None
    sample_points: Float[Tensor, "B V R S 3"] | None = None
    sample_weights: Float[Tensor, "B V R S"] | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)

    def accumulated(self) -> Float[Tensor, "B V R"]:
        """``sum_i w_i z_i``: ``accumulated_depth`` if given, else ``depth * opacity``."""
        return self.accumulated_depth if self.accumulated_depth is not None else self.depth * self.opacity

    def grid(self, x: Float[Tensor, "B V R *c"]) -> Float[Tensor, "N C rows cols"]:
        """A per-ray tensor as images on the ray grid, ``N = B V`` (for SSIM)."""
        b, v, r = x.shape[:3]
        rows, cols = self.grid_hw
        if r != rows * cols:
            raise ValueError(f"RenderedViews.grid: {r} rays do not form the {rows} x {cols} grid")
        return x.reshape(b * v, rows, cols, -1).permute(0, 3, 1, 2)


@dataclass
class OccupancyPrediction:
    """Voxel prediction of the current frame on the model's grid (ego frame, [x, y, z]).

    Attributes:
        labels: Occ3D labels, 0-16 semantic, 17 free.
        logits: per-voxel class logits (C = 18 with free, or the model's classes) with
            gradient, for voxel objectives; ``None`` where the representation has none.
    """

    labels: UInt8[Tensor, "B X Y Z"]
    logits: Float[Tensor, "B X Y Z C"] | None = None


@dataclass
class ModelOutput:
    """What one training forward pass returns.

    Attributes:
        loss: the weighted total loss, a scalar with gradient.
        terms: ``loss/<name>`` (unweighted) and ``stats/<name>`` scalars for logging
            (detached), see :func:`check_log_keys`.
        images: optional images for TensorBoard, name -> ``[3, H, W]`` in [0, 1].
    """

    loss: Float[Tensor, ""]
    terms: dict[str, Tensor] = field(default_factory=dict)
    images: dict[str, Tensor] = field(default_factory=dict)


# --------------------------------------------------------------------------- objectives
ViewObjective = Callable[[RenderedViews, Frames, Tensor], "Tensor | None"]
OccupancyObjective = Callable[[OccupancyPrediction, Frames], "Tensor | None"]


def occupancy_objective(fn: Callable) -> Callable:
    """Mark ``fn(prediction: OccupancyPrediction, batch: Frames) -> scalar | None`` as an
    occupancy objective (evaluated on ``predict_occupancy(scene)``, not on the views)."""
    fn.on_occupancy = True
    return fn


def is_occupancy_objective(fn: Callable) -> bool:
    """Whether ``fn`` (possibly a ``functools.partial``) is an occupancy objective."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return bool(getattr(fn, "on_occupancy", False))


def read_nearest(images: Tensor, pixels: Float[Tensor, "B V R 2"]) -> Tensor:
    """Nearest-pixel values ``[B V R]`` of per-camera maps ``images [B V H W]`` (masks,
    labels, pseudo depth) at continuous pixel coordinates: the pixel containing the point,
    ``(floor(v), floor(u))`` clamped to the image. The one way maps are read at rays."""
    height, width = images.shape[-2:]
    col = pixels[..., 0].floor().long().clamp(0, width - 1)
    row = pixels[..., 1].floor().long().clamp(0, height - 1)
    flat = images.flatten(-2)  # [B V HW]
    return torch.gather(flat, -1, row * width + col)


def check_choice(owner: str, name: str, value, choices: tuple) -> None:
    """Raise ``ValueError("<owner>: <name> must be one of <choices>, got <value>")`` unless
    ``value in choices`` (the one argument check of models and representations)."""
    if value not in choices:
        raise ValueError(f"{owner}: {name} must be one of {choices}, got {value!r}")


def depth_image(depth: Float[Tensor, "H W"]) -> Float[Tensor, "3 H W"]:
    """Grey inverse-depth picture in [0, 1] for TensorBoard (near = bright, no hit = black)."""
    inv = torch.where(depth > 0, 1.0 / depth.clamp(min=0.5), torch.zeros_like(depth))
    inv = inv / inv.max().clamp(min=1e-6)
    return inv[None].expand(3, -1, -1).clamp(0.0, 1.0)


# --------------------------------------------------------------------------- the model
class OccupancyModel(nn.Module, ABC):
    """Base class of every occupancy model (the staged contract: see the module docstring).

    Subclass attributes used by the shared code: ``encoder`` (``encoder.backbone`` gets the
    backbone lr multiplier), ``train_grid_hw`` (rays per camera, None = the image size),
    ``train_jitter`` (jitter the rays in training mode), ``train_frames`` ("current": frame
    0 only; "all": every frame of the batch at its time offset; "random": one frame per
    step, drawn uniformly from the batch's frames in training mode, frame 0 otherwise),
    ``min_opacity``
    (``render_depth`` threshold).
    """

    train_grid_hw: tuple[int, int] | None = None
    train_jitter: bool = False
    train_frames: Literal["current", "all", "random"] = "current"
    min_opacity: float = 0.05

    # ------------------------------------------------------------------ the stages
    @abstractmethod
    def encode(self, batch: Frames) -> Scene:
        """The representation of the current frame (t = 0) of a batched ``Frames``
        (:meth:`current_image_features` gives the encoder's features of its images)."""

    def current_image_features(self, batch: Frames) -> list[Tensor]:
        """``self.encoder`` applied to the current frame's images ``[B V 3 H W]``.

        Raises:
            ValueError: if ``batch`` is not batched.
        """
        if not batch.batched:
            raise ValueError(f"{type(self).__name__}: expected a batched Frames (images [B, T, V, 3, H, W]); use collate_frames")
        return self.encoder(batch.images[:, 0])

    @abstractmethod
    def render(
        self,
        scene: Scene,
        K: Float[Tensor, "B V 3 3"],
        T_ego_cam: Float[Tensor, "B V 4 4"],
        grid: PixelGrid,
        times: Float[Tensor, "B"] | None = None,
        features: bool = True,
    ) -> RenderedViews:
        """Render ``scene`` into V cameras (see the module docstring)."""

    @abstractmethod
    def predict_occupancy(self, scene: Scene) -> OccupancyPrediction:
        """Occ3D labels (and logits if any) of the scene's current frame."""

    def regularizers(self, scene: Scene, views: list[RenderedViews]) -> dict[str, Tensor]:
        """Representation-specific unweighted terms; none by default."""
        return {}

    def statistics(self, scene: Scene, views: list[RenderedViews], batch: Frames) -> dict[str, Tensor]:
        """Extra detached scalars logged as ``stats/<name>`` (shared: opacity, depth)."""
        return {}

    # ------------------------------------------------------------------ objectives
    def setup_objectives(
        self,
        objectives: Mapping[str, Callable],
        loss_weights: Mapping[str, float],
        regularizer_names: Iterable[str] = (),
        defaults: Mapping[str, float] | None = None,
    ) -> None:
        """Validate and store the objectives and weights (call from ``__init__``).

        Args:
            objectives: name -> view or occupancy objective.
            loss_weights: name -> weight >= 0 for objectives and regularizers; 0 switches a
                term off (it is not even computed).
            regularizer_names: the names :meth:`regularizers` may return.
            defaults: weights of names missing from ``loss_weights`` (0 otherwise).

        Raises:
            ValueError: a weight for an unknown name, a negative weight, or a name outside
                :data:`LOSS_NAMES`.
        """
        model = type(self).__name__
        known = set(objectives) | set(regularizer_names)
        for name in known:
            loss_key(name)  # in the vocabulary
        weights = {name: 0.0 for name in known}
        weights.update({k: float(v) for k, v in (defaults or {}).items() if k in known})
        for key, value in loss_weights.items():
            if key not in known:
                raise ValueError(f"{model}: unknown loss_weights key {key!r}; known: {sorted(known)}")
            if value < 0:
                raise ValueError(f"{model}: loss weight {key!r} must be >= 0, got {value}")
            weights[key] = float(value)
        self.objectives = dict(objectives)
        self.loss_weights = weights

    # ------------------------------------------------------------------ shared training
    def training_grid(self, image_hw: tuple[int, int], device: torch.device | str) -> PixelGrid:
        """The pixels of this step's training rays: a ``train_grid_hw`` grid over the image,
        jittered per cell in training mode if ``train_jitter`` (models may override)."""
        return PixelGrid.make(image_hw, self.train_grid_hw, self.train_jitter and self.training, device)

    def training_views(self, scene: Scene, batch: Frames) -> list[RenderedViews]:
        """Render the training rays: one :class:`RenderedViews` per frame of
        ``train_frames``, at the pixels of :meth:`training_grid`, cameras posed in the current
        ego frame, at each frame's time offset."""
        B, T, V, _, H, W = batch.images.shape
        grid = self.training_grid((H, W), batch.images.device)
        if self.train_frames == "all":
            frames = list(range(T))
        elif self.train_frames == "random" and self.training and T > 1:
            frames = [int(torch.randint(T, ()))]
        else:
            frames = [0]
        T_ego0_cam = batch.T_ego0_cam() if T > 1 and frames != [0] else None
        dt = (batch.timestamps - batch.timestamps[:, :1]).float()
        views = []
        for t in frames:
            T_cam = batch.T_ego_cam[:, 0] if t == 0 else T_ego0_cam[:, t]
            views.append(replace(self.render(scene, batch.K[:, t], T_cam, grid, times=dt[:, t]), frame=t))
        return views

    def objective_batch(self, batch: Frames) -> Frames:
        """The batch the objectives compare against, after encoding and rendering (models may
        override, e.g. to blur the images coarse-to-fine); the batch itself by default."""
        return batch

    def forward(self, batch: Frames) -> ModelOutput:
        """One training step's weighted loss on a batch (see the module docstring).

        Raises:
            ValueError: an unbatched ``Frames``; an objective that the views cannot feed.
        """
        scene = self.encode(batch)
        views = self.training_views(scene, batch)
        batch = self.objective_batch(batch)
        terms: dict[str, Tensor] = {}
        prediction = None
        for name, fn in self.objectives.items():
            if self.loss_weights.get(name, 0.0) <= 0:
                continue
            if is_occupancy_objective(fn):
                prediction = prediction if prediction is not None else self.predict_occupancy(scene)
                value = fn(prediction, batch)
                if value is not None:
                    terms[name] = value
                continue
            values = []
            for v in views:
                mask = read_nearest(batch.valid_masks, v.pixels)
                value = fn(v, batch, mask)
                if value is not None:
                    values.append(value)
            if values:
                terms[name] = values[0] if len(values) == 1 else torch.stack(values).mean()
        for name, value in self.regularizers(scene, views).items():
            if self.loss_weights.get(name, 0.0) > 0:
                terms[name] = value
        if not terms:
            raise ValueError(f"{type(self).__name__}.forward: no loss term applies to this batch (weights {self.loss_weights})")
        loss = sum(self.loss_weights[k] * v for k, v in terms.items())
        logs = {loss_key(k): v.detach() for k, v in terms.items()}
        with torch.no_grad():
            logs[stat_key("opacity")] = torch.stack([v.opacity.mean() for v in views]).mean()
            logs[stat_key("depth")] = torch.stack([v.depth.mean() for v in views]).mean()
            logs.update({stat_key(k): v.detach() for k, v in self.statistics(scene, views, batch).items()})
        first = views[0]
        preview = first.depth[0, 0].detach().reshape(first.grid_hw)
        return ModelOutput(loss=loss, terms=logs, images={"depth": depth_image(preview)})

    # ------------------------------------------------------------------ shared evaluation
    @torch.no_grad()
    def render_depth(
        self,
        batch: Frames,
        K: Float[Tensor, "B V 3 3"],
        T_ego_cam: Float[Tensor, "B V 4 4"],
        height: int,
        width: int,
    ) -> Float[Tensor, "B V H W"]:
        """Render camera depth (z, metres) of the current frame's scene at any camera pose.

        ``T_ego_cam`` maps each target camera into the ego frame of the *current* frame
        (t = 0); pass the current cameras for depth evaluation and neighbouring frames'
        cameras for novel depth synthesis. ``K`` are intrinsics for a ``height x width``
        image. 0 where the opacity is below ``min_opacity``.
        """
        scene = self.encode(batch)
        grid = PixelGrid.make((height, width), device=K.device)
        views = self.render(scene, K, T_ego_cam, grid, times=None, features=False)
        depth = torch.where(views.opacity >= self.min_opacity, views.depth, torch.zeros_like(views.depth))
        return depth.reshape(*K.shape[:2], height, width)
