"""Atomic writes leave complete files with normal permissions, and nothing on failure."""

from __future__ import annotations

import json
import os
import stat

import pytest

from selfsup.io import atomic_path, atomic_write_bytes, atomic_write_text


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_written_files_are_readable_by_others(tmp_path, umask_022):
    atomic_write_text(tmp_path / "a" / "config.json", json.dumps({"x": 1}))
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    with atomic_path(tmp_path / "c.png") as tmp:
        tmp.write_bytes(b"png")
    for name in ("a/config.json", "b.bin", "c.png"):
        assert mode(tmp_path / name) == 0o644, (name, oct(mode(tmp_path / name)))
    assert json.loads((tmp_path / "a" / "config.json").read_text()) == {"x": 1}
    # Same as a plain open() under the same umask.
    (tmp_path / "plain").write_text("")
    assert mode(tmp_path / "plain") == mode(tmp_path / "b.bin")


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "result.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_training_and_eval_writers_use_normal_permissions(tmp_path, umask_022):
    """The config writer of the training loop and eval_iou's JSON writer go through the helper."""
    import eval_iou
    from selfsup.training.config import load_config, save_config

    cfg = load_config(os.path.join(os.path.dirname(__file__), "..", "config", "sdf_ddad_tiny.py"))
    save_config(cfg, tmp_path / "work")
    eval_iou.write_json_atomic({"IoU": float("nan")}, tmp_path / "res.json")
    written = [p for p in (tmp_path / "work").rglob("*") if p.is_file()] + [tmp_path / "res.json"]
    assert written and all(mode(p) == 0o644 for p in written), [(p.name, oct(mode(p))) for p in written]
