"""SDFOcc end to end on the bundled real DDAD scene at a tiny size."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from render.volume import NeuSRenderer
from selfsup.data.ddad import DDADFrames
from selfsup.data.frames import collate_frames
from selfsup.encoders.timm_fpn import TimmFPN
from selfsup.grid import OCC3D_FREE
from selfsup.models.sdf_occ import SDFOcc
from selfsup.representations.triplane_sdf import TriplaneSDF


@pytest.fixture(scope="module")
def batch(samples_root):
    ds = DDADFrames(str(samples_root / "ddad" / "test_scene"), scene="scene_02", neighbours=(-1, 1), image_hw=(64, 112))
    return collate_frames([ds[0]])


def _model(**kw) -> SDFOcc:
    torch.manual_seed(0)
    args = dict(
        encoder=TimmFPN("resnet18", out_channels=16),
        representation=TriplaneSDF(feat_channels=16, plane_channels=8, hidden=16, resolution=(32, 32, 4)),
        renderer=NeuSRenderer(num_samples=16, backend="torch"),
        rays_hw=(6, 10),
        hessian_points=64,
    )
    args.update(kw)
    return SDFOcc(**args)


def test_forward_backward_reaches_encoder_planes_and_renderer(batch):
    model = _model()
    out = model(batch)
    assert torch.isfinite(out.loss)
    for key in ("loss/photometric", "loss/rgb", "loss/eikonal", "loss/hessian", "stats/depth", "stats/opacity"):
        assert torch.isfinite(out.terms[key]), key
    assert "loss/depth" not in out.terms and "loss/semantic" not in out.terms  # self-supervised only
    assert out.images["depth"].shape == (3, 6, 10)
    out.loss.backward()
    grads = {
        "backbone": model.encoder.backbone.conv1.weight.grad,
        "fpn": model.encoder.lateral[0].weight.grad,
        "plane": model.representation.embed["xy"].grad,
        "decoder": model.representation.decoder[0].weight.grad,
        "variance": model.renderer.variance.grad,
    }
    for name, g in grads.items():
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name


def test_lidar_depth_term(batch):
    model = _model(depth_source="lidar", loss_weights={"depth": 1.0})
    out = model(batch)
    assert torch.isfinite(out.terms["loss/depth"]) and out.terms["loss/depth"] > 0
    with pytest.raises(ValueError, match="depth_source"):
        _model(loss_weights={"depth": 1.0})
    with pytest.raises(ValueError, match="unknown loss_weights key"):
        _model(loss_weights={"photometrik": 1.0})


def test_predict_occupancy_starts_from_the_ground_prior(batch):
    model = _model().eval()
    occ = model.predict_occupancy(model.encode(batch)).labels
    assert occ.dtype == torch.uint8 and occ.shape == (1, 200, 200, 16)
    assert occ.max() <= OCC3D_FREE
    # The SDF bias puts matter below z = 0 (voxel layers 0-1 span -1.0..-0.2 m) and free
    # space above it inside the 25 m cylinder.
    inner = torch.zeros(200, 200, dtype=torch.bool)
    inner[60:140, 60:140] = True  # |x|, |y| < 16 m
    assert (occ[0, :, :, 0][inner] != OCC3D_FREE).float().mean() > 0.95
    assert (occ[0, :, :, 8][inner] == OCC3D_FREE).float().mean() > 0.95


def test_render_depth_of_the_ground_plane(batch):
    # With a silent decoder and the ground bias alone, the field is exactly z: the rendered
    # depth must match the analytic intersection of the pixel rays with the road plane.
    model = _model(
        representation=TriplaneSDF(feat_channels=16, plane_channels=8, hidden=16, resolution=(32, 32, 4),
                                   sdf_bias="ground"),
        renderer=NeuSRenderer(num_samples=256, init_variance=0.5, backend="torch"),
        far=40.0,
    ).eval()
    with torch.no_grad():
        model.representation.decoder[-1].weight.zero_()
        model.representation.decoder[-1].bias.zero_()
    h, w = 8, 14
    K = batch.K[:, 0].clone()
    K[..., :2, :] *= h / 64
    T = batch.T_ego_cam[:, 0]
    depth = model.render_depth(batch, K, T, h, w)
    assert depth.shape == (1, 6, h, w) and (depth >= 0).all()
    # Analytic: ray o + t d hits z = 0 at t = -o_z / d_z; depth = t * (z of d in the camera).
    v, u = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    pix = torch.stack([u, v, torch.ones_like(u)], dim=-1).reshape(-1, 3)
    d_cam = pix @ torch.linalg.inv(K[0, 0]).T  # front camera, z = 1
    d_ego = d_cam @ T[0, 0, :3, :3].T
    t = -T[0, 0, 2, 3] / d_ego[:, 2]  # in units of d_cam, so t is the camera depth
    ground = (t > 0) & (t < 25.0)
    assert ground.sum() > 20
    rendered = depth[0, 0].reshape(-1)[ground]
    assert torch.allclose(rendered, t[ground], rtol=0.05, atol=0.1), (rendered, t[ground])
    assert math.isfinite(float(depth.sum()))


def test_semantic_term_uses_labels_when_the_batch_has_them(batch):
    model = _model(loss_weights={"photometric": 0.0})
    labelled = dataclasses.replace(batch)
    T = batch.images.shape[1]
    labels = torch.full((1, T, 6, 64, 112), 255, dtype=torch.int16)
    labels[..., 40:, :] = 11  # bottom rows: driveable surface
    labelled.semantic_maps = labels
    out = model(labelled)
    assert torch.isfinite(out.terms["loss/semantic"]) and out.terms["loss/semantic"] > 0
    out.loss.backward()
    assert model.representation.decoder[-1].weight.grad[4:].abs().sum() > 0  # semantic rows
