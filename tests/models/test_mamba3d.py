import pytest
import torch

from unipre3d_hf import Mamba3DConfig, Mamba3DModel

from .object_backbone_common import ObjectBackboneTests, make_points


class TestMamba3D(ObjectBackboneTests):
    model_class = Mamba3DModel
    num_points = 128

    def tiny_config(self, **kwargs):
        defaults = dict(
            num_groups=16, group_size=8, encoder_dims=32, hidden_size=32, num_hidden_layers=2, d_state=4, dt_rank=4
        )
        return Mamba3DConfig(**{**defaults, **kwargs})

    def num_tokens(self, config, num_points):
        return config.num_groups


def test_default_config_matches_paper_shapes_and_parameter_count():
    model = Mamba3DModel(Mamba3DConfig()).eval()
    assert sum(p.numel() for p in model.parameters()) == 22_031_616  # method reference section 15
    points = make_points(2, 1024)
    with torch.no_grad():
        out = model(points)
    assert out.last_hidden_state.shape == (2, 128, 384)
    assert out.anchor_points.shape == (2, 128, 3)


def test_channel_flip_branch_is_used_and_unidirectional_variant_is_smaller():
    bi = Mamba3DModel(TestMamba3D().tiny_config()).eval()
    uni = Mamba3DModel(TestMamba3D().tiny_config(bimamba_type="none"))
    assert hasattr(bi.blocks[0].mixer, "conv1d_b") and not hasattr(uni.blocks[0].mixer, "conv1d_b")
    assert sum(p.numel() for p in uni.parameters()) < sum(p.numel() for p in bi.parameters())
    points = make_points(1, 128)
    with torch.no_grad():
        before = bi(points).last_hidden_state
        for block in bi.blocks:
            block.mixer.D_b.add_(1.0)  # the backward branch's skip term feeds the output
        after = bi(points).last_hidden_state
    assert not torch.allclose(before, after)


def test_legacy_flags():
    base = TestMamba3D().tiny_config()
    torch.manual_seed(0)
    model = Mamba3DModel(base).eval()
    legacy = Mamba3DModel(TestMamba3D().tiny_config(legacy_cls_pos_anchors=True, lnp_std_over_batch=True)).eval()
    legacy.load_state_dict(model.state_dict())
    points = make_points(2, 128)
    with torch.no_grad():
        out = legacy(points)
    # every token's anchor is the CLS positional embedding's first 3 values (the paper code's behaviour)
    assert torch.equal(out.anchor_points, model.cls_pos[:, :, :3].expand(2, 16, 3))
    # one std over the batch: a sample's output then depends on its batch mates
    with torch.no_grad():
        alone = legacy(points[:1]).last_hidden_state[0]
    assert not torch.allclose(alone, out.last_hidden_state[0], atol=1e-5)


def test_bad_scan_backend_is_rejected():
    with pytest.raises(ValueError, match="selective_scan_backend"):
        Mamba3DConfig(selective_scan_backend="cuda-magic")


def test_mixer_equals_the_channels_last_mamba_formula():
    # mamba-ssm's Mamba.forward (slow path) with the channel-flip branch, written out channels-last: the mixer's
    # channels-first batched projections must compute the same function
    import torch.nn.functional as F

    from unipre3d_hf.modeling.layers import MambaMixer
    from unipre3d_hf.ops.selective_scan import selective_scan_torch

    torch.manual_seed(0)
    mixer = MambaMixer(16, d_state=4, dt_rank=2, bidirectional="channel_flip", scan_backend="torch").double()
    hidden = torch.randn(2, 9, 16, dtype=torch.float64)

    def branch(xz, conv1d, x_proj, dt_proj, A_log, D):
        x, z = xz.chunk(2, dim=1)
        x = F.silu(F.conv1d(x, conv1d.weight, conv1d.bias, padding=3, groups=x.shape[1])[..., :9])
        dt, B, C = x_proj(x.transpose(1, 2)).split([2, 4, 4], dim=-1)
        delta = F.linear(dt, dt_proj.weight).transpose(1, 2)
        return selective_scan_torch(x, delta, -A_log.exp(), B.mT, C.mT, D, z, dt_proj.bias, delta_softplus=True)

    xz = mixer.in_proj(hidden).transpose(1, 2)
    y = branch(xz, *list(mixer._branches())[0]) + branch(xz.flip(1), *list(mixer._branches())[1]).flip(1)
    torch.testing.assert_close(mixer(hidden), mixer.out_proj(y.transpose(1, 2)), rtol=1e-12, atol=1e-12)
