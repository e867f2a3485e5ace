"""The training loop: accelerate, AdamW with a backbone lr multiplier, warm-up + schedule in
steps, gradient clipping, optional EMA, exact resume, TensorBoard, a progress bar."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import fiddle as fdl
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import set_seed
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from selfsup.data.frames import collate_frames
from selfsup.training.checkpoint import TrainState, read_meta, resolve_checkpoint, save_checkpoint
from selfsup.training.config import config_to_json, config_to_text, save_config
from selfsup.training.experiment import Experiment, TrainSettings
from selfsup.training.launch import configure_cpu_threads, cpu_threads_per_process, flush_denormals
from selfsup.training.sampler import StepBatchSampler


def make_accelerator(settings: TrainSettings, work_dir: Path, log: bool = True) -> Accelerator:
    """An Accelerator on CUDA when present, else CPU (multi-process over gloo when launched so)."""
    cuda = torch.cuda.is_available()
    mp = settings.mixed_precision
    if mp == "auto":
        mp = "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
    return Accelerator(
        cpu=not cuda,
        mixed_precision=mp,
        log_with="tensorboard" if log else None,
        project_dir=str(work_dir),
        # Heads unused by a given loss set (e.g. semantics without labels) get no gradient.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )


def param_groups(
    model: torch.nn.Module, lr: float, backbone_lr_mult: float, weight_decay: float,
    lr_mults: dict[str, float] | None = None,
) -> list[dict]:
    """AdamW groups: ``encoder.backbone.*`` at ``lr * backbone_lr_mult``; parameters whose
    name starts with a key of ``lr_mults`` (first match, in order) at ``lr * lr_mults[key]``;
    the rest at ``lr``."""
    lr_mults = dict(lr_mults or {})
    buckets: dict[str, list] = {"model": [], "backbone": [], **{k: [] for k in lr_mults}}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        key = "backbone" if name.startswith("encoder.backbone.") else next((k for k in lr_mults if name.startswith(k)), "model")
        buckets[key].append(p)
    mults = {"model": 1.0, "backbone": backbone_lr_mult, **lr_mults}
    return [{"params": ps, "lr": lr * mults[k], "weight_decay": weight_decay, "name": k} for k, ps in buckets.items() if ps]


def lr_factor(step: int, settings: TrainSettings) -> float:
    """Multiplier of each group's base lr at ``step``: linear warm-up, then cosine or constant."""
    if step < settings.warmup_steps:
        a = settings.warmup_start_ratio
        return a + (1.0 - a) * step / settings.warmup_steps
    if settings.schedule == "constant":
        return 1.0
    span = max(1, settings.steps - settings.warmup_steps)
    progress = min(1.0, (step - settings.warmup_steps) / span)
    return settings.min_lr_ratio + (1.0 - settings.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def train(cfg: fdl.Config, work_dir: str | Path, resume_from: str | None = None) -> dict:
    """Build the experiment of ``cfg`` and train it; returns a summary (losses per step).

    Raises:
        FloatingPointError: the loss became NaN or infinite (the step and terms are named).
        FileNotFoundError: ``resume_from`` is not a checkpoint.
    """
    work_dir = Path(work_dir)
    settings: TrainSettings = fdl.build(cfg.train)
    threads = configure_cpu_threads(settings.num_threads)
    ftz = flush_denormals(settings.flush_denormal)
    accelerator = make_accelerator(settings, work_dir)
    accelerator.print(
        f"torch threads per process: {threads} (OMP_NUM_THREADS was {os.environ.get('OMP_NUM_THREADS', 'unset')}, "
        f"{cpu_threads_per_process()} cores per process); denormals flushed to zero: {ftz}"
    )
    set_seed(settings.seed)  # identical initial weights on every process
    exp: Experiment = fdl.build(cfg)
    model = exp.model
    if accelerator.is_main_process:
        save_config(cfg, work_dir)
    optimizer = torch.optim.AdamW(param_groups(model, settings.lr, settings.backbone_lr_mult, settings.weight_decay, settings.lr_mults))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, settings))
    model, optimizer = accelerator.prepare(model, optimizer)
    state = TrainState()
    custom = {"train_state": 0, "scheduler": 1}
    accelerator.register_for_checkpointing(state, scheduler)
    ema = None
    if settings.ema_decay is not None:
        ema = AveragedModel(accelerator.unwrap_model(model), multi_avg_fn=get_ema_multi_avg_fn(settings.ema_decay))
        accelerator.register_for_checkpointing(ema)
        custom["ema"] = 2
    if resume_from:
        ckpt = resolve_checkpoint(resume_from, work_dir)
        accelerator.load_state(str(ckpt))
        accelerator.print(f"resumed from {ckpt} at step {state.step} (saved at step {read_meta(ckpt)['step']})")
    meta = {"config_json": config_to_json(cfg), "config_text": config_to_text(cfg), "custom_objects": custom}

    sampler = StepBatchSampler(
        len(exp.train_data), settings.batch_size, settings.steps, state.step,
        accelerator.num_processes, accelerator.process_index, settings.seed,
    )
    # The loader draws its workers' base seed when iteration starts; from its own generator,
    # so that draw never shifts the global RNG that a resumed run has just restored.
    loader = DataLoader(
        exp.train_data, batch_sampler=sampler, collate_fn=collate_frames, num_workers=settings.num_workers,
        generator=torch.Generator().manual_seed(settings.seed + state.step),
    )
    accelerator.init_trackers(exp.name)
    history: list[dict] = []
    bar = tqdm(total=settings.steps, initial=state.step, disable=not accelerator.is_local_main_process, desc="train")
    model.train()
    tic = time.perf_counter()
    for batch in loader:
        batch = batch.to(accelerator.device)
        with accelerator.autocast():
            out = model(batch)
        terms = {k: float(v) for k, v in out.terms.items()}
        if not torch.isfinite(out.loss.detach()):
            raise FloatingPointError(f"non-finite loss {out.loss.item()} at step {state.step}; terms: {terms}")
        accelerator.backward(out.loss)
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), settings.grad_clip) if settings.grad_clip > 0 else None
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update_parameters(accelerator.unwrap_model(model))
        state.step += 1
        loss = accelerator.reduce(out.loss.detach(), reduction="mean").item()
        record = {"step": state.step, "loss": loss, **terms}
        if grad_norm is not None:
            record["grad_norm"] = float(grad_norm)
        history.append(record)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", it_s=f"{len(history) / (time.perf_counter() - tic):.2f}")
        _log(accelerator, settings, state.step, record, out.images, scheduler)
        if (settings.ckpt_every and state.step % settings.ckpt_every == 0) or state.step == settings.steps:
            save_checkpoint(accelerator, work_dir, state.step, meta, settings.keep_last)
    bar.close()
    accelerator.end_training()
    return {
        "steps": state.step,
        "history": history,
        "work_dir": str(work_dir),
        "num_processes": accelerator.num_processes,
        "num_threads": threads,
        "distributed_type": str(accelerator.distributed_type).split(".")[-1],
    }


def _log(accelerator: Accelerator, settings: TrainSettings, step: int, record: dict, images: dict, scheduler) -> None:
    if settings.log_every and step % settings.log_every == 0:
        scalars = {f"train/{k}": v for k, v in record.items() if k != "step"}
        scalars.update({f"lr/group{i}": lr for i, lr in enumerate(scheduler.get_last_lr())})
        accelerator.log(scalars, step=step)
    if settings.image_every and step % settings.image_every == 0 and images and accelerator.is_main_process:
        writer = accelerator.get_tracker("tensorboard", unwrap=True)
        for name, img in images.items():
            writer.add_image(f"train/{name}", img.detach().float().cpu().clamp(0, 1), step)
