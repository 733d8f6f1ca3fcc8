import pytest
import torch

from unipre3d_hf import PointMLPConfig, PointMLPModel
from unipre3d_hf.modeling.pointmlp import gravity_height

from .object_backbone_common import ObjectBackboneTests, make_points


class TestPointMLP(ObjectBackboneTests):
    model_class = PointMLPModel
    num_points = 128

    def tiny_config(self, **kwargs):
        defaults = dict(
            embed_dim=8,
            dim_expansion=[2, 2],
            reducers=[2, 2],
            k_neighbors=[8, 8],
            pre_blocks=[1, 1],
            pos_blocks=[1, 1],
            decoder_dims=[16, 12],
            decoder_blocks=[1, 1],
        )
        return PointMLPConfig(**{**defaults, **kwargs})

    def num_tokens(self, config, num_points):
        return num_points


def test_default_config_matches_paper_shapes_and_parameter_count():
    model = PointMLPModel(PointMLPConfig()).eval()
    # method reference section 15: 15,079,424 parameters and 171 buffers (57 BatchNorms)
    assert sum(p.numel() for p in model.parameters()) == 15_079_424
    assert len(list(model.buffers())) == 171
    points = make_points(2, 1024)
    with torch.no_grad():
        out = model(points, output_hidden_states=True)
    assert out.last_hidden_state.shape == (2, 1024, 128)
    assert torch.equal(out.anchor_points, points)
    # embedding + 4 stages (512, 256, 128, 64 points) + 4 decoder layers
    assert [h.shape[1] for h in out.hidden_states] == [1024, 512, 256, 128, 64, 128, 256, 512, 1024]
    assert [h.shape[2] for h in out.hidden_states] == [64, 128, 256, 512, 1024, 512, 256, 128, 128]


def test_height_channel_and_extra_features():
    config = TestPointMLP().tiny_config(feature_channels=3)
    model = PointMLPModel(config).eval()
    assert model.embedding[0].in_channels == 3 + 1 + 3
    points = make_points(2, 128)
    with torch.no_grad():
        out = model(points, features=torch.rand(2, 128, 3))
    assert out.last_hidden_state.shape == (2, 128, 12)
    with pytest.raises(ValueError, match="feature_channels"):
        model(points)


def test_gravity_height_is_height_above_the_lowest_point():
    points = torch.tensor([[[0.0, 0.0, -1.0], [1.0, 2.0, 0.5], [3.0, 1.0, 2.0]]])
    torch.testing.assert_close(gravity_height(points, 2)[0, :, 0], torch.tensor([0.0, 1.5, 3.0]))
    torch.testing.assert_close(gravity_height(points, 1)[0, :, 0], torch.tensor([0.0, 2.0, 1.0]))


def test_legacy_sampling_differs_but_runs():
    tiny = TestPointMLP().tiny_config()
    legacy = TestPointMLP().tiny_config(legacy_sampling=True)
    torch.manual_seed(0)
    a = PointMLPModel(tiny).eval()
    b = PointMLPModel(legacy).eval()
    b.load_state_dict(a.state_dict())
    points = make_points(2, 128)
    with torch.no_grad():
        fixed, old = a(points).last_hidden_state, b(points).last_hidden_state
    assert fixed.shape == old.shape and torch.isfinite(old).all()
    assert not torch.allclose(fixed, old)
