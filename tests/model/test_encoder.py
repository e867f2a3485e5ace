"""The timm + FPN image encoder."""

from __future__ import annotations

import pytest
import torch

from selfsup.encoders import TimmFPN


def test_pyramid_shapes_and_strides():
    enc = TimmFPN("resnet18", out_channels=16)
    feats = enc(torch.rand(2, 3, 3, 64, 96))
    assert enc.strides == (8, 16, 32)
    assert [tuple(f.shape) for f in feats] == [(2, 3, 16, 8, 12), (2, 3, 16, 4, 6), (2, 3, 16, 2, 3)]


def test_cameras_are_encoded_independently():
    enc = TimmFPN("resnet18", out_channels=8).eval()
    x = torch.rand(1, 2, 3, 64, 64)
    both = enc(x)[0]
    alone = enc(x[:, 1:])[0]
    assert torch.allclose(both[:, 1:], alone, atol=1e-5)


def test_local_pretrained_weights_load_and_missing_file_is_named(tmp_path):
    src = TimmFPN("resnet18", out_channels=8)
    path = tmp_path / "backbone.pth"
    torch.save({"state_dict": src.backbone.state_dict()}, path)
    dst = TimmFPN("resnet18", out_channels=8, pretrained_path=str(path))
    for (name, a), b in zip(src.backbone.state_dict().items(), dst.backbone.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        TimmFPN("resnet18", out_channels=8, pretrained_path=str(tmp_path / "nope.pth"))
