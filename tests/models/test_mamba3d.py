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
