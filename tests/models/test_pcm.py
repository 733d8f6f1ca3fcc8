import pytest
import torch

from unipre3d_hf import PCMConfig, PCMModel
from unipre3d_hf.modeling.pcm import serialization_order

from .object_backbone_common import ObjectBackboneTests, make_points


class TestPCM(ObjectBackboneTests):
    model_class = PCMModel
    num_points = 128

    def tiny_config(self, **kwargs):
        defaults = dict(
            embed_dim=16,
            dim_expansion=[1, 2],
            reducers=[2, 2],
            k_neighbors=[8, 8],
            pre_blocks=[1, 1],
            mamba_blocks=[1, 2],
            mamba_orders=["xyz", "hilbert", "z-trans"],
            d_state=4,
            decoder_dims=[16, 16],
            decoder_blocks=[1, 1],
            head_hidden_size=16,
            hidden_size=8,
            prompts_per_order=2,
            serialization_grid_size=0.05,
        )
        return PCMConfig(**{**defaults, **kwargs})

    def num_tokens(self, config, num_points):
        return num_points


def test_default_config_matches_paper_shapes_and_parameter_count():
    model = PCMModel(PCMConfig()).eval()
    # method reference section 15: 36,749,464 with the decoder's unused gmp_map layers (193,280 parameters, 18 BN
    # buffers), which this port leaves out
    assert sum(p.numel() for p in model.parameters()) == 36_749_464 - 193_280
    assert len(list(model.buffers())) == 96 - 18
    bidirectional = PCMModel(PCMConfig(bidirectional=True))
    assert sum(p.numel() for p in bidirectional.parameters()) == 38_378_392 - 193_280
    points = make_points(2, 1024)
    with torch.no_grad():
        out = model(points)
    assert out.last_hidden_state.shape == (2, 1024, 128)
    assert torch.equal(out.anchor_points, points)


def test_serialization_orders():
    # a 3 x 3 x 2 grid listed in random order; "zyx" sorts by z, then y, then x
    g = torch.stack(torch.meshgrid(torch.arange(3), torch.arange(3), torch.arange(2), indexing="ij"), -1).view(-1, 3)
    pts = (g.float() + 0.5)[torch.randperm(18)].unsqueeze(0)
    for order in ("xyz", "zyx", "yxz"):
        sorted_pts = pts[0, serialization_order(pts, order, grid_size=1.0)[0]]
        keys = [tuple(int(p[{"x": 0, "y": 1, "z": 2}[a]]) for a in order) for p in sorted_pts]
        assert keys == sorted(keys)
    perm = serialization_order(pts, "hilbert", grid_size=1.0)[0]
    assert sorted(perm.tolist()) == list(range(18))
    # consecutive cells of a Hilbert order on a full 2x2x2 cube are face neighbours
    cube = torch.stack(torch.meshgrid(*[torch.arange(2)] * 3, indexing="ij"), -1).view(1, 8, 3).float() + 0.5
    walk = cube[0, serialization_order(cube, "hilbert", 1.0)[0]]
    assert ((walk[1:] - walk[:-1]).abs().sum(-1) == 1).all()
    # translating a cloud does not change its order (codes are taken relative to its own minimum)
    assert torch.equal(serialization_order(pts + 7.3, "z", 1.0), serialization_order(pts, "z", 1.0))


def test_config_validation():
    with pytest.raises(ValueError, match="mamba_orders"):
        PCMConfig(mamba_orders=["xyz"])
    with pytest.raises(ValueError, match="unknown"):
        PCMConfig(mamba_blocks=[1, 0, 0, 0], mamba_orders=["xxy"])


def test_without_prompts_and_positions_still_runs():
    model = PCMModel(TestPCM().tiny_config(use_order_prompt=False, mamba_pos=False, bidirectional=True)).eval()
    with torch.no_grad():
        out = model(make_points(2, 64))
    assert out.last_hidden_state.shape == (2, 64, 8)
