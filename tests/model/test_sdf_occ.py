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


@pytest.mark.slow
def test_grid_field_trains_without_double_backward_and_matches_the_decoder(batch):
    model = _model(field_resolution=(32, 32, 8))
    model.train()
    out = model(batch)
    out.loss.backward()
    assert {"loss/photometric", "loss/rgb", "loss/eikonal", "loss/hessian"} <= set(out.terms)
    assert model.representation.embed["xy"].grad.abs().sum() > 0
    assert model.representation.decoder[0].weight.grad.abs().sum() > 0
    # Decoded on the Occ3D grid itself, grid lookups at voxel centres are the decoder's values.
    exact = _model(field_resolution=(200, 200, 16)).eval()
    per_point = _model().eval()
    with torch.no_grad():
        a = exact.predict_occupancy(exact.encode(batch)).labels
        b = per_point.predict_occupancy(per_point.encode(batch)).labels
    assert (a == b).float().mean() > 0.999


def test_frozen_encoder_gets_no_gradient_and_evaluates_like_training(batch):
    model = _model(train_encoder=False, field_resolution=(32, 32, 8))
    model.train()
    model(batch).loss.backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert model.representation.embed["xy"].grad is not None
    with torch.no_grad():
        train_planes = model.encode(batch).planes
        model.eval()
        eval_planes = model.encode(batch).planes
    assert torch.equal(train_planes.xy, eval_planes.xy)


def test_depth_search_term_strided_rays_and_cos_anneal(batch):
    model = _model(
        field_resolution=(32, 32, 8), search_candidates=8, search_patch=3, ray_sampling="strided",
        cos_anneal_steps=10, loss_weights=dict(search=0.5),
    )
    model.train()
    small = dataclasses.replace(batch, images=batch.images[:, :, :2], K=batch.K[:, :, :2],
                                T_ego_cam=batch.T_ego_cam[:, :, :2], valid_masks=batch.valid_masks[:, :2],
                                camera_names=batch.camera_names[:2])
    out = model(small)
    assert out.terms["loss/search"] > 0 and 0 < out.terms["stats/search_confident"] <= 1
    assert model.renderer.cos_anneal_ratio == 0.0 and int(model.train_step) == 1
    model(small)
    assert model.renderer.cos_anneal_ratio == pytest.approx(0.1)


@pytest.mark.slow
def test_trains_with_pseudo_depth(batch):
    """depth_source='pseudo' (as the Gaussian model has it): the L1 depth term reads
    ``Frames.depth_maps`` at each ray's pixel, and a few steps on it lower it."""
    from selfsup.model_api import PixelGrid, RenderedViews
    from selfsup.objectives import depth_target

    B, T, V, _, H, W = batch.images.shape
    rows = torch.arange(H, dtype=torch.float32)[:, None].expand(H, W)
    pseudo = dataclasses.replace(batch, depth_maps=(4.0 + 0.1 * rows).expand(B, T, V, H, W).clone())
    # The target of a ray is the map value of the pixel that contains it.
    grid = PixelGrid.make((H, W), (6, 10), jitter=True)
    views = RenderedViews(
        depth=torch.zeros(B, V, 60), opacity=torch.zeros(B, V, 60), pixels=grid.pixels.expand(B, V, -1, -1),
        image_hw=(H, W), grid_hw=(6, 10),
    )
    target = depth_target(views, pseudo, "pseudo")
    torch.testing.assert_close(target[0, 0], 4.0 + 0.1 * grid.pixels[:, 1].floor())

    with pytest.raises(ValueError, match="depth_source"):
        _model(loss_weights={"depth": 1.0})
    model = _model(depth_source="pseudo", loss_weights={"depth": 1.0, "photometric": 0.0, "rgb": 0.0})
    with pytest.raises(ValueError, match="depth_maps"):
        model(batch)
    def held_out_depth_loss() -> float:  # deterministic: no jitter, no sample perturbation
        model.eval()
        with torch.no_grad():
            value = float(model(pseudo).terms["loss/depth"])
        model.train()
        return value

    before = held_out_depth_loss()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(8):
        out = model(pseudo)
        assert math.isfinite(float(out.terms["loss/depth"])) and out.terms["loss/depth"] > 0
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    after = held_out_depth_loss()
    assert after < 0.95 * before, (before, after)  # measured: 6.97 -> 6.16 m


def _silent(model: SDFOcc) -> SDFOcc:
    """The decoder's SDF output zeroed: the field is the analytic bias alone."""
    with torch.no_grad():
        model.representation.decoder[-1].weight[0].zero_()
        model.representation.decoder[-1].bias[0].zero_()
    return model


def _ground_model(far: float = 40.0, **kw) -> SDFOcc:
    rep = TriplaneSDF(feat_channels=16, plane_channels=8, hidden=16, resolution=(32, 32, 4), sdf_bias="ground")
    return _silent(_model(representation=rep, renderer=NeuSRenderer(num_samples=256, init_variance=0.5, backend="torch"),
                          far=far, **kw)).eval()


def _small_cameras(batch, h: int = 8, w: int = 14):
    """Intrinsics, camera poses and an unjittered pixel grid of the current frame's cameras
    at h x w (the fixture's images are 64 pixels high)."""
    from selfsup.model_api import PixelGrid

    K = batch.K[:, 0].clone()
    K[..., :2, :] *= h / 64
    return K, batch.T_ego_cam[:, 0], PixelGrid.make((h, w), (h, w), jitter=False)


def test_box_exit_background_puts_the_leftover_transmittance_where_the_ray_leaves(batch):
    # Ground-only field: a ray that misses the road leaves the +-40 m x [-1, 5.4] m box with
    # all its transmittance; "box_exit" then renders the exit distance (SelfOcc's
    # normalisation would render a meaningless weighted mean of near-zero weights).
    model = _ground_model(background="box_exit")
    K, T, grid = _small_cameras(batch)
    with torch.no_grad():
        views = model.render(model.encode(batch), K, T, grid)
    ray_far = views.extras["ray_far"]
    sky = views.opacity < 0.01  # each free interval has opacity ~1e-5 (neus_alpha)
    ground = views.opacity > 0.999
    assert sky.sum() > 10 and ground.sum() > 10
    torch.testing.assert_close(views.extras["dist"][sky], ray_far[sky], rtol=0.01, atol=0.01)
    # Every ray's weights, the background's included, sum to 1 and the exit sample lies on
    # the box boundary (or at `far`).
    torch.testing.assert_close(views.sample_weights.sum(-1), torch.ones_like(views.opacity), rtol=0, atol=1e-4)
    exit_pts = views.sample_points[..., -1, :][sky]
    lower, upper = model.representation.grid.box()
    on_face = ((exit_pts - lower).abs() < 1e-3) | ((exit_pts - upper).abs() < 1e-3)
    at_far = (ray_far[sky] - model.far).abs() < 1e-3
    assert (on_face.any(-1) | at_far).all()
    # Where the ray hits the road, the background changes nothing.
    plain = _ground_model()
    with torch.no_grad():
        ref = plain.render(plain.encode(batch), K, T, grid)
    torch.testing.assert_close(views.depth[ground], ref.depth[ground], rtol=1e-3, atol=1e-3)
    # "horizon": rays leaving through a side of the box go on to `far`; through the top
    # they stop at the box as before.
    wide = _ground_model(background="horizon", far=60.0)
    with torch.no_grad():
        hv = wide.render(wide.encode(batch), K, T, grid)
    dirs_up = views.sample_points[..., -1, 2] > 5.39  # exit point on the top face
    torch.testing.assert_close(hv.extras["dist"][sky & dirs_up], views.extras["dist"][sky & dirs_up])
    side = sky & ~dirs_up
    assert side.sum() > 0
    torch.testing.assert_close(hv.extras["dist"][side], torch.full_like(hv.extras["dist"][side], wide.far),
                               rtol=0.01, atol=0.01)
    with pytest.raises(Exception, match="background"):  # the annotation's check or ours
        _model(background="sphere")


def test_learned_background_shares_the_leftover_among_bins_beyond_the_exit(batch):
    # Ground-only field, "learned" background with equal logits: a sky ray renders the mean
    # of its bins, which run uniformly in inverse distance from the box exit to
    # background_far; the road is untouched.
    model = _ground_model(background="learned", background_bins=4, background_far=100.0, background_map_hw=(4, 8))
    K, T, grid = _small_cameras(batch)
    scene = model.encode(batch)
    with torch.no_grad():
        views = model.render(scene, K, T, grid)
        ref = _ground_model(background="box_exit").render(scene, K, T, grid)
    sky = views.opacity < 0.01
    ground = views.opacity > 0.999
    assert sky.sum() > 10 and ground.sum() > 10
    t_exit = views.extras["ray_far"][sky]
    t1 = torch.maximum(torch.full_like(t_exit, 100.0), t_exit)
    u = torch.tensor([0.0, 1 / 3, 2 / 3, 1.0])
    expected = (1.0 / ((1 - u) / t_exit[:, None] + u / t1[:, None])).mean(-1)
    torch.testing.assert_close(views.extras["dist"][sky], expected, rtol=0.01, atol=0.01)
    torch.testing.assert_close(views.depth[ground], ref.depth[ground], rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(views.sample_weights.sum(-1), torch.ones_like(views.opacity), rtol=0, atol=1e-4)
    assert views.sample_points.shape[-2] == ref.sample_points.shape[-2] + 3
    # The four bin samples of a sky ray lie on the ray at those distances.
    o = views.sample_points[..., -4:, :][sky]
    assert torch.all(o.diff(dim=-2).norm(dim=-1) > 0)
    # Logits favouring the farthest bin everywhere push sky rays towards background_far,
    # and the photometric-style gradient reaches the logits through the weights only.
    with torch.no_grad():
        model.background_logits[:, -1] = 20.0
        far_views = model.render(scene, K, T, grid)
    torch.testing.assert_close(far_views.extras["dist"][sky], t1, rtol=0.01, atol=0.01)
    model.background_logits.grad = None
    model.render(scene, K, T, grid).sample_weights[..., -4:].mul(torch.arange(4.0)).sum().backward()
    assert model.background_logits.grad is not None and model.background_logits.grad.abs().sum() > 0
    # Azimuth wraps: directions just either side of -x read the same logits.
    with torch.no_grad():
        model.background_logits.normal_()
        eps = 1e-4
        d = torch.tensor([[math.cos(math.pi - eps), math.sin(math.pi - eps), 0.1],
                          [math.cos(math.pi - eps), -math.sin(math.pi - eps), 0.1]]).reshape(1, 1, 2, 3)
        _, share = model._background_bins(d, torch.full((1, 1, 2), 40.0))
    torch.testing.assert_close(share[0, 0, 0], share[0, 0, 1], rtol=1e-3, atol=1e-4)
    with pytest.raises(ValueError, match="background_bins"):
        _model(background="learned", background_bins=1)


def test_free_space_loss_is_zero_for_a_true_sdf_and_penalises_matter_the_ray_passes():
    from render.volume import neus_alpha, weights_from_alpha
    from selfsup.losses import free_space_loss

    t = torch.linspace(0.05, 19.95, 200)[None]
    deltas = torch.full_like(t, 0.1)
    for s in (0.5, 3.0, 40.0):
        inv_s = torch.tensor(s)
        # A wall at 10 m seen head-on from far outside the kernel: f = 10 - t.
        wall = 10.0 - t
        w, _ = weights_from_alpha(neus_alpha(wall, -torch.ones_like(t), deltas, inv_s), backend="torch")
        assert float(free_space_loss(wall, w)) < 0.02, s
        # The same wall with the camera "inside" (f = -1 - t: negative everywhere). With a
        # wide kernel NeuS still stops the ray gradually (the SDF decreases) and every sample
        # it passes is matter; with a sharp one (s f << 0) the first sample is opaque.
        inside = -1.0 - t
        w, _ = weights_from_alpha(neus_alpha(inside, -torch.ones_like(t), deltas, inv_s), backend="torch")
        if s < 10:
            assert float(free_space_loss(inside, w)) > 1.0, s
        else:
            assert float(w[0, 0]) > 0.99, s
    sdf = torch.tensor([[-2.0, 1.0, -4.0]], requires_grad=True)
    loss = free_space_loss(sdf, torch.tensor([[0.0, 0.0, 1.0]]))
    loss.backward()
    torch.testing.assert_close(sdf.grad, torch.tensor([[-0.5, 0.0, 0.0]]))  # the stop sample is free


def test_distortion_loss_matches_the_pairwise_sum_and_pulls_a_split_ray_together():
    from selfsup.losses import distortion_loss

    gen = torch.Generator().manual_seed(0)
    w = torch.rand(5, 7, generator=gen)
    w = w / w.sum(-1, keepdim=True) * torch.rand(5, 1, generator=gen)
    t = torch.sort(torch.rand(5, 7, generator=gen) * 50 + 0.5, dim=-1).values
    s = torch.log(t)
    pairwise = (w[:, :, None] * w[:, None, :] * (s[:, :, None] - s[:, None, :]).abs()).sum((-1, -2))
    torch.testing.assert_close(distortion_loss(w, t), pairwise.mean())
    # All weight at one distance: nothing to pay, at any range.
    one = torch.zeros(1, 7)
    one[0, 3] = 1.0
    assert float(distortion_loss(one, t[:1])) == 0.0
    # Half at 5 m, half leaking to a 30 m background: 2 * 0.25 * log(6); the same split ten
    # times farther costs the same (log distance).
    split = torch.tensor([[0.5, 0.0, 0.5]], requires_grad=True)
    near = torch.tensor([[5.0, 10.0, 30.0]])
    loss = distortion_loss(split, near)
    assert float(loss.detach()) == pytest.approx(0.5 * math.log(6.0), rel=1e-6)
    assert float(distortion_loss(split, near * 10).detach()) == pytest.approx(float(loss.detach()), rel=1e-6)
    loss.backward()
    # d/dw_i = 2 sum_j w_j |s_i - s_j|: weight moved to either end of the split lowers it.
    torch.testing.assert_close(split.grad, torch.tensor([[math.log(6.0), math.log(2.0) + math.log(3.0), math.log(6.0)]]))
    # The mask picks rays; no counted ray gives 0.
    both = torch.cat([one, torch.tensor([[0.5, 0, 0, 0, 0, 0, 0.5]])])
    assert float(distortion_loss(both, t[:2], torch.tensor([True, False]))) == 0.0
    assert float(distortion_loss(both, t[:2], torch.tensor([False, False]))) == 0.0


def test_distortion_objective_counts_the_background_sample(batch):
    model = _model(field_resolution=(32, 32, 8), background="box_exit", loss_weights=dict(distortion=1.0))
    model.train()
    out = model(batch)
    value = out.terms["loss/distortion"]
    assert torch.isfinite(value) and float(value) > 0.0
    out.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.representation.parameters())


def test_patch_photometric_objective_runs_beside_the_ray_grid_one(batch):
    model = _model(field_resolution=(32, 32, 8), background="box_exit", loss_weights=dict(photometric=1.0, patch_photometric=0.5))
    model.train()
    out = model(batch)
    grid, patch = out.terms["loss/photometric"], out.terms["loss/patch_photometric"]
    assert torch.isfinite(grid) and torch.isfinite(patch) and float(grid) != float(patch)
    torch.testing.assert_close(out.loss.detach(), grid + 0.5 * patch + sum(
        model.loss_weights[k[5:]] * v for k, v in out.terms.items() if k.startswith("loss/") and k[5:] not in ("photometric", "patch_photometric")))


def test_plane_patch_warp_reads_normals_from_the_decoded_grid(batch):
    model = _model(field_resolution=(32, 32, 8), background="box_exit", photometric_patch=3, photometric_patch_warp="plane")
    model.train()
    scene = model.encode(batch)
    views = model.training_views(scene, batch)
    normals = views[0].extras["sample_normals"]
    assert normals.shape == views[0].sample_points.shape
    assert float(normals[..., -1, :].abs().max()) == 0.0  # the background sample has no plane
    # Over the flat prior (z = 0 ground), in-box normals point up.
    inside = normals[..., :-1, :].norm(dim=-1) > 0
    assert inside.float().mean() > 0.5
    out = model(batch)
    assert torch.isfinite(out.terms["loss/photometric"])
    out.loss.backward()
    with pytest.raises(ValueError, match="field_resolution"):
        _model(photometric_patch=3, photometric_patch_warp="plane")


def test_free_space_objective_and_sharpness_ramp(batch):
    model = _model(field_resolution=(32, 32, 8), loss_weights=dict(free_space=1.0), sharpness_ramp=(0.5, 8.0, 4))
    model.train()
    seen = []
    for _ in range(6):
        out = model(batch)
        seen.append(float(model.renderer.min_inv_s))
    assert "loss/free_space" in out.terms and torch.isfinite(out.terms["loss/free_space"])
    # Geometric from 0.5 to 8 over 4 steps, then held: 0.5, 1, 2, 4, 8, 8.
    assert seen == pytest.approx([0.5, 1.0, 2.0, 4.0, 8.0, 8.0])
    assert float(model.renderer.inv_s.detach()) >= 8.0
    assert float(model.state_dict()["renderer.min_inv_s"]) == 8.0  # saved: evaluation uses it
    with pytest.raises(ValueError, match="sharpness_ramp"):
        _model(sharpness_ramp=(4.0, 1.0, 10))


def test_image_blur_shrinks_linearly_and_blurs_only_what_the_objectives_compare(batch):
    model = _model(image_blur=(3.0, 4))
    model.train()
    sigmas, changed = [], []
    for _ in range(6):
        out = model(batch)  # advances train_step
        sigmas.append(model.blur_sigma())
        changed.append(not torch.equal(model.objective_batch(batch).images, batch.images))
    assert torch.isfinite(out.loss)
    # After step k (train_step = k), blur_sigma is the sigma step k trained with: 3 (1 - (k - 1) / 4).
    assert sigmas == pytest.approx([3.0, 2.25, 1.5, 0.75, 0.0, 0.0])
    assert changed == [True, True, True, True, False, False]
    model.eval()
    model.train_step.fill_(1)
    assert model.blur_sigma() == 0.0 and model.objective_batch(batch) is batch
    with pytest.raises(ValueError, match="image_blur"):
        _model(image_blur=(2.0, 0))


def test_hash_schedule_adds_levels_coarse_to_fine_and_evaluates_with_all(batch):
    torch.manual_seed(0)
    rep = TriplaneSDF(feat_channels=16, plane_channels=8, hidden=16, resolution=(32, 32, 4), hash_levels=4,
                      hash_log2_size=10)
    model = _model(representation=rep, field_resolution=(32, 32, 8), hash_schedule=(1, 2))
    model.train()
    table = rep.hash.params
    rows = rep.hash.offsets
    active, level_grads = [], []
    for _ in range(6):
        model.zero_grad()
        model(batch).loss.backward()
        active.append(rep.hash_active_levels)
        g = table.grad.view(-1, rep.hash.features_per_level).abs().sum(-1)
        level_grads.append([float(g[rows[k] : rows[k + 1]].sum()) for k in range(4)])
    # One level, then one more every 2 steps (beyond the last level it stays all of them).
    assert active == [1, 1, 2, 2, 3, 3]
    # The first step trains the coarsest level only; finer tables get no gradient until active.
    assert level_grads[0][0] > 0 and level_grads[0][1:] == [0.0, 0.0, 0.0]
    assert level_grads[2][1] > 0 and level_grads[2][2:] == [0.0, 0.0]
    model.eval()
    assert rep.hash_active_levels is None  # evaluation reads every level
    with pytest.raises(ValueError, match="hash_schedule"):
        _model(hash_schedule=(1, 10))  # the default tiny representation has no hash grid


def test_prior_regularizer_is_the_mean_squared_residual_from_the_analytic_prior(batch):
    model = _model(field_resolution=(16, 16, 4), loss_weights=dict(prior=1.0))
    rep = model.representation
    with torch.no_grad():
        scene = model.encode(batch)
        prior = rep.bias(rep.cell_centres((16, 16, 4)))
        reg = model.regularizers(scene, [])
        assert torch.allclose(reg["prior"], (scene.sdf_grid - prior).square().mean())
        assert reg["prior"] > 0
        rep.decoder[-1].weight[0].zero_()  # the decoder adds nothing to the SDF: the prior alone
        assert model.regularizers(model.encode(batch), [])["prior"].item() == pytest.approx(0.0, abs=1e-10)
    model.train()
    out = model(batch)
    assert out.terms["loss/prior"] >= 0
    with pytest.raises(ValueError, match="field_resolution"):
        per_point = _model(loss_weights=dict(prior=1.0))
        per_point.train()
        per_point(batch)


def test_field_box_renders_beyond_the_occupancy_grid_and_keeps_occupancy_on_it(batch):
    # A field box reaching 80 m and 13.4 m: a ground-only field's rays that miss the road now
    # leave at the outer box (the background there), the road beyond 40 m is rendered, the
    # regularizers run on the irregular cells, and occupancy stays on the Occ3D grid.
    from render.grid import BoxWarp
    from selfsup.grid import OCC3D_GRID

    warp = BoxWarp(OCC3D_GRID.lower, OCC3D_GRID.upper, (20, 20, 4), lower=(-80.0, -80.0, -1.0), upper=(80.0, 80.0, 13.4),
                   shell_cells=((4, 4), (4, 4), (0, 2)))
    rep = TriplaneSDF(feat_channels=16, plane_channels=8, hidden=16, resolution=(32, 32, 4), sdf_bias="ground",
                      field_box=warp)
    model = _silent(_model(representation=rep, renderer=NeuSRenderer(num_samples=512, init_variance=0.5, backend="torch"),
                           far=120.0, background="box_exit", field_resolution=warp.shape,
                           loss_weights={"prior": 1e-3})).eval()
    with pytest.raises(ValueError, match="field_box.shape"):
        _model(representation=rep, field_resolution=(20, 20, 6))
    # The warp's knots are built once per device and dtype.
    assert warp._knots("cpu", torch.float32)[0] is warp._knots("cpu", torch.float32)[0]
    K, T, grid = _small_cameras(batch)
    scene = model.encode(batch)
    with torch.no_grad():
        views = model.render(scene, K, T, grid)
    sky = views.opacity < 0.01
    ground = views.opacity > 0.999
    assert sky.sum() > 10 and ground.sum() > 10
    exit_pts = views.sample_points[..., -1, :][sky]
    lower, upper = warp.box()
    assert (((exit_pts - lower).abs() < 1e-2) | ((exit_pts - upper).abs() < 1e-2)).any(-1).all()
    assert float(views.extras["dist"][sky].max()) > 60.0
    # The rendered road is the plane z = 0, beyond the Occ3D box too.
    from render.rays import pixel_rays

    rays = pixel_rays(K, T, views.pixels)
    hit = rays.origins + rays.directions * views.extras["dist"][..., None]
    assert float(views.extras["dist"][ground].max()) > 40.0
    assert float(hit[..., 2][ground].abs().max()) < 0.15
    terms = model.regularizers(scene, [views])
    assert set(terms) == {"eikonal", "hessian", "prior"} and all(torch.isfinite(v) for v in terms.values())
    assert float(terms["prior"].detach()) < 1e-8  # the silent decoder is the prior
    labels = model.predict_occupancy(scene).labels
    assert labels.shape == (1, *OCC3D_GRID.shape)
    assert bool((labels[0, :, :, :2] != OCC3D_FREE).all()) and bool((labels[0, :, :, 3:] == OCC3D_FREE).all())


def _empty_field_model(**kw) -> SDFOcc:
    """No prior and a silent decoder: SDF 0 everywhere, nothing stops a ray."""
    rep = TriplaneSDF(feat_channels=16, plane_channels=8, hidden=16, resolution=(32, 32, 4), sdf_bias="none")
    return _silent(_model(representation=rep, renderer=NeuSRenderer(num_samples=64, init_variance=0.5, backend="torch"),
                          **kw)).eval()


def _render_small(model: SDFOcc, batch):
    """Render the current frame's cameras at 8 x 14 pixel centres (no jitter)."""
    K, T, grid = _small_cameras(batch)
    with torch.no_grad():
        return model.render(model.encode(batch), K, T, grid)


def test_learned_background_stops_rays_leaving_through_the_bottom_at_the_exit(batch):
    # An empty field (no prior, silent decoder: SDF 0 everywhere, nothing to stop a ray):
    # rays that leave through the box's bottom passed where the ground should be, and the
    # "learned" background keeps their leftover at the exit whatever its logits say; rays
    # leaving through a side or the top take the bins' distances.
    model = _empty_field_model(far=200.0, background="learned", background_bins=4, background_far=150.0,
                               background_map_hw=(4, 8))
    with torch.no_grad():
        model.background_logits[:, -1] = 20.0  # every direction: the farthest bin
    views = _render_small(model, batch)
    assert float(views.opacity.max()) < 0.01
    ray_far = views.extras["ray_far"]
    exit_z = views.sample_points[..., -4, 2]  # the first bin lies at the exit
    bottom = (exit_z + 1.0).abs() < 1e-3
    assert bottom.sum() > 5 and (~bottom).sum() > 5
    torch.testing.assert_close(views.extras["dist"][bottom], ray_far[bottom], rtol=0.01, atol=0.01)
    far_bin = torch.maximum(ray_far[~bottom], torch.full_like(ray_far[~bottom], 150.0))
    torch.testing.assert_close(views.extras["dist"][~bottom], far_bin, rtol=0.01, atol=0.05)


def test_random_training_frame_and_patch_rays(batch):
    # One frame per step drawn from the batch, rays in 2 x 2 patches of neighbouring pixels.
    model = _model(train_frames="random", ray_sampling="patch", patch_size=2, rays_hw=(6, 10))
    torch.manual_seed(3)
    frames = set()
    for _ in range(6):
        views = model.training_views(model.encode(batch), batch)
        assert len(views) == 1
        frames.add(views[0].frame)
        uv = views[0].pixels[0, 0].reshape(3, 2, 5, 2, 2)
        torch.testing.assert_close(uv[:, 1, :, :, 1] - uv[:, 0, :, :, 1], torch.ones(3, 5, 2))
    assert frames == {0, 1, 2}
    out = model(batch)
    assert torch.isfinite(out.loss) and "loss/photometric" in out.terms
    model.eval()
    assert model.training_views(model.encode(batch), batch)[0].frame == 0  # evaluation: the current frame
    with pytest.raises(ValueError, match="multiples of patch_size"):
        _model(ray_sampling="patch", patch_size=4, rays_hw=(6, 10))


def test_spatial_sources_add_the_neighbouring_cameras_to_the_photometric_term(batch):
    losses = {}
    for k in (0, 2):
        model = _model(spatial_sources=k).eval()  # fixed rays and samples
        with torch.no_grad():
            losses[k] = float(model(batch).terms["loss/photometric"])
    # The minimum over more sources can only be lower or equal where both count, and the
    # added sources change which rays count: the values differ.
    assert math.isfinite(losses[2]) and losses[2] != losses[0]


def test_far_background_sends_side_and_top_exits_to_far_and_keeps_bottom_exits(batch):
    # An empty field (no prior, silent decoder): every ray keeps its transmittance. "far"
    # stops it at `far` unless it leaves through the box's bottom (through the ground).
    views = _render_small(_empty_field_model(far=70.0, background="far"), batch)
    assert float(views.opacity.max()) < 0.01
    ray_far = views.extras["ray_far"]
    origins = batch.T_ego_cam[:, 0, :, None, :3, 3]  # [B V 1 3]
    d = views.sample_points[..., -1, :] - origins
    exit_z = (origins + d / d.norm(dim=-1, keepdim=True) * ray_far[..., None])[..., 2]
    bottom = (exit_z + 1.0).abs() < 1e-3
    top_or_side = ~bottom
    assert bottom.sum() > 5 and top_or_side.sum() > 5
    torch.testing.assert_close(views.extras["dist"][bottom], ray_far[bottom], rtol=0.01, atol=0.01)
    torch.testing.assert_close(views.extras["dist"][top_or_side], torch.full_like(ray_far[top_or_side], 70.0),
                               rtol=0.01, atol=0.05)


@pytest.mark.parametrize("size", [1, 2])
def test_photometric_patch_must_be_odd_and_at_least_3(size):
    with pytest.raises(ValueError, match="photometric_patch"):
        _model(photometric_patch=size)


def test_median_depth_estimator_renders_the_road_and_the_box_exit(batch):
    # Ground-only field: where a ray hits the road its weight sits at one surface, so the
    # median distance equals the expected one to within a sample spacing; a sky ray's
    # weight sits at the box exit (the background sample), which both estimators return.
    expected = _ground_model(background="box_exit")
    median = _ground_model(background="box_exit", depth_estimator="median")
    median.load_state_dict(expected.state_dict())
    K, T, grid = _small_cameras(batch)
    with torch.no_grad():
        ve = expected.render(expected.encode(batch), K, T, grid)
        vm = median.render(median.encode(batch), K, T, grid)
    ground, sky = ve.opacity > 0.999, ve.opacity < 0.01
    assert ground.sum() > 10 and sky.sum() > 10
    spacing = (expected.far - expected.near) / expected.renderer.num_samples
    assert (vm.extras["dist"][ground] - ve.extras["dist"][ground]).abs().max() <= spacing
    torch.testing.assert_close(vm.extras["dist"][sky], ve.extras["ray_far"][sky])
    with pytest.raises(Exception, match="depth_estimator"):  # the annotation's check or ours
        _model(depth_estimator="mode")


def test_keypoint_depth_renders_rays_through_the_labelled_pixels(batch):
    """On the analytic ground plane: labels equal to the true ground depth score ~0, 1.25x
    that depth scores 0.2 (relative), labels beyond the box exit (here: below the box's
    floor, 1 m under the road) are dropped, and only labelled pixels outside the ego masks
    are rendered."""
    B, T, V, _, H, W = batch.images.shape
    model = _ground_model(loss_weights={"keypoint_depth": 1.0}, keypoint_rays=8, depth_norm="relative",
                          depth_beyond_exit="drop", near=0.1).train()
    # the analytic ground depth of every pixel centre of every camera (z = 0 plane)
    v, u = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    pix = torch.stack([u, v, torch.ones_like(u)], dim=-1).reshape(-1, 3)
    truth = torch.zeros(V, H * W)
    for c in range(V):
        d_ego = (pix @ torch.linalg.inv(batch.K[0, 0, c]).T) @ batch.T_ego_cam[0, 0, c, :3, :3].T
        t = -batch.T_ego_cam[0, 0, c, 2, 3] / d_ego[:, 2]
        truth[c] = torch.where((t > 1.0) & (t < 15.0), t, torch.zeros_like(t))
    truth = truth.reshape(1, V, H, W)
    labels = torch.zeros_like(truth)
    labels[..., ::5, ::7] = truth[..., ::5, ::7]  # sparse: one pixel in 35
    assert (labels > 0).sum() > 6 * 8

    def term(maps, masks=None) -> float:
        b = dataclasses.replace(batch, depth_maps=maps.expand(B, T, V, H, W).clone(),
                                valid_masks=batch.valid_masks if masks is None else masks)
        return float(model(b).terms["loss/keypoint_depth"])

    assert term(labels) < 0.05
    assert term(1.25 * labels) == pytest.approx(0.2, abs=0.03)
    far = labels.clone()
    far[labels > 0] = 500.0  # beyond every ray's box exit: nothing is left to supervise
    b = dataclasses.replace(batch, depth_maps=far.expand(B, T, V, H, W).clone())
    assert "loss/keypoint_depth" not in model(b).terms
    # the ego-car mask excludes labels: with every pixel masked but one camera's, only it counts
    masks = torch.zeros_like(batch.valid_masks)
    masks[:, 2] = True
    one = labels.clone()
    one[:, 2] *= 1.25
    assert term(one, masks) == pytest.approx(0.2, abs=0.03)
    # gradient reaches the field
    model.zero_grad()
    b = dataclasses.replace(batch, depth_maps=(1.25 * labels).expand(B, T, V, H, W).clone())
    model(b).loss.backward()
    assert model.representation.decoder[-1].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="depth_maps"):
        model(batch)
    with pytest.raises(ValueError, match="keypoint_rays"):
        _model(keypoint_rays=0)


def test_keypoint_depth_of_neighbour_frames_is_rendered_from_their_cameras(batch):
    """``keypoint_frames="all"``: labels of the previous frame's cameras, posed in the
    current ego frame, against the analytic ground plane; the current frame has none."""
    B, T, V, _, H, W = batch.images.shape
    v, u = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    pix = torch.stack([u, v, torch.ones_like(u)], dim=-1).reshape(-1, 3)
    T_ego0_cam = batch.T_ego0_cam()[0, 1]
    truth = torch.zeros(V, H * W)
    for c in range(V):
        d_ego = (pix @ torch.linalg.inv(batch.K[0, 1, c]).T) @ T_ego0_cam[c, :3, :3].T
        t = -T_ego0_cam[c, 2, 3] / d_ego[:, 2]
        truth[c] = torch.where((t > 1.0) & (t < 15.0), t, torch.zeros_like(t))
    maps = torch.zeros(B, T, V, H, W)
    maps[:, 1, :, ::5, ::7] = truth.reshape(V, H, W)[:, ::5, ::7]
    current = _ground_model(loss_weights={"keypoint_depth": 1.0}, keypoint_rays=8, depth_norm="relative").train()
    assert "loss/keypoint_depth" not in current(dataclasses.replace(batch, depth_maps=maps)).terms
    model = _ground_model(loss_weights={"keypoint_depth": 1.0}, keypoint_rays=8, depth_norm="relative",
                          keypoint_frames="all").train()
    assert float(model(dataclasses.replace(batch, depth_maps=maps)).terms["loss/keypoint_depth"]) < 0.05
    assert float(model(dataclasses.replace(batch, depth_maps=1.25 * maps)).terms["loss/keypoint_depth"]) == \
        pytest.approx(0.2, abs=0.03)


def test_sparse_depth_source_relative_norm_and_dropping_targets_beyond_the_exit(batch):
    """depth_source="sparse" reads each ray's grid cell; depth_norm="relative" is the AbsRel
    form; depth_beyond_exit="drop" skips targets no field surface can render."""
    B, T, V, _, H, W = batch.images.shape
    model = _ground_model(depth_source="sparse", loss_weights={"depth": 1.0}, depth_norm="relative",
                          depth_beyond_exit="drop").train()
    maps = torch.zeros(B, T, V, H, W)
    maps[..., ::3, ::3] = 1000.0  # beyond every exit
    assert float(model(dataclasses.replace(batch, depth_maps=maps)).terms["loss/depth"]) == 0.0  # no ray left
    keep = _ground_model(depth_source="sparse", loss_weights={"depth": 1.0}, depth_norm="relative").train()
    value = float(keep(dataclasses.replace(batch, depth_maps=maps)).terms["loss/depth"])
    assert 0.9 < value <= 1.0  # |d - 1000| / 1000 with d at most the box exit (tens of metres)
    with pytest.raises(ValueError, match="ray_sampling"):
        _model(depth_source="sparse", ray_sampling="strided")
    with pytest.raises(Exception, match="depth_norm"):  # beartype's check, or check_choice without it
        _model(depth_norm="l2")
