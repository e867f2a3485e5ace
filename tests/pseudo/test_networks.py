"""Network backends with tiny random checkpoints of the real architectures (saved with
save_pretrained, loaded with from_pretrained(local_files_only=True)), through the CLI."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from selfsup.pseudo import storage
from selfsup.pseudo.grounded_sam import (
    VOCABULARY, assign_phrases, build_caption, fuse_masks, phrase_token_mask, phrases_and_classes,
)
from tests.pseudo.conftest import DDAD, run_cli

# one DDAD sample, two cameras, maps at 1/16 of 1216 x 1936
SMALL = ("--data-root", DDAD, "--scenes", "scene_02", "--cameras", "CAMERA_01", "CAMERA_05", "--limit", "1",
         "--out-scale", "0.0625")


def test_vocabulary_is_gaussianflowoccs():
    phrases, classes = phrases_and_classes()
    assert len(VOCABULARY) == 17 and len(phrases) == 42
    assert dict(zip(phrases, classes))["sky"] == -1 and dict(zip(phrases, classes))["traffic cone"] == 8
    assert sorted(set(classes) - {-1}) == list(range(1, 17))  # every Occ3D class but 'others'


def test_caption_tokens_and_phrase_assignment(tiny_models):
    from selfsup.pseudo.hf import import_transformers

    tok = import_transformers().AutoProcessor.from_pretrained(str(tiny_models["grounding_dino"]),
                                                              local_files_only=True).tokenizer
    phrases, _ = phrases_and_classes()
    caption, spans = build_caption(phrases)
    assert caption.endswith("tree .") and caption.startswith("sky . car . ")
    enc = tok(caption, return_offsets_mapping=True)
    assert len(enc["input_ids"]) == 88
    mask = phrase_token_mask([tuple(o) for o in enc["offset_mapping"]], spans)
    for k, p in enumerate(phrases):
        assert tok.decode([enc["input_ids"][t] for t in torch.nonzero(mask[k]).flatten()]) == p
    cone, island = phrases.index("traffic cone"), phrases.index("traffic island")
    logits = torch.full((3, 256), -10.0)
    logits[:, len(enc["input_ids"]):] = -float("inf")
    t_cone = torch.nonzero(mask[cone]).flatten()
    t_island = torch.nonzero(mask[island]).flatten()
    logits[0, t_cone[1]] = 2.0  # "cone" strongest ...
    logits[0, t_island] = 1.0  # ... "traffic island" also above the text threshold: no merge, cone wins
    logits[1, t_island[1]] = 0.5
    logits[2, t_cone] = -2.0  # below the box threshold (sigmoid 0.12)
    keep, score, phrase = assign_phrases(logits, mask)
    assert keep.tolist() == [0, 1] and phrase.tolist() == [cone, island]
    np.testing.assert_allclose(score.numpy(), torch.sigmoid(torch.tensor([2.0, 0.5])).numpy(), rtol=1e-6)


def test_fusion_rule_is_highest_score_mask():
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[0, :2] = True  # car, 0.5
    masks[1, 1:3] = True  # road, 0.7: wins the overlap row 1
    masks[2, 3, :2] = True  # sky, 0.9: unlabelled
    out = fuse_masks(masks, torch.tensor([0.5, 0.7, 0.9]), torch.tensor([4, 11, -1]))
    assert out.tolist() == [[4] * 4, [11] * 4, [11] * 4, [-1, -1, -1, -1]]
    assert fuse_masks(masks[:0], torch.zeros(0), torch.zeros(0)).eq(-1).all()


def test_depth_anything_with_lidar_alignment(tiny_models, tmp_path):
    out = tmp_path / "da"
    s = run_cli("depth", *SMALL, "--out-dir", out, "--backend", "depth_anything", "--checkpoint",
                tiny_models["depth_anything"], "--align", "lidar_median", "--batch-size", "2")
    assert s["written"] == 1 and s["failed"] == 0
    m = storage.read_manifest(out)
    assert m["backend"] == "depth_anything" and m["checkpoint_sha256"] and m["image_hw"] == [76, 121]
    st = s["backend_stats"]
    assert st["scale"]["n"] == 2 and st["absrel_raw"]["n"] == 2 and "scale_error_abs_log" in st
    # after alignment the median ratio LiDAR / stored depth at LiDAR pixels is 1 (up to 1/256 m steps)
    from selfsup.pseudo.lidar import scale_intrinsics, project_nearest
    from selfsup.pseudo.sources import DDADSource

    src = DDADSource(str(DDAD), scenes=("scene_02",), cameras=("CAMERA_01", "CAMERA_05"))
    smp = src.load(0, images=False)
    K = scale_intrinsics(smp.K, smp.src_hw, (76, 121))
    for v, cam in enumerate(src.cameras):
        d = storage.decode_depth(storage.read_png(storage.camera_path(out, smp.scene_name, smp.token, cam), np.uint16))
        lidar, _ = project_nearest(smp.points_ego, K[v], smp.T_ego_cam[v], (76, 121))
        hit = (lidar > 0) & (d > 0)
        assert abs(np.median(lidar[hit] / d[hit]) - 1) < 0.01
        assert d.shape == (76, 121) and (d > 0).all()


def test_grounded_sam_end_to_end(tiny_models, tmp_path):
    out = tmp_path / "gs"
    s = run_cli("semantic", *SMALL, "--out-dir", out, "--backend", "grounded_sam", "--checkpoint",
                tiny_models["grounding_dino"], "--sam-checkpoint", tiny_models["sam"], "--box-threshold", "0",
                "--text-threshold", "0")
    assert s["written"] == 1
    m = storage.read_manifest(out)
    assert m["backend_config"]["caption_tokens"] == 88 and m["class_names"][4] == "car"
    assert s["backend_stats"]["boxes"]["mean"] > 0  # thresholds 0 keep every query
    allowed = {c + 1 for c in phrases_and_classes()[1] if c >= 0} | {0}
    sample_dir = next((out / "scene_02").iterdir())
    for cam in ("CAMERA_01", "CAMERA_05"):
        png = storage.read_png(sample_dir / f"{cam}.png", np.uint8)
        assert png.shape == (76, 121) and set(np.unique(png)) <= allowed


def test_mask2former_label_map(tiny_models, tmp_path):
    out = tmp_path / "m2f"
    s = run_cli("semantic", *SMALL, "--out-dir", out, "--backend", "segmenter", "--checkpoint", tiny_models["mask2former"])
    assert s["written"] == 1
    cfg = storage.read_manifest(out)["backend_config"]
    assert cfg["model_type"] == "mask2former" and cfg["unmapped"] == []
    assert cfg["class_to_occ3d"]["road"] == 11 and cfg["class_to_occ3d"]["sky"] == -1
    allowed = {v + 1 for v in cfg["class_to_occ3d"].values() if v >= 0} | {0}
    png = storage.read_png(next((out / "scene_02").iterdir()) / "CAMERA_01.png", np.uint8)
    assert set(np.unique(png)) <= allowed


def test_bad_checkpoints_give_clear_errors(tiny_models, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        run_cli("depth", *SMALL, "--out-dir", tmp_path / "a", "--backend", "depth_anything",
                "--checkpoint", tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"'sam' model .*expected one of \['depth_anything'\]"):
        run_cli("depth", *SMALL, "--out-dir", tmp_path / "a", "--backend", "depth_anything",
                "--checkpoint", tiny_models["sam"])
    with pytest.raises(ValueError, match="relative"):
        run_cli("depth", *SMALL, "--out-dir", tmp_path / "a", "--backend", "depth_anything",
                "--checkpoint", tiny_models["depth_anything_relative"])
    with pytest.raises(ValueError, match="grounding-dino"):
        run_cli("semantic", *SMALL, "--out-dir", tmp_path / "a", "--backend", "grounded_sam",
                "--checkpoint", tiny_models["mask2former"], "--sam-checkpoint", tiny_models["sam"])
    with pytest.raises(ValueError, match="needs --checkpoint"):
        run_cli("semantic", *SMALL, "--out-dir", tmp_path / "a", "--backend", "segmenter")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((tiny_models["mask2former"] / "config.json").read_text())
    with pytest.raises(ValueError, match="cannot load .*broken"):
        run_cli("semantic", *SMALL, "--out-dir", tmp_path / "a", "--backend", "segmenter", "--checkpoint", broken)
    assert not (tmp_path / "a" / "manifest.json").exists()  # nothing written before the backend loads


def test_oneformer_reads_its_class_info_locally(tiny_models, tmp_path):
    ckpt = tmp_path / "oneformer"
    shutil.copytree(tiny_models["oneformer"], ckpt)
    info = tmp_path / "elsewhere" / "cityscapes_info.json"
    info.parent.mkdir()
    (ckpt / "class_info.json").rename(info)
    with pytest.raises(FileNotFoundError, match="class-info"):
        run_cli("semantic", *SMALL, "--out-dir", tmp_path / "a", "--backend", "segmenter", "--checkpoint", ckpt)
    out = tmp_path / "of"
    s = run_cli("semantic", *SMALL, "--out-dir", out, "--backend", "segmenter", "--checkpoint", ckpt,
                "--class-info", info)
    assert s["written"] == 1
    cfg = storage.read_manifest(out)["backend_config"]
    assert cfg["model_type"] == "oneformer" and cfg["class_info"] == str(info) and cfg["class_to_occ3d"]["car"] == 4
