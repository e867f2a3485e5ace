"""Build an experiment for evaluation: config + overrides + checkpoint weights."""

from __future__ import annotations

import argparse

import fiddle as fdl
import torch
from accelerate.utils import set_seed

from selfsup.training.checkpoint import load_model_weights
from selfsup.training.config import apply_overrides, load_config
from selfsup.training.experiment import Experiment
from selfsup.training.launch import flush_denormals


def add_model_args(parser: argparse.ArgumentParser, checkpoint_required: bool = False) -> None:
    """The arguments every evaluation script shares."""
    parser.add_argument("--py-config", required=True, help="the training config file")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE", help="dotted overrides")
    group = parser.add_mutually_exclusive_group(required=checkpoint_required)
    group.add_argument("--resume-from", default=None, help="checkpoint folder or a training work dir")
    group.add_argument("--init", action="store_true", help="evaluate the untrained model (the run's initial state)")
    parser.add_argument("--no-ema", action="store_true", help="use the raw weights even when the run kept an EMA")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def build_for_eval(args: argparse.Namespace) -> Experiment:
    """Build the config's experiment with the training seed (so ``--init`` reproduces the
    run's initial weights) and its denormal setting, load the checkpoint's weights, move the
    model to the device.

    Raises:
        SystemExit: neither ``--resume-from`` nor ``--init`` was given.
    """
    if not args.resume_from and not args.init:
        raise SystemExit("give --resume-from CKPT (a checkpoint or work dir) or --init (untrained model)")
    cfg = apply_overrides(load_config(args.py_config), args.overrides)
    settings = fdl.build(cfg.train)
    flush_denormals(settings.flush_denormal)
    set_seed(settings.seed)
    exp: Experiment = fdl.build(cfg)
    if args.resume_from:
        load_model_weights(exp.model, args.resume_from, use_ema=not args.no_ema)
    exp.model.to(args.device).eval()
    return exp
