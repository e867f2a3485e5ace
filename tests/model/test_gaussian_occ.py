"""GaussianOcc: rendering under ego motion with hand-built poses, and a tiny forward /
backward / predict pass on the bundled real DDAD scene."""

from __future__ import annotations

import math

import pytest
import torch

from selfsup.data.ddad import DDADFrames
from selfsup.data.frames import Frames, collate_frames
from selfsup.encoders import TimmFPN
from selfsup.camera import scale_intrinsics
from selfsup.models.gaussian_occ import GaussianOcc, splat
from selfsup.representations.gaussians import GaussianDecoder, GaussianFlow, Gaussians

CAM_TO_EGO = torch.tensor(
    [[0.0, 0.0, 1.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 1.5], [0.0, 0.0, 0.0, 1.0]]
)  # forward-looking camera 1.5 m above the ego origin
K = torch.tensor([[40.0, 0.0, 24.0], [0.0, 40.0, 16.0], [0.0, 0.0, 1.0]])  # 48 x 32 image
HW = (32, 48)


def yaw_pose(x: float, y: float, yaw: float) -> torch.Tensor:
    c, s = math.cos(yaw), math.sin(yaw)
    T = torch.eye(4)
    T[:2, :2] = torch.tensor([[c, -s], [s, c]])
    T[0, 3], T[1, 3] = x, y
    return T


def hand_frames(T_global_ego: torch.Tensor, points: torch.Tensor | None = None) -> Frames:
    """One camera, T frames with the given ego poses (a batch of 1)."""
    t = T_global_ego.shape[0]
    pts = points if points is not None else torch.zeros(0, 3)
    return collate_frames(
        [
            Frames(
                images=torch.rand(t, 1, 3, *HW),
                K=K.expand(t, 1, 3, 3).clone(),
                T_ego_cam=CAM_TO_EGO.expand(t, 1, 4, 4).clone(),
                T_global_ego=T_global_ego,
                timestamps=torch.arange(t, dtype=torch.float64) * 0.5,
                frame_offsets=torch.arange(t),
                valid_masks=torch.ones(1, *HW, dtype=torch.bool),
                points_ego=[pts for _ in range(t)],
            )
        ]
    )


def point_gaussian(xyz, label: int = 15) -> Gaussians:
    sem = torch.full((1, 17), -4.0)
    sem[0, label] = 4.0
    return Gaussians(
        means=torch.tensor([xyz]), quats=torch.tensor([[1.0, 0, 0, 0]]), scales=torch.full((1, 3), 0.05),
        opacities=torch.tensor([0.99]), semantics=sem, features=torch.zeros(1, 4),
    )  # fmt: skip


def peak_pixel(alpha: torch.Tensor) -> tuple[int, int]:
    flat = int(alpha.argmax())
    return flat // alpha.shape[-1], flat % alpha.shape[-1]


def test_static_gaussian_renders_where_the_moved_camera_sees_it():
    """The Gaussian lives in the ego frame of frame 0; frame 1's camera is reached through
    the poses only (T_ego0_cam), so the splat must land on the hand-projected pixel."""
    pose1 = yaw_pose(2.0, 0.5, 0.1)  # the car moved 2 m forward, 0.5 m left, turned 0.1 rad
    batch = hand_frames(torch.stack([torch.eye(4), pose1]))
    world = torch.tensor([12.0, 1.0, 1.0, 1.0])  # in ego0 = global here
    g = point_gaussian(world[:3].tolist())
    out = splat(g, g.semantics, batch.T_ego0_cam()[0, 1], K[None], *HW, backend="torch")
    p_cam = torch.linalg.inv(pose1 @ CAM_TO_EGO) @ world
    u, v = (K @ p_cam[:3])[:2] / p_cam[2]
    assert peak_pixel(out.alpha[0]) == (int(v), int(u))
    assert out.depth[0][int(v), int(u)] == pytest.approx(float(p_cam[2]), abs=1e-3)
    # Rendering with frame 0's camera instead gives a pixel more than 3 px away.
    out0 = splat(g, g.semantics, batch.T_ego0_cam()[0, 0], K[None], *HW, backend="torch")
    (v0, u0), (v1, u1) = peak_pixel(out0.alpha[0]), peak_pixel(out.alpha[0])
    assert abs(u0 - u1) + abs(v0 - v1) > 3


def test_scale_intrinsics_maps_pixel_edges():
    Ks = scale_intrinsics(K, (32, 48), (16, 12))
    torch.testing.assert_close(Ks, torch.tensor([[10.0, 0, 6.0], [0, 20.0, 8.0], [0, 0, 1]]))


def tiny_model(**kw) -> GaussianOcc:
    encoder = TimmFPN("resnet18", out_channels=16)
    decoder = GaussianDecoder(
        num_gaussians=64, embed_dims=16, feat_channels=16, num_blocks=1, num_points=2, num_heads=2,
        num_inducing=4, scale_range=(0.2, 2.0), with_color=kw.pop("with_color", False),
    )  # fmt: skip
    flow = GaussianFlow(embed_dims=16, hidden_dims=16, num_layers=2)
    return GaussianOcc(encoder, decoder, flow, render_hw=(14, 24), backend="torch", **kw)


@pytest.fixture(scope="module")
def ddad_batch(samples_root) -> Frames:
    ds = DDADFrames(
        str(samples_root / "ddad" / "test_scene"), scene="scene_02", cameras=("CAMERA_01", "CAMERA_05"),
        image_hw=(56, 96),
    )  # fmt: skip
    return collate_frames([ds[0]])


@pytest.fixture(scope="module")
def trained_step(ddad_batch):
    """One forward / backward of a tiny model with every loss term switched on."""
    torch.manual_seed(0)
    model = tiny_model(with_color=True, loss_weights={"rgb": 1.0, "flow_reg": 0.1})
    with torch.no_grad():  # a non-zero flow, so its regulariser has a gradient
        model.flow.mlp[-1].bias.fill_(0.1)
    labels = torch.randint(0, 17, ddad_batch.images.shape[:3] + ddad_batch.images.shape[-2:])
    labels[..., :10, :] = 255  # unlabelled rows
    # A dataset with pseudo labels would provide this field; Frames does not have it yet.
    ddad_batch.semantic_maps = labels
    try:
        out = model(ddad_batch)
    finally:
        del ddad_batch.semantic_maps
    out.loss.backward()
    return model, out


def test_forward_backward_on_ddad(trained_step):
    model, out = trained_step
    assert torch.isfinite(out.loss) and out.loss > 0
    for name in ("loss/depth", "loss/semantic", "loss/rgb", "loss/flow_reg"):
        assert out.terms[name] > 0, name
    assert 0 < out.terms["stats/depth_abs_rel"] < 10
    assert out.images["depth"].shape == (3, 14, 24)
    grads = {
        "encoder": model.encoder.backbone.conv1.weight.grad,
        "opacity": model.decoder.opacity_head[-1].weight.grad,
        "scale": model.decoder.scale_head[-1].weight.grad,
        "rotation": model.decoder.rotation_head[-1].weight.grad,
        "semantic": model.decoder.semantic_head[-1].weight.grad,
        "colour": model.decoder.color_head[-1].weight.grad,
        "positions": model.decoder.initial_means.grad,
        "flow": model.flow.mlp[-1].bias.grad,
    }
    for name, grad in grads.items():
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_predict_occupancy_and_render_depth(trained_step, ddad_batch):
    model, _ = trained_step
    occ = model.predict_occupancy(model.encode(ddad_batch)).labels
    assert occ.shape == (1, 200, 200, 16) and occ.dtype == torch.uint8
    assert occ.max() <= 17 and (occ[..., 11:] == 17).all() and (occ != 17).any()
    K_small = scale_intrinsics(ddad_batch.K[:, 0], (56, 96), (14, 24))
    depth = model.render_depth(ddad_batch, K_small, ddad_batch.T_ego_cam[:, 0], 14, 24)
    assert depth.shape == (1, 2, 14, 24) and (depth >= 0).all() and torch.isfinite(depth).all()
    assert (depth > 0).any()


def test_lidar_depth_needs_a_neighbour_or_the_current_frame():
    batch = hand_frames(torch.eye(4)[None], points=torch.tensor([[10.0, 0.0, 1.0]]))
    with pytest.raises(ValueError, match="neighbour"):
        tiny_model()(batch)
    out = tiny_model(supervise_current_depth=True)(batch)
    assert torch.isfinite(out.loss)


def test_rejects_bad_configuration():
    with pytest.raises(ValueError, match="loss_weights"):
        tiny_model(loss_weights={"eikonal": 1.0})
    with pytest.raises(ValueError, match="depth_source"):
        tiny_model(depth_source="stereo")
    with pytest.raises(ValueError, match=">= 0"):
        tiny_model(loss_weights={"depth": -1.0})
    with pytest.raises(ValueError, match="depth_loss_on"):
        tiny_model(depth_loss_on="median")


def test_flow_moves_only_dynamic_gaussians_and_never_the_current_frame(ddad_batch):
    """The model's training views: the current frame is rendered from the unmoved Gaussians,
    other frames move exactly the dynamic ones; the ablation switch makes every frame static."""
    from dataclasses import replace

    from selfsup.model_api import PixelGrid
    from selfsup.models.gaussian_occ import GaussianScene

    torch.manual_seed(0)
    model = tiny_model()
    model.decoder.temporal_attention = "none"  # decode the current frame only
    with torch.no_grad():
        model.flow.mlp[-1].bias.copy_(torch.tensor([1.0, 0.5, 0.0]))
        g = model.encode(ddad_batch).gaussians
    n = g.means.shape[1]
    sem = torch.full_like(g.semantics, -5.0)
    sem[:, : n // 2, 4] = 5.0  # car: dynamic
    sem[:, n // 2 :, 11] = 5.0  # driveable surface: static
    scene = GaussianScene(replace(g, semantics=sem))
    with torch.no_grad():
        views = model.training_views(scene, ddad_batch)
        B, T, V, _, H, W = ddad_batch.images.shape
        grid = PixelGrid.make((H, W), model.render_hw)
        static0 = model.render(scene, ddad_batch.K[:, 0], ddad_batch.T_ego_cam[:, 0], grid)
    assert len(views) == T == 3
    flow = torch.stack([v.extras["flow"] for v in views], dim=1)  # [B T N 3]
    assert (flow[:, 0] == 0).all()  # dt = 0: the current frame never moves
    moved = flow[:, 1:].abs().sum(-1) > 0  # [B T-1 N]
    assert moved[:, :, : n // 2].all() and not moved[:, :, n // 2 :].any()
    torch.testing.assert_close(views[0].depth, static0.depth)  # current frame: unmoved Gaussians
    # the ablation switch: no Gaussian moves, every frame renders the static Gaussians
    model.flow.enabled = False
    with torch.no_grad():
        off = model.training_views(scene, ddad_batch)
        T_ego0_cam = ddad_batch.T_ego0_cam()
        static2 = model.render(scene, ddad_batch.K[:, 2], T_ego0_cam[:, 2], grid)
    assert all((v.extras.get("flow", torch.zeros(1)) == 0).all() for v in off)
    torch.testing.assert_close(off[2].depth, static2.depth)
    assert (views[2].depth - static2.depth).abs().max() > 0  # with flow the car Gaussians moved
