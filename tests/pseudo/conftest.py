"""Shared helpers of the pseudo-label tests: run the generator CLI in-process."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NUSCENES = REPO / "data/samples/nuscenes"
DDAD = REPO / "data/samples/ddad/test_scene"


def run_cli(kind: str, *argv: str) -> dict:
    """``scripts/generate_pseudo_{kind}.py`` argv in this process; returns the summary."""
    from selfsup.pseudo.runner import build_parser, generate

    args = build_parser(kind).parse_args([str(a) for a in argv])
    return generate(kind, args)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Folders of tiny random checkpoints: depth_anything, depth_anything_relative,
    grounding_dino, sam, mask2former, oneformer."""
    from selfsup.pseudo import random_checkpoints as tm

    root = tmp_path_factory.mktemp("tiny_models")
    return dict(
        depth_anything=tm.make_depth_anything(root / "depth_anything"),
        depth_anything_relative=tm.make_depth_anything(root / "depth_anything_relative", metric=False),
        grounding_dino=tm.make_grounding_dino(root / "grounding_dino"),
        sam=tm.make_sam(root / "sam"),
        mask2former=tm.make_mask2former(root / "mask2former"),
        oneformer=tm.make_oneformer(root / "oneformer"),
    )


@pytest.fixture(scope="session")
def nuscenes_infos(tmp_path_factory) -> Path:
    """The bundled nuScenes root's index (split "all"), walked once from the devkit tables."""
    from selfsup.data.nuscenes import build_index, open_devkit, save_index

    path = tmp_path_factory.mktemp("nus_infos") / "infos_all.pkl"
    save_index(build_index(open_devkit(str(NUSCENES), "v1.0-mini"), "all"), path)
    return path
