"""UniPre3DForGaussianPretraining: all six backbones at their level, the image encoders, fusion geometry, the Gaussian
head, the losses and the backbone export."""

from __future__ import annotations

import math
import sys
import types

import pytest
import torch
from transformers import AutoModel

import unipre3d_hf  # noqa: F401
from tests.models import (
    test_mamba3d,
    test_pcm,
    test_point_transformer,
    test_pointmlp,
    test_ptv3,
    test_sparse_unet,
)
from tests.models.object_backbone_common import make_points
from tests.models.scene_backbone_checks import two_scenes
from unipre3d_hf import UniPre3DConfig, UniPre3DForGaussianPretraining
from unipre3d_hf.modeling.pretraining import (
    ObjectFeatureFusion,
    lift_reference_pixels,
    sample_image_features,
)
from unipre3d_hf.rendering import Cameras
from unipre3d_hf.rendering.cameras import look_at
from unipre3d_hf.training.losses import LPIPSLoss, reconstruction_loss

OBJECT_BACKBONES = {
    "pointmlp": lambda: test_pointmlp.TestPointMLP().tiny_config(),
    "point_transformer": lambda: test_point_transformer.TestPointTransformer().tiny_config(),
    "mamba3d": lambda: test_mamba3d.TestMamba3D().tiny_config(),
    "pcm": lambda: test_pcm.TestPCM().tiny_config(),
}
SCENE_BACKBONES = {
    "sparse_unet": lambda: test_sparse_unet.TestSparseUNet().tiny_config(),
    "ptv3": lambda: test_ptv3.TestPTv3().tiny_config(),
}


def object_batch(batch: int = 2, num_points: int = 128, size: int = 24, targets: int = 2, seed: int = 0) -> dict:
    """Points on a sphere of radius 0.4, one reference and ``targets`` supervision cameras on a circle of radius 1.5
    looking at the origin, random images with a black background around a bright disc."""
    g = torch.Generator().manual_seed(seed)
    views = 1 + targets
    angle = torch.rand(batch, views, generator=g) * 2 * math.pi
    eye = torch.stack([1.5 * angle.cos(), 1.5 * angle.sin(), 0.3 * torch.ones_like(angle)], -1)
    c2w = look_at(eye, torch.zeros_like(eye))
    f = size * 1.1
    intrinsics = torch.tensor([f, f, size / 2, size / 2]).expand(batch, views, 4).clone()
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2).float()
    images = torch.rand(batch, views, 3, size, size, generator=g) * disc
    return {
        "points": make_points(batch, num_points, seed),
        "point_mask": torch.ones(batch, num_points, dtype=torch.bool),
        "reference_images": images[:, :1],
        "reference_c2w": c2w[:, :1],
        "reference_intrinsics": intrinsics[:, :1],
        "target_images": images[:, 1:],
        "target_c2w": c2w[:, 1:],
        "target_intrinsics": intrinsics[:, 1:],
        "background": torch.zeros(batch, 3),
    }


def scene_batch(n1: int = 500, n2: int = 800, views: int = 2, height: int = 12, width: int = 16) -> dict:
    """Two uneven random scenes; in each, cameras at the scene centre look sideways at a wall of depth 0.5 m, so
    every lifted pixel lies inside the scene's box."""
    coords, features, offsets = two_scenes(n1, n2)
    starts = torch.cat([torch.zeros(1, dtype=torch.long), offsets[:-1]])
    centres = torch.stack([coords[s:e].mean(0) for s, e in zip(starts, offsets)])  # [2, 3]
    angle = torch.linspace(0, math.pi, views)
    direction = torch.stack([angle.cos(), angle.sin(), torch.zeros_like(angle)], -1)  # [V, 3]
    eye = centres[:, None].expand(2, views, 3)
    c2w = look_at(eye, eye + direction)
    intrinsics = torch.tensor([12.0, 12.0, width / 2, height / 2]).expand(2, views, 4).clone()
    g = torch.Generator().manual_seed(3)
    images = torch.rand(2, 2 * views, 3, height, width, generator=g)
    depths = torch.full((2, views, height, width), 0.5)
    return {
        "coords": coords,
        "features": features,
        "offsets": offsets,
        "reference_images": images[:, :views],
        "reference_depths": depths,
        "reference_c2w": c2w,
        "reference_intrinsics": intrinsics,
        "target_images": images[:, views:],
        "target_c2w": c2w.flip(1),
        "target_intrinsics": intrinsics,
        "background": torch.ones(2, 3),
    }


def tiny_model(backbone_config, **kwargs) -> UniPre3DForGaussianPretraining:
    torch.manual_seed(0)
    defaults = dict(image_encoder="conv", image_encoder_channels=16, lambda_lpips=0.0)
    return UniPre3DForGaussianPretraining(UniPre3DConfig(backbone_config=backbone_config, **{**defaults, **kwargs}))


def assert_trains(model, batch) -> None:
    model.train()
    out = model(**batch)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert out.rendered_images.shape == batch["target_images"].shape
    out.loss.backward()
    for part in ("backbone", "image_encoder", "image_projection", "fusion", "gaussian_head"):
        grads = [p.grad for p in getattr(model, part).parameters()]
        assert grads and all(g is not None for g in grads), f"{part} has parameters without gradient"
        assert sum(g.abs().sum() for g in grads) > 0, f"no gradient reached {part}"


@pytest.mark.parametrize("name", sorted(OBJECT_BACKBONES))
def test_object_level_trains_with_every_object_backbone(name):
    model = tiny_model(OBJECT_BACKBONES[name]())
    assert model.config.level == "object" and model.config.loss_type == "focal_l2"
    assert_trains(model, object_batch())


@pytest.mark.parametrize("name", sorted(SCENE_BACKBONES))
def test_scene_level_trains_with_every_scene_backbone(name):
    model = tiny_model(SCENE_BACKBONES[name]())
    assert model.config.level == "scene" and model.config.offset_scale == 0.2
    batch = scene_batch()
    assert_trains(model, batch)
    # the lifted voxels are Gaussians too: more Gaussians than 3D voxels, the extra ones on the depth-0.5 wall
    model.eval()
    with torch.no_grad():
        fused = model(**batch).gaussians
        plain = tiny_model(SCENE_BACKBONES[name](), image_encoder="none").eval()(**batch).gaussians
    assert (fused.mask.sum(1) > plain.mask.sum(1)).all()


def test_configs_presets_and_errors():
    assert UniPre3DConfig.from_preset("pointmlp_shapenet").head_hidden_size == 64
    assert UniPre3DConfig.from_preset("point_transformer_shapenet").head_hidden_size == 128
    assert UniPre3DConfig.from_preset("mamba3d_shapenet").head_hidden_size == 128
    pcm = UniPre3DConfig.from_preset("pcm_shapenet")
    assert (pcm.head_hidden_size, pcm.image_feature_channels) == (64, 384)
    scene = UniPre3DConfig.from_preset("ptv3_scannet")
    assert (scene.level, scene.image_feature_channels, scene.head_hidden_size) == ("scene", 32, 32)
    assert (scene.loss_type, scene.lpips_start_step, scene.background) == ("l2", 30_000, [1.0, 1.0, 1.0])
    assert UniPre3DConfig.from_preset("sparse_unet_scannet").gaussian_channels == 23
    round_trip = UniPre3DConfig.from_dict(scene.to_dict())
    assert round_trip.backbone_config.model_type == "unipre3d_ptv3" and round_trip.level == "scene"
    with pytest.raises(ValueError, match="does not fit the backbone"):
        UniPre3DConfig.from_preset("ptv3_scannet", level="object")
    with pytest.raises(ValueError, match="unknown preset"):
        UniPre3DConfig.from_preset("ptv3_shapenet")
    with pytest.raises(ValueError, match="image_encoder"):
        UniPre3DConfig(image_encoder="clip")
    model = tiny_model(OBJECT_BACKBONES["point_transformer"]())
    batch = object_batch()
    with pytest.raises(ValueError, match="reference_c2w"):
        model(**{**batch, "reference_c2w": batch["reference_c2w"][..., :3, :]})
    with pytest.raises(ValueError, match="needs `points`"):
        model(**{k: v for k, v in batch.items() if k != "points"})
    scene_model = tiny_model(SCENE_BACKBONES["sparse_unet"]())
    with pytest.raises(ValueError, match="reference_depths"):
        scene_model(**{k: v for k, v in scene_batch().items() if k != "reference_depths"})


# ---------------------------------------------------------------------------------------------------- fusion geometry
def _one_camera(h: int = 16, w: int = 16) -> Cameras:
    """Camera at the origin looking down +z (identity pose), fx = fy = 10, principal point (8, 8)."""
    c2w = torch.eye(4).expand(1, 1, 4, 4)
    return Cameras.from_camera_to_world(c2w, torch.tensor([[[10.0, 10.0, 8.0, 8.0]]]), w, h)


def _pixel_id_features(h: int = 16, w: int = 16) -> torch.Tensor:
    """[1, 1, 2, H, W] features: channel 0 = 100 * row + column + 1, channel 1 = 1."""
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([100.0 * rows + cols + 1, torch.ones(h, w)])[None, None]


def test_a_projected_point_gets_its_pixel_and_occluded_or_behind_points_get_nothing():
    points = torch.tensor(
        [
            [0.05, -0.15, 1.0],  # u = 8.5, v = 6.5 -> row 6, column 8
            [0.10, -0.30, 2.0],  # same pixel, farther: occluded
            [0.05, -0.15, -1.0],  # behind the camera
            [0.31, 0.52, 1.0],  # u = 11.1, v = 13.2 -> row 13, column 11
            [5.0, 0.0, 1.0],  # outside the image
        ]
    )[None]
    sampled, seen = sample_image_features(points, _pixel_id_features(), _one_camera())
    assert seen[0, 0].tolist() == [True, False, False, True, False]
    assert sampled[0, 0, :, 0].tolist() == [6 * 100 + 8 + 1, 0, 0, 13 * 100 + 11 + 1, 0]
    # the paper's transposed lookup reads [row = round(u), column = round(v)]
    legacy, legacy_seen = sample_image_features(points, _pixel_id_features(), _one_camera(), True)
    assert legacy_seen[0, 0, 0] and legacy[0, 0, 0, 0] == round(8.5) * 100 + round(6.5) + 1
    assert legacy[0, 0, 3, 0] == 11 * 100 + 13 + 1


def test_object_fusion_gives_cls_and_unseen_tokens_zero_image_halves():
    fusion = ObjectFeatureFusion(2)
    with torch.no_grad():  # output = relu(image half): the fused token shows exactly what was sampled
        fusion.proj.weight.copy_(torch.cat([torch.zeros(2, 2), torch.eye(2)], dim=1))
        fusion.proj.bias.zero_()
    anchors = torch.tensor([[[0.05, -0.15, 1.0], [0.05, -0.15, -1.0]]])
    hidden = torch.randn(1, 3, 2)  # CLS + 2 tokens
    out = fusion(hidden, anchors, 1, _pixel_id_features(), _one_camera())
    assert out[0, 0].tolist() == [0.0, 0.0] and out[0, 2].tolist() == [0.0, 0.0]
    assert out[0, 1].tolist() == [609.0, 1.0]


def test_lifted_voxels_of_a_known_depth_map_land_where_they_should():
    # a 2 x 2 x 2 m box of points (grid 0.1 m); the camera at its centre looks down +z at a depth-0.55 plane
    g = torch.Generator().manual_seed(0)
    coords = torch.rand(4000, 3, generator=g) * 2 - 1
    offsets = torch.tensor([4000])
    h, w = 8, 10
    depth = torch.full((1, 1, h, w), 0.55)
    depth[0, 0, 0, 0] = 0.01  # too close: invalid
    depth[0, 0, 0, 1] = 3.0  # outside the box
    intrinsics = torch.tensor([[[4.0, 4.0, w / 2, h / 2]]])
    c2w = torch.eye(4)[None, None]
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    features = torch.stack([100.0 * rows + cols, torch.zeros(h, w)])[None, None]
    lifted = lift_reference_pixels(features, depth, c2w, intrinsics, coords, offsets, grid_size=0.1)
    # every valid pixel's world point: x = (j + 0.5 - 5) 0.55 / 4, y = (i + 0.5 - 4) 0.55 / 4, z = 0.55
    u = (cols + 0.5 - w / 2) * 0.55 / 4
    v = (rows + 0.5 - h / 2) * 0.55 / 4
    expected = torch.stack([u, v, torch.full_like(u, 0.55)], -1).reshape(-1, 3)[2:]
    scene_min = coords.amin(0)
    expected_cells = torch.floor((expected - scene_min) / 0.1).long().unique(dim=0)
    assert lifted.coords.shape[0] == expected_cells.shape[0]  # one pixel per occupied cell
    assert torch.equal(lifted.grid_coords.unique(dim=0), expected_cells)
    assert torch.allclose(lifted.coords[:, 2], torch.tensor(0.55))
    assert torch.equal(torch.floor((lifted.coords - scene_min) / 0.1).long(), lifted.grid_coords)
    # each lifted voxel carries the feature of the pixel it came from
    col = torch.round(lifted.coords[:, 0] * 4 / 0.55 + w / 2 - 0.5).long()
    row = torch.round(lifted.coords[:, 1] * 4 / 0.55 + h / 2 - 0.5).long()
    assert torch.equal(lifted.features[:, 0], (100 * row + col).float())
    assert not ((row == 0) & (col <= 1)).any()  # the invalid and the out-of-box pixels were dropped
    assert lifted.batch_index.eq(0).all()


# ---------------------------------------------------------------------------------------------------- head and losses
def test_gaussian_head_activations():
    model = tiny_model(OBJECT_BACKBONES["pointmlp"](), offset_scale=0.25, initial_scale=0.05).eval()
    batch = object_batch()
    with torch.no_grad():
        out = model(**batch)
    gs = out.gaussians
    assert gs.means.shape == (2, 128, 3) and gs.sh.shape == (2, 128, 4, 3)
    assert torch.allclose(gs.quats.norm(dim=-1), torch.ones(2, 128), atol=1e-5)
    assert ((gs.means - batch["points"]).abs() <= 0.25 + 1e-6).all()
    assert ((gs.opacities > 0) & (gs.opacities < 1)).all() and (gs.scales > 0).all()
    bias = model.gaussian_head.fc2.bias[4:7]
    assert torch.allclose(bias, torch.full((3,), math.log(0.05)))
    legacy = tiny_model(OBJECT_BACKBONES["pointmlp"](), legacy_quaternion_normalization=True).eval()
    with torch.no_grad():
        quats = legacy(**batch).gaussians.quats
    assert torch.allclose(quats.norm(dim=1), torch.ones(2, 4), atol=1e-5)  # normalised across the Gaussians


def test_gaussian_head_runs_in_float32_under_bf16_autocast():
    model = tiny_model(OBJECT_BACKBONES["point_transformer"]()).eval()
    seen = {}
    model.gaussian_head.fc2.register_forward_hook(lambda m, i, o: seen.update(head=o.dtype))
    model.backbone.register_forward_hook(lambda m, i, o: seen.update(backbone=o))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**object_batch())
    hidden, anchors = seen["backbone"].last_hidden_state, seen["backbone"].anchor_points
    assert hidden.dtype == torch.bfloat16 and seen["head"] == torch.float32
    assert out.gaussians.means.dtype == torch.float32 and out.rendered_images.dtype == torch.float32
    # the centres are the float32 head's: no bf16 rounding of the coordinates (8-bit mantissa: ~4e-3 at 1)
    with torch.no_grad():
        reference = model.gaussian_head(hidden.float(), anchors.float())
    assert torch.equal(out.gaussians.means, reference["means"]) and torch.equal(
        out.gaussians.scales, reference["scales"]
    )


def test_losses_match_hand_computed_values():
    target = torch.zeros(1, 1, 3, 2, 2)
    target[0, 0, :, 0, 0] = 1.0  # one foreground pixel of four
    pred = torch.full_like(target, 0.5)
    # squared errors: 0.25 everywhere; focal weights 1.6 (foreground) and 0.4 (background)
    assert reconstruction_loss(pred, target, "l2") == pytest.approx(0.25)
    assert reconstruction_loss(pred, target, "l1") == pytest.approx(0.5)
    focal = reconstruction_loss(pred, target, "focal_l2", background=torch.zeros(1, 3))
    assert focal == pytest.approx((1.6 * 0.25 + 3 * 0.4 * 0.25) / 4)
    with pytest.raises(ValueError, match="background"):
        reconstruction_loss(pred, target, "focal_l2")


def test_lpips_is_never_a_silent_zero(monkeypatch):
    monkeypatch.setitem(sys.modules, "lpips", None)
    monkeypatch.setattr("unipre3d_hf.utils.import_utils._is_package_available", lambda name: name != "lpips")
    with pytest.raises(ImportError, match="pip install lpips"):
        LPIPSLoss()(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))

    class StandIn(torch.nn.Module):  # records its inputs; "distance" = mean absolute difference per image
        def __init__(self, net, verbose):
            super().__init__()
            self.net, self.inputs = net, []

        def forward(self, a, b):
            self.inputs.append((a.min().item(), a.max().item()))
            return (a - b).abs().mean(dim=(1, 2, 3), keepdim=True)

    fake = types.ModuleType("lpips")
    fake.LPIPS = StandIn
    monkeypatch.setitem(sys.modules, "lpips", fake)
    monkeypatch.setattr("unipre3d_hf.utils.import_utils._is_package_available", lambda name: True)
    model = tiny_model(OBJECT_BACKBONES["point_transformer"](), lambda_lpips=0.5, lpips_start_step=10)
    batch = object_batch()
    before = model(**batch, global_step=9)
    assert before.lpips_loss is None and torch.equal(before.loss, before.reconstruction_loss)
    after = model(**batch, global_step=10)
    expected = (2 * after.rendered_images - 2 * after.target_images).abs().mean()
    assert after.lpips_loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert after.loss.item() == pytest.approx(after.reconstruction_loss.item() + 0.5 * expected.item(), rel=1e-5)
    network = model.lpips.network.load()
    assert network.net == "vgg" and min(lo for lo, _ in network.inputs) >= -1.0 - 1e-6
    assert not any(k.startswith("lpips") for k in model.state_dict())
    after.loss.backward()  # LPIPS passes gradients to the renders


# ------------------------------------------------------------------------------------------------ sd-vae and export
@pytest.fixture(scope="module")
def tiny_vae_dir(tmp_path_factory):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        block_out_channels=(32, 32),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=8,
        latent_channels=4,
        layers_per_block=1,
    )
    path = tmp_path_factory.mktemp("tiny-vae")
    vae.save_pretrained(path)
    return str(path)


def test_sd_vae_encoder_is_frozen_not_saved_and_reloads(tiny_vae_dir, tmp_path):
    config = OBJECT_BACKBONES["point_transformer"]()
    model = tiny_model(
        config, image_encoder="sd-vae", image_encoder_name_or_path=tiny_vae_dir, image_encoder_channels=32
    )
    batch = object_batch()
    out = model(**batch)
    out.loss.backward()
    vae = model.image_encoder.vae.load()
    assert all(p.grad is None and not p.requires_grad for p in vae.parameters())
    assert model.image_projection.proj.weight.grad.abs().sum() > 0
    assert not any("vae" in k or "image_encoder" in k for k in model.state_dict())
    # the features are the last decoder up-block's output, at full resolution
    captured = []
    vae.decoder.up_blocks[-1].register_forward_hook(lambda m, a, o: captured.append(o))
    with torch.no_grad():
        vae(batch["reference_images"].flatten(0, 1))
        features = model.image_encoder(batch["reference_images"].flatten(0, 1))
    assert features.shape == (2, 32, 24, 24) and torch.equal(features, captured[0])
    # save / reload: the checkpoint holds no VAE weights, the config points at the VAE
    model.eval().save_pretrained(tmp_path)
    reloaded = UniPre3DForGaussianPretraining.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        a, b = model(**batch), reloaded(**batch)
    assert torch.allclose(a.rendered_images, b.rendered_images, atol=1e-6)
    with pytest.raises(ValueError, match="image_encoder_channels"):
        tiny_model(config, image_encoder="sd-vae", image_encoder_name_or_path=tiny_vae_dir)(**batch)


def test_sd_vae_in_bfloat16_matches_float32(tiny_vae_dir):
    # issue 17: the frozen VAE runs in bf16 on CUDA ("auto"); here both precisions on CPU on the same images: the
    # features agree to bf16's resolution (8-bit mantissa: ~0.4 % per rounding, through ~20 layers) and come back in
    # float32; the float32 network is left as it was
    from unipre3d_hf.modeling.pretraining import SDVAEImageEncoder

    images = object_batch()["reference_images"].flatten(0, 1)
    reference = SDVAEImageEncoder(tiny_vae_dir, 32, precision="float32")
    half = SDVAEImageEncoder(tiny_vae_dir, 32, precision="bfloat16")
    assert reference.compute_dtype(torch.device("cpu")) == torch.float32
    assert SDVAEImageEncoder(tiny_vae_dir, 32).compute_dtype(torch.device("cuda")) == torch.bfloat16
    exact, approx = reference(images), half(images)
    assert approx.dtype == torch.float32 and next(half.vae_bf16.load().parameters()).dtype == torch.bfloat16
    error = (approx - exact).norm() / exact.norm()
    assert 0 < error < 5e-2, error  # 2.0e-2 measured (torch 2.13 CPU)
    half.precision = "float32"
    torch.testing.assert_close(half(images), exact, rtol=0, atol=0)  # its float32 network is untouched


def test_backbone_exports_and_reloads_with_automodel(tmp_path):
    model = tiny_model(OBJECT_BACKBONES["pcm"]())
    batch = object_batch()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(3):
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()
    model.backbone.save_pretrained(tmp_path)
    backbone = AutoModel.from_pretrained(tmp_path).eval()
    model.eval()
    with torch.no_grad():
        expected = model.backbone(batch["points"]).last_hidden_state
        # float32 rounding only: see test_save_load_round_trip in object_backbone_common.py
        torch.testing.assert_close(backbone(batch["points"]).last_hidden_state, expected)
    for name, tensor in model.backbone.state_dict().items():
        assert torch.equal(backbone.state_dict()[name], tensor), name
