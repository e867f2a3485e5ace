"""What a config file builds: an :class:`Experiment` (model, data, settings)."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch.utils.data import Dataset

from selfsup.model_api import OccupancyModel


@dataclass
class TrainSettings:
    """Optimisation and bookkeeping of one training run (steps, not epochs).

    Attributes:
        steps: optimizer steps in total.
        batch_size: samples per process and step.
        lr: peak AdamW learning rate.
        weight_decay: AdamW weight decay (decoupled).
        backbone_lr_mult: multiplier on ``lr`` for parameters under ``encoder.backbone``.
        lr_mults: name prefix -> multiplier on ``lr`` for the parameters whose name starts
            with it (first match), e.g. ``{"representation.decoder.": 0.1}``.
        warmup_steps: linear warm-up from ``warmup_start_ratio * lr`` to ``lr``.
        schedule: "cosine" (to ``min_lr_ratio * lr`` at ``steps``) or "constant".
        grad_clip: max global gradient norm (SelfOcc: 35); 0 disables clipping.
        ema_decay: decay of an exponential moving average of the weights, or None.
        mixed_precision: "auto" (bf16 on CUDA when supported, else none), "no", "fp16",
            "bf16".
        log_every, image_every, ckpt_every: intervals in steps (0 disables).
        keep_last: how many checkpoints to keep in the work dir.
        num_workers: DataLoader worker processes.
        num_threads: torch intra-op threads per process; ``None`` = the process's cores / the
            processes on the node (``accelerate launch`` would otherwise leave 1 on CPU).
        flush_denormal: flush denormal floats to zero on CPU (``torch.set_flush_denormal``):
            the SDF decoder's Softplus(beta=100) meets them in bulk and x86 computes them
            about 7x slower (measured: a demo step 0.67 -> 0.4 s); values below 1e-38 become 0.
        seed: seeds the model init, the data order and the ray jitter.

    Source: SelfOcc's optimiser (AdamW lr 1e-4, wd 0.01, backbone x0.1, clip 35, 1000
    warm-up iterations).
    """

    steps: int = 1000
    batch_size: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.01
    backbone_lr_mult: float = 0.1
    lr_mults: dict[str, float] | None = None
    warmup_steps: int = 100
    warmup_start_ratio: float = 1.0 / 3.0
    schedule: str = "cosine"
    min_lr_ratio: float = 0.01
    grad_clip: float = 35.0
    ema_decay: float | None = None
    mixed_precision: str = "auto"
    log_every: int = 10
    image_every: int = 100
    ckpt_every: int = 500
    keep_last: int = 2
    num_workers: int = 0
    num_threads: int | None = None
    flush_denormal: bool = True
    seed: int = 0

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"TrainSettings: steps ({self.steps}) and batch_size ({self.batch_size}) must be >= 1")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"TrainSettings.schedule: expected 'cosine' or 'constant', got {self.schedule!r}")
        if self.mixed_precision not in ("auto", "no", "fp16", "bf16"):
            raise ValueError(f"TrainSettings.mixed_precision: got {self.mixed_precision!r}")


@dataclass
class EvalSettings:
    """How ``eval_depth.py`` / ``eval_novel_depth.py`` render and score depth.

    Attributes:
        depth_hw: (rows, cols) of the rendered depth image; LiDAR points are projected
            into it (SelfOcc evaluates at 450 x 800 for 900 x 1600 nuScenes images).
        min_depth, max_depth: LiDAR points with camera depth in (min_depth, max_depth)
            metres count (SelfOcc keeps points beyond 1 m and clamps predictions to
            [1e-3, 80]; see ``eval.depth`` for its full convention).
    """

    depth_hw: tuple[int, int] = (450, 800)
    min_depth: float = 1e-3
    max_depth: float = 80.0


@dataclass
class Experiment:
    """Everything a run needs; config files build one of these with fiddle.

    Attributes:
        model: the occupancy model (see :mod:`selfsup.model_api`).
        train_data: dataset of :class:`selfsup.data.frames.Frames` used for training.
        val_data: dataset used by the evaluation scripts (defaults to ``train_data``).
        train: optimisation settings.
        eval: depth evaluation settings.
        name: a short run name (TensorBoard project name).
    """

    model: OccupancyModel
    train_data: Dataset
    val_data: Dataset | None = None
    train: TrainSettings = field(default_factory=TrainSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    name: str = "experiment"

    @property
    def eval_data(self) -> Dataset:
        return self.val_data if self.val_data is not None else self.train_data
