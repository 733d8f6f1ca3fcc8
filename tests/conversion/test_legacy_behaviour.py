"""The original code's behaviours that converted checkpoints need, each stated directly on a small input."""

import torch

from unipre3d_hf import Mamba3DConfig, Mamba3DModel, PCMConfig, PCMModel, PTv3Config, PTv3Model
from unipre3d_hf.modeling.pcm import legacy_serialization_order
from unipre3d_hf.ops.sampling import farthest_point_sample, farthest_point_sample_pointnet2
from unipre3d_hf.ops.serialization import serialize, serialize_pcm_legacy

from ..models.scene_backbone_checks import two_scenes


def _tiny_ptv3(**kwargs):
    return PTv3Config(
        enc_depths=(1, 1, 1), enc_channels=(8, 16, 16), enc_num_head=(1, 2, 2), enc_patch_size=(16, 16, 16),
        dec_depths=(2, 1), dec_channels=(16, 16), dec_num_head=(2, 2), dec_patch_size=(16, 16), stride=(2, 2),
        drop_path=0.0, **kwargs,
    )  # fmt: skip


def _cpe_inputs(model, coords, feats, offsets):
    """The features every decoder block's CPE conv reads, the unpooling outputs and the projected skips."""
    seen, handles = {}, []
    for s, stage in enumerate(model.dec):
        for i, block in enumerate(stage.blocks):
            hook = lambda m, args, key=(s, i): seen.__setitem__(key, args[0].features.clone())  # noqa: E731
            handles.append(block.cpe_conv.register_forward_pre_hook(hook))
            out_hook = lambda m, args, out, key=("out", s, i): seen.__setitem__(key, out.clone())  # noqa: E731
            handles.append(block.register_forward_hook(out_hook))

        def unpool_hook(m, args, kwargs, out, s=s):
            seen[("skip", s)] = m.proj_skip(args[1])
            seen[("sum", s)] = (out[0] if isinstance(out, tuple) else out).clone()

        handles.append(stage.unpooling.register_forward_hook(unpool_hook, with_kwargs=True))
    with torch.no_grad():
        out = model(coords, feats, offsets).last_hidden_state
    for h in handles:
        h.remove()
    return seen, out


def test_ptv3_m1_first_decoder_cpe_reads_the_projected_skip_alone():
    coords, feats, offsets = two_scenes(60, 90)
    torch.manual_seed(0)
    legacy = PTv3Model(_tiny_ptv3(legacy_unpooling_cpe=True)).eval()
    default = PTv3Model(_tiny_ptv3()).eval()
    default.load_state_dict(legacy.state_dict())
    seen_legacy, out_legacy = _cpe_inputs(legacy, coords, feats, offsets)
    seen_default, out_default = _cpe_inputs(default, coords, feats, offsets)
    for s in range(2):
        # PT-v3m1: block 0's conv reads proj_skip(skip) (the sparse tensor proj_skip refreshed), not the sum ...
        torch.testing.assert_close(seen_legacy[(s, 0)], seen_legacy[("skip", s)], rtol=0, atol=0)
        assert not torch.allclose(seen_legacy[(s, 0)], seen_legacy[("sum", s)])
        # ... PT-v3m2 / Sonata (our default): it reads the sum
        torch.testing.assert_close(seen_default[(s, 0)], seen_default[("sum", s)], rtol=0, atol=0)
    assert not torch.allclose(out_legacy, out_default, atol=1e-4)
    # the stage's later blocks read the previous block's output (the sparse tensor is refreshed from then on)
    torch.testing.assert_close(seen_legacy[(0, 1)], seen_legacy[("out", 0, 0)], rtol=0, atol=0)


def test_pcm_legacy_axis_order_codes_by_hand():
    # grid maxima over the batch: A = 3 (x), B = 4 (y, even), C = 5 (z, odd). encode_cts gives
    # code1 = 4 * 3 + x, code2 = (5 + 1) * 3 * 4 - code1 = 60 - x, code = batch * 3 * 4 * 5 + code2
    grid = torch.tensor([[0, 4, 0], [3, 0, 5], [1, 2, 2], [2, 1, 1], [3, 3, 3], [0, 0, 0]])
    batch = torch.tensor([0, 0, 0, 1, 1, 1])
    codes = serialize_pcm_legacy(grid, batch, "xyz")
    torch.testing.assert_close(codes, 60 * batch + 60 - grid[:, 0], rtol=0, atol=0)
    # "zyx": a = z, maxima A = 5, B = 4 (even), C = 3 (odd): code = b * 60 + (3 + 1) * 5 * 4 - (4 * 5 + z)
    codes = serialize_pcm_legacy(grid, batch, "zyx")
    torch.testing.assert_close(codes, 60 * batch + 80 - 20 - grid[:, 2], rtol=0, atol=0)
    # all maxima even -> no sign flips: "xzy" with A = 4, B = 2, C = 2
    g2 = torch.tensor([[4, 2, 0], [1, 0, 2]])
    torch.testing.assert_close(serialize_pcm_legacy(g2, torch.tensor([0, 0]), "xzy"), 2 * 8 + 2 * 4 + g2[:, 0])
    # curves: depth = bit length of the batch's largest grid coordinate (5 -> 3 bits), not 16
    for order in ("hilbert", "z", "z-trans"):
        torch.testing.assert_close(serialize_pcm_legacy(grid, batch, order), serialize(grid, batch, order, depth=3))
    a = torch.argsort(serialize(grid, batch, "hilbert", depth=3), stable=True)
    b = torch.argsort(serialize(grid, batch, "hilbert"), stable=True)
    assert not torch.equal(a, b)  # the depth changes the Hilbert order


def test_pcm_legacy_order_sorts_each_cloud_by_its_first_axis_alone():
    g = torch.Generator().manual_seed(0)
    points = torch.rand(2, 64, 3, generator=g)
    perm = legacy_serialization_order(points, "yxz", 0.02)  # flat over the batch
    assert torch.equal(perm // 64, torch.arange(2).repeat_interleave(64))  # the samples stay apart
    grid = torch.floor(points / 0.02).long()
    grid = grid - grid.amin(dim=1, keepdim=True)
    y = grid.flatten(0, 1)[perm, 1].view(2, 64)
    B, C = int(grid[..., 0].max()), int(grid[..., 2].max())
    increasing = (B % 2 == 0) == (C % 2 == 0)  # the two sign flips cancel
    assert bool(((y[:, 1:] >= y[:, :-1]) if increasing else (y[:, 1:] <= y[:, :-1])).all())
    # the PCM model runs on it and depends on the flag
    config = dict(
        embed_dim=16, dim_expansion=[1, 2], reducers=[2, 2], k_neighbors=[8, 8], pre_blocks=[1, 1],
        mamba_blocks=[1, 2], mamba_orders=["xyz", "hilbert", "zyx"], d_state=4, decoder_dims=[16, 16],
        decoder_blocks=[1, 1], head_hidden_size=16, hidden_size=16, selective_scan_backend="torch",
    )  # fmt: skip
    torch.manual_seed(0)
    legacy = PCMModel(PCMConfig(**config, legacy_axis_orders=True)).eval()
    default = PCMModel(PCMConfig(**config)).eval()
    default.load_state_dict(legacy.state_dict())
    pts = torch.rand(2, 128, 3, generator=g)
    with torch.no_grad():
        assert not torch.allclose(legacy(pts).last_hidden_state, default(pts).last_hidden_state, atol=1e-5)


def test_pointnet2_fps_never_picks_points_near_the_origin():
    points = torch.tensor([[[1.0, 0, 0], [0, 0, 0.01], [-1, 0, 0], [0, 1, 0], [0, 0.02, 0]]])
    # |p|^2 = 1, 1e-4, 1, 1, 4e-4: points 1 and 4 are skipped; d(0, 2) = 4 > d(0, 3) = 2, then 3; then nothing is
    # left and the kernel returns index 0
    assert farthest_point_sample_pointnet2(points, 4).tolist() == [[0, 2, 3, 0]]
    assert farthest_point_sample(points, 4).tolist()[0][:3] == [0, 2, 3]  # ours goes on to a near-origin point
    assert farthest_point_sample(points, 4).tolist()[0][3] in (1, 4)
    g = torch.Generator().manual_seed(1)
    cloud = torch.randn(2, 256, 3, generator=g)
    cloud[:, 5] = 0.0  # a surface point at the centroid
    config = dict(num_groups=16, group_size=8, encoder_dims=32, hidden_size=32, num_hidden_layers=1, d_state=4)
    model = Mamba3DModel(Mamba3DConfig(**config, dt_rank=4, legacy_fps=True)).eval()
    with torch.no_grad():
        centres = model(cloud).anchor_points
    idx = farthest_point_sample_pointnet2(cloud, 16)
    torch.testing.assert_close(centres, torch.gather(cloud, 1, idx.unsqueeze(-1).expand(-1, -1, 3)), rtol=0, atol=0)
    assert not (idx == 5).any()
