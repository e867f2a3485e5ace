"""`import timm` and the accelerate CLI work on this install (torchvision's C ops may not load)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_timm_imports_in_a_fresh_interpreter():
    out = subprocess.run([sys.executable, "-c", "import timm, torchvision; print(timm.__version__)"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def test_accelerate_cli_starts():
    accelerate = Path(sys.executable).parent / "accelerate"
    out = subprocess.run([str(accelerate), "launch", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "--num_processes" in out.stdout


def test_hook_does_not_import_selfsup_at_startup():
    out = subprocess.run([sys.executable, "-c", "import sys; print('selfsup' in sys.modules)"],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False"


def test_nms_reference_matches_greedy_rule():
    import torch

    from selfsup.compat.torchvision_ops import _nms_reference

    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    keep = _nms_reference(boxes, scores, 0.5)
    # box 3 (0.95) suppresses 0 (IoU 0.9) and 1 (IoU ~0.62); box 2 is disjoint.
    assert keep.tolist() == [3, 2]
