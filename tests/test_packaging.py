"""Packaging: the repository puts no package named ``cuda`` (NVIDIA's namespace of
cuda-bindings / cuda.pathfinder) or other generic top-level names on ``sys.path`` or into
site-packages; the kernel sources are found by path."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from pathlib import Path

import setuptools

REPO = Path(__file__).resolve().parents[1]


def test_cuda_namespace_still_imports_after_the_project(tmp_path):
    """With the checkout first on sys.path (``python train.py``, the editable install) and a
    namespace portion ``cuda/bindings`` after it, ``import cuda.bindings`` works after
    importing every package of the project (a regular ``cuda/__init__.py`` shadowed it)."""
    portion = tmp_path / "site" / "cuda" / "bindings"
    portion.mkdir(parents=True)
    (portion / "__init__.py").write_text("VALUE = 13\n")
    code = (
        "import selfsup, selfsup.models, selfsup.evaluation, render, eval, eval.rayiou, eval.kernels\n"
        "import train, eval_iou\n"
        "import cuda.bindings\n"
        "print(cuda.bindings.VALUE, eval.kernels.kernel_source('rayiou_dvr_cpu.cpp').is_file())\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(tmp_path / "site")])}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["13", "True"]


def test_setup_installs_only_the_project_packages(monkeypatch):
    captured = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kw: captured.update(kw))
    monkeypatch.chdir(REPO)
    runpy.run_path(str(REPO / "setup.py"))
    tops = {name.split(".")[0] for name in captured["packages"]}
    assert tops == {"selfsup", "render", "eval"}, tops
    assert not {"config", "scripts", "cuda"} & set(captured["packages"])
    # The kernel sources ship inside eval (eval/_cuda), read from cuda/ in the checkout.
    assert captured["package_dir"] == {"eval._cuda": "cuda"}
    assert all(list((REPO / "cuda").glob(pattern)) for pattern in ("*.cu", "*.cpp"))
    assert not (REPO / "cuda" / "__init__.py").exists()
