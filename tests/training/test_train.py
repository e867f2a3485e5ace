"""The training loop end to end on the bundled DDAD scene: checkpoints, exact resume,
NaN detection, and a 2-process CPU `accelerate launch` forming one DDP group."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import fiddle as fdl
import pytest
import torch

from selfsup.training.checkpoint import load_model_weights, read_meta, resolve_checkpoint
from selfsup.training.config import apply_overrides, config_from_json, load_config
from selfsup.training.loop import lr_factor, param_groups, train
from selfsup.training.experiment import TrainSettings
from selfsup.training.sampler import StepBatchSampler

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "config/sdf_ddad_tiny.py"
TINY = [
    "train_data.dataset.image_hw=(48,88)",
    "train_data.dataset.allow_missing_neighbours=True",  # 3 samples, so two ranks see different data
    "model.encoder.out_channels=16",
    "model.representation.resolution=(24,24,4)",
    "model.representation.feat_channels=16",
    "model.representation.plane_channels=8",
    "model.representation.hidden=16",
    "model.renderer.num_samples=12",
    "model.rays_hw=(6,8)",
    "model.hessian_points=64",
    "train.warmup_steps=2",
    "train.log_every=1",
    "train.image_every=2",
]


def tiny_config(*extra: str) -> fdl.Config:
    return apply_overrides(load_config(CONFIG), [*TINY, *extra])


def test_sampler_is_a_pure_function_of_step():
    full = list(StepBatchSampler(5, 2, steps=6, seed=3))
    resumed = list(StepBatchSampler(5, 2, steps=6, start_step=4, seed=3))
    assert resumed == full[4:]
    # every epoch of 5 samples is a permutation: no sample dropped or repeated
    flat = [i for batch in full for i in batch]
    assert sorted(flat[:5]) == list(range(5)) and sorted(flat[5:10]) == list(range(5))


def test_sampler_shards_processes_without_overlap():
    ranks = [list(StepBatchSampler(8, 2, steps=2, num_processes=2, rank=r, seed=0)) for r in range(2)]
    seen = [i for r in ranks for batch in r for i in batch]
    assert sorted(seen) == list(range(8))


def test_lr_schedule_warmup_and_cosine():
    s = TrainSettings(steps=110, lr=1.0, warmup_steps=10, warmup_start_ratio=0.0, min_lr_ratio=0.0)
    assert lr_factor(0, s) == 0.0 and lr_factor(5, s) == pytest.approx(0.5)
    assert lr_factor(10, s) == pytest.approx(1.0)
    assert lr_factor(60, s) == pytest.approx(0.5)
    assert lr_factor(110, s) == pytest.approx(0.0, abs=1e-12)


def test_backbone_and_prefixed_parameters_get_their_own_learning_rates():
    exp = fdl.build(tiny_config("model.train_encoder=True"))
    groups = param_groups(exp.model, lr=1e-3, backbone_lr_mult=0.1, weight_decay=0.01,
                          lr_mults={"representation.decoder.": 0.5})
    by_name = {g["name"]: g for g in groups}
    assert by_name["backbone"]["lr"] == pytest.approx(1e-4)
    assert by_name["representation.decoder."]["lr"] == pytest.approx(5e-4)
    n_backbone = sum(p.numel() for p in exp.model.encoder.backbone.parameters())
    assert sum(p.numel() for p in by_name["backbone"]["params"]) == n_backbone
    n_decoder = sum(p.numel() for p in exp.model.representation.decoder.parameters())
    assert sum(p.numel() for p in by_name["representation.decoder."]["params"]) == n_decoder
    # The demo's frozen encoder has no trainable parameter, hence no backbone group.
    frozen = param_groups(fdl.build(tiny_config()).model, lr=1e-3, backbone_lr_mult=0.1, weight_decay=0.01)
    assert "backbone" not in {g["name"] for g in frozen}


def test_threads_follow_the_cores_per_process(monkeypatch):
    from selfsup.training.launch import configure_cpu_threads, cpu_threads_per_process

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what accelerate launch exports on CPU
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
        cores = cpu_threads_per_process()
        assert configure_cpu_threads() == cores and torch.get_num_threads() == cores
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(2 * cores))  # more processes than cores
        assert cpu_threads_per_process() == 1
        with pytest.raises(ValueError, match="num_threads"):
            configure_cpu_threads(0)
    finally:
        torch.set_num_threads(before)


def test_flush_denormals_zeroes_denormal_results_and_can_be_undone():
    from selfsup.training.launch import flush_denormals

    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("flush-to-zero is an x86 (SSE3) feature")
    tiny = torch.tensor([1e-30], dtype=torch.float32)
    try:
        assert flush_denormals(True)  # every x86_64 CPU has SSE3
        assert (tiny * 1e-10).item() == 0.0  # 1e-40 is a float32 denormal
    finally:
        assert not flush_denormals(False)
    assert (tiny * 1e-10).item() > 0.0


def test_resume_continues_exactly(tmp_path):
    straight = train(tiny_config("train.steps=4", "train.ckpt_every=2", "train.keep_last=5", "train.ema_decay=0.9"),
                     tmp_path / "a")
    ckpt = resolve_checkpoint(tmp_path / "a" / "checkpoints" / "step_0000002")
    # resume in another folder from the step-2 checkpoint
    resumed = train(tiny_config("train.steps=4", "train.ckpt_every=2", "train.ema_decay=0.9"), tmp_path / "b",
                    resume_from=str(ckpt))
    a = [r["loss"] for r in straight["history"][2:]]
    b = [r["loss"] for r in resumed["history"]]
    assert [r["step"] for r in resumed["history"]] == [3, 4]
    assert a == b  # bit-exact: same data order, RNG, optimizer, scheduler and EMA state
    wa = torch.load(tmp_path / "a/checkpoints/step_0000004/custom_checkpoint_2.pkl", weights_only=True)
    wb = torch.load(tmp_path / "b/checkpoints/step_0000004/custom_checkpoint_2.pkl", weights_only=True)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_checkpoint_holds_config_and_loads_for_eval(tmp_path):
    cfg = tiny_config("train.steps=1")
    train(cfg, tmp_path)
    ckpt = resolve_checkpoint(tmp_path)  # via checkpoints/latest
    meta = read_meta(ckpt)
    assert meta["step"] == 1
    assert config_from_json(meta["config_json"]) == cfg
    assert (tmp_path / "config.json").is_file() and (tmp_path / "config.txt").is_file()
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))
    model = fdl.build(cfg).model
    load_model_weights(model, ckpt, use_ema=False)
    saved = __import__("safetensors.torch", fromlist=["load_file"]).load_file(str(ckpt / "model.safetensors"))
    name, value = next(iter(saved.items()))
    assert torch.equal(model.state_dict()[name], value)


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="incomplete or missing"):
        resolve_checkpoint(tmp_path / "nothing")


def test_non_finite_loss_stops_with_a_clear_error(tmp_path):
    cfg = tiny_config("train.steps=2", "train.lr=1e30", "train.warmup_steps=0", "train.grad_clip=0")
    with pytest.raises(FloatingPointError, match="non-finite loss .* at step"):
        train(cfg, tmp_path)


def test_accelerate_launch_two_cpu_processes_form_one_ddp_group(tmp_path):
    accelerate = Path(sys.executable).parent / "accelerate"
    cmd = [str(accelerate), "launch", "--num_processes", "2", "train.py", "--py-config", str(CONFIG),
           "--work-dir", str(tmp_path), "--set", *TINY, "train.steps=2"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    summaries = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 2, out.stdout[-2000:]  # both ranks ran ...
    assert all(s["num_processes"] == 2 and s["distributed_type"] == "MULTI_CPU" for s in summaries)  # ... in one group
    assert resolve_checkpoint(tmp_path).name == "step_0000002"


def test_lines_of_two_processes_sharing_stdout_do_not_interleave():
    # the DDP launch test once read two ranks' summaries run together on one line
    code = ("import json, sys, time; from selfsup.training.launch import print_line_atomic\n"
            "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"  # both start writing together
            "for i in range(2000): print_line_atomic(json.dumps({'rank': sys.argv[1], 'i': i, 'pad': 'x' * 2000}))\n")
    script = ("import subprocess, sys, time; t = str(time.time() + 5)\n"
              f"ps = [subprocess.Popen([sys.executable, '-c', {code!r}, str(r), t]) for r in (0, 1)]; [p.wait() for p in ps]")
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert len(lines) == 4000
    rows = [json.loads(line) for line in lines]
    assert sorted((r["rank"], r["i"]) for r in rows) == sorted((str(k), i) for k in (0, 1) for i in range(2000))
