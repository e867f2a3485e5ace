"""The generator run: resume, manifest checks, failures, kill -9, two processes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from selfsup.pseudo import storage
from tests.pseudo.conftest import DDAD, REPO, run_cli

LIDAR_DDAD = ("--data-root", DDAD, "--scenes", "scene_02", "--backend", "lidar", "--out-scale", "0.25")


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def test_rerun_skips_complete_samples_and_redoes_incomplete(tmp_path):
    out = tmp_path / "o"
    assert run_cli("depth", *LIDAR_DDAD, "--out-dir", out)["written"] == 3
    first = _files(out)
    assert len(first) == 18
    victim = sorted(out.rglob("CAMERA_06.png"))[1]
    victim.unlink()  # one camera of one sample missing: that sample is redone
    (victim.parent / f".{victim.name}.abc{storage.TMP_SUFFIX}").write_bytes(b"half")  # left by a killed writer
    s = run_cli("depth", *LIDAR_DDAD, "--out-dir", out)
    assert (s["written"], s["skipped"], s["failed"]) == (1, 2, 0)
    assert _files(out) == first
    assert not list(out.rglob(f"*{storage.TMP_SUFFIX}"))
    s = run_cli("depth", *LIDAR_DDAD, "--out-dir", out, "--overwrite")
    assert s["written"] == 3 and _files(out) == first  # deterministic output
    summary = storage.read_manifest(out)
    assert summary["dataset"]["scenes"] == ["scene_02"]


def test_manifest_mismatch_is_refused(tmp_path):
    out = tmp_path / "o"
    run_cli("depth", *LIDAR_DDAD, "--out-dir", out, "--limit", "1")
    with pytest.raises(ValueError, match="'backend_config' is"):
        run_cli("depth", *LIDAR_DDAD, "--out-dir", out, "--accumulate", "1")
    with pytest.raises(ValueError, match="'image_hw' is"):
        run_cli("depth", *LIDAR_DDAD[:-1], "0.5", "--out-dir", out)
    s = run_cli("depth", *LIDAR_DDAD, "--out-dir", out, "--accumulate", "1", "--overwrite")
    assert s["written"] == 3 and storage.read_manifest(out)["backend_config"]["accumulate"] == 1


def _scene_with_corrupt_image(tmp_path) -> Path:
    """A copy of the DDAD root (symlinks) whose scene_02 middle sample has a corrupt CAMERA_01 JPEG."""
    root = tmp_path / "ddad"
    scene = root / "scene_02"
    scene.mkdir(parents=True)
    src = DDAD / "scene_02"
    for p in src.iterdir():
        if p.name != "rgb":
            (scene / p.name).symlink_to(p)
    for cam in (src / "rgb").iterdir():
        (scene / "rgb" / cam.name).mkdir(parents=True)
        for j, img in enumerate(sorted(cam.iterdir())):
            if cam.name == "CAMERA_01" and j == 1:
                (scene / "rgb" / cam.name / img.name).write_bytes(img.read_bytes()[:2000])  # truncated JPEG
            else:
                (scene / "rgb" / cam.name / img.name).symlink_to(img)
    return root


def test_corrupt_image_fails_clearly_or_is_counted_with_keep_going(tiny_models, tmp_path):
    root = _scene_with_corrupt_image(tmp_path)
    args = ("--data-root", root, "--scenes", "scene_02", "--cameras", "CAMERA_01", "--out-scale", "0.0625",
            "--backend", "depth_anything", "--checkpoint", tiny_models["depth_anything"])
    with pytest.raises(RuntimeError, match=r"sample 1 .*CAMERA_01.*15616458250936520\.jpg.*--keep-going"):
        run_cli("depth", *args, "--out-dir", tmp_path / "a")
    s = run_cli("depth", *args, "--out-dir", tmp_path / "b", "--keep-going")
    assert (s["written"], s["skipped"], s["failed"]) == (2, 0, 1)
    assert "15616458250936520.jpg" in s["failures"][0]["error"]
    assert len(list((tmp_path / "b").rglob("*.png"))) == 2
    import json

    assert json.loads((tmp_path / "b" / "summary.json").read_text())["failed"] == 1
    from selfsup.pseudo.runner import main

    assert main("depth", [str(a) for a in args] + ["--out-dir", str(tmp_path / "b"), "--keep-going"]) == 2


def _cli(*argv, launcher=()) -> list[str]:
    return [*launcher, str(REPO / "scripts/generate_pseudo_depth.py"), *[str(a) for a in argv]]


def _env():
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")


@pytest.mark.slow
def test_kill_9_then_rerun_loses_and_duplicates_nothing(tmp_path):
    ref = tmp_path / "ref"
    run_cli("depth", *LIDAR_DDAD, "--out-dir", ref, "--accumulate", "1")
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, *_cli(*LIDAR_DDAD, "--out-dir", out, "--accumulate", "1")], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not list(out.rglob("*.png")):
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)  # mid-run: the first files exist, the run is not done
    proc.wait()
    partial = _files(out)
    assert 0 < len(partial) < 18, len(partial)
    for name, data in partial.items():  # every file under a final name is complete and correct
        assert data == _files(ref)[name], name
    s = run_cli("depth", *LIDAR_DDAD, "--out-dir", out, "--accumulate", "1")
    assert s["written"] + s["skipped"] == 3 and s["written"] >= 1 and s["failed"] == 0
    assert _files(out) == _files(ref)
    assert not list(out.rglob(f"*{storage.TMP_SUFFIX}"))


@pytest.mark.slow
def test_two_processes_write_what_one_writes(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    run_cli("depth", *LIDAR_DDAD, "--out-dir", one)
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    res = subprocess.run(_cli(*LIDAR_DDAD, "--out-dir", two, launcher=(accelerate, "launch", "--num_processes", "2")),
                         env=_env(), capture_output=True, text=True, timeout=300)
    clues = [ln for ln in res.stderr.splitlines() if any(k in ln for k in ("rror", "terminate", "what()", "Abort"))]
    assert res.returncode == 0, "\n".join(clues[:30]) + "\n...\n" + res.stderr[-2000:]
    import json

    summary = json.loads((two / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["written"] == 3 and summary["skipped"] == 0
    assert "[1/2]" in res.stderr and "[0/2]" in res.stderr  # both shards ran
    assert _files(two) == _files(one)
    m1, m2 = storage.read_manifest(one), storage.read_manifest(two)
    assert {k: v for k, v in m1.items() if k != "code_version"} == {k: v for k, v in m2.items() if k != "code_version"}
