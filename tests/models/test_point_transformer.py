import torch

from unipre3d_hf import PointTransformerConfig, PointTransformerModel

from .object_backbone_common import ObjectBackboneTests, make_points


class TestPointTransformer(ObjectBackboneTests):
    model_class = PointTransformerModel
    num_points = 128

    def tiny_config(self, **kwargs):
        defaults = dict(
            num_groups=16,
            group_size=8,
            group_radius=0.3,
            encoder_dims=32,
            hidden_size=24,
            num_hidden_layers=2,
            num_attention_heads=2,
        )
        return PointTransformerConfig(**{**defaults, **kwargs})

    def num_tokens(self, config, num_points):
        return config.num_groups


def test_default_config_matches_paper_shapes_and_parameter_count():
    model = PointTransformerModel(PointTransformerConfig()).eval()
    assert sum(p.numel() for p in model.parameters()) == 29_066_880  # method reference section 15
    points = make_points(2, 1024)
    with torch.no_grad():
        out = model(points, output_hidden_states=True)
    assert out.last_hidden_state.shape == (2, 128, 384)
    assert out.anchor_points.shape == (2, 128, 3)
    assert len(out.hidden_states) == 17 and out.hidden_states[0].shape == (2, 129, 384)


def test_knn_grouper_and_features():
    model = PointTransformerModel(TestPointTransformer().tiny_config(grouper="knn", feature_channels=2)).eval()
    with torch.no_grad():
        out = model(make_points(2, 64), features=torch.rand(2, 64, 2))
    assert out.last_hidden_state.shape == (2, 16, 24)
