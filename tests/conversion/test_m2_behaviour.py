"""PT-v3m2 / Sonata's behaviours (PTv3Config's m2 fields), each restated in plain torch on a small input, after
Pointcept's ``point_transformer_v3m2_sonata.py`` and ``facebookresearch/sonata`` (``model.py``, ``structure.py``)."""

import pytest
import torch
import torch.nn.functional as F

from unipre3d_hf import PTv3Config, PTv3Model
from unipre3d_hf.ops.serialization import serialize

from ..models.scene_backbone_checks import two_scenes

EXTENT = (0.24, 0.24, 0.16)  # 12 x 12 x 8 cells of 2 cm: the poolings merge voxels


def _m2(**kwargs):
    fields = dict(
        enc_depths=(1, 1, 1), enc_channels=(8, 16, 16), enc_num_head=(1, 2, 2), enc_patch_size=(16, 16, 16),
        dec_depths=(), dec_channels=(), dec_num_head=(), dec_patch_size=(), stride=(2, 2), drop_path=0.0,
        order=("z", "hilbert"), stem_type="linear", norm_type="layer", pooling_type="grid", serialization_depth=None,
        enc_mode=True,
    )  # fmt: skip
    return PTv3Config(**{**fields, **kwargs})


def _randomise(model):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():  # LayerScale gammas around 1, so the branches count
            p.copy_(0.3 * torch.randn(p.shape, generator=g) + (1.0 if name.endswith("gamma") else 0.0))
    return model.eval()


def _capture(model, modules):
    """``{name: (args, output)}`` of each named submodule during one forward."""
    seen = {}
    handles = [
        m.register_forward_hook(lambda mod, args, out, name=name: seen.__setitem__(name, (args, out)))
        for name, m in modules.items()
    ]
    return seen, handles


def _depth(grid):  # Pointcept's Point.serialization(depth=None)
    return int(grid.max() + 1).bit_length()


def test_linear_stem_and_mask_token():
    model = _randomise(PTv3Model(_m2(mask_token=True)))
    coords, feats, offsets = two_scenes(80, 100, EXTENT)
    with torch.no_grad():
        out = model(coords, feats, offsets, output_hidden_states=True)
    p2t = out.point_to_token
    n = int(p2t.max()) + 1
    rows = torch.arange(p2t.numel())
    first = torch.full((n,), p2t.numel()).scatter_reduce(0, p2t, rows, reduce="amin")  # eval: a voxel's first point
    # Sonata's Embedding: stem = Linear -> LayerNorm -> GELU on each (grid-sampled) point
    lin, ln = model.stem_linear, model.stem_norm
    expected = F.gelu(F.layer_norm(feats[first] @ lin.weight.T + lin.bias, (8,), ln.weight, ln.bias, 1e-5))
    torch.testing.assert_close(out.hidden_states[0], expected, rtol=1e-5, atol=1e-6)
    # ... then where(mask, mask_token, feat) (a voxel is masked when any of its points is)
    mask = torch.rand(coords.shape[0], generator=torch.Generator().manual_seed(2)) < 0.3
    with torch.no_grad():
        masked = model(coords, feats, offsets, output_hidden_states=True, mask=mask).hidden_states[0]
    voxel_masked = torch.zeros(n, dtype=torch.bool)
    voxel_masked[p2t[mask]] = True
    assert 0 < int(voxel_masked.sum()) < n
    torch.testing.assert_close(masked, torch.where(voxel_masked[:, None], model.mask_token, expected))
    with pytest.raises(ValueError, match=r"`mask` must be a bool tensor of shape \[P\] = \[180\]"):
        model(coords, feats, offsets, mask=mask[:5])
    with pytest.raises(ValueError, match="config.mask_token=True"):
        PTv3Model(_m2())(coords, feats, offsets, mask=mask)


@pytest.mark.parametrize("stride", [2, 3])
def test_grid_pooling_and_batch_depth_serialization(stride):
    model = _randomise(PTv3Model(_m2(stride=(stride, 2))))
    pooling = model.enc[1].pooling
    seen, handles = _capture(model, {"pool": pooling, "block0": model.enc[0].blocks[0]})
    coords, feats, offsets = two_scenes(80, 100, EXTENT)
    with torch.no_grad():
        model(coords, feats, offsets)
    for h in handles:
        h.remove()
    (features, level, _), (pooled, coarse, cluster) = seen["pool"]
    grid, batch = level.voxels.grid_coords, level.voxels.batch_index
    # the input level: codes at depth int(grid.max() + 1).bit_length() over the batch, in `order`'s order
    codes = torch.stack([serialize(grid, batch, o, depth=_depth(grid)) for o in ("z", "hilbert")])
    assert torch.equal(seen["block0"][0][1].codes, codes) and _depth(grid) < 16
    # GridPooling: unique rows of (grid // stride) | batch << 48, sorted; the cluster is their inverse
    keys = torch.div(grid, stride, rounding_mode="trunc") | (batch[:, None] << 48)
    unique, inverse = torch.unique(keys, sorted=True, return_inverse=True, dim=0)
    assert torch.equal(cluster, inverse) and unique.shape[0] < grid.shape[0]
    coarse_grid = unique & ((1 << 48) - 1)
    assert torch.equal(coarse.voxels.grid_coords, coarse_grid)
    assert torch.equal(coarse.voxels.batch_index, unique[:, 0] >> 48)
    # feat = segment max of proj(feat), then LayerNorm, then GELU; coord = segment mean
    proj = features @ pooling.proj.weight.T + pooling.proj.bias
    maxed = torch.stack([proj[inverse == j].amax(0) for j in range(unique.shape[0])])
    ln = pooling.norm
    torch.testing.assert_close(pooled, F.gelu(F.layer_norm(maxed, (16,), ln.weight, ln.bias, 1e-5)))
    means = torch.stack([level.coords[inverse == j].mean(0) for j in range(unique.shape[0])])
    torch.testing.assert_close(coarse.coords, means)
    # the coarse level is serialized afresh from its own grid (depth of its own maximum), in `order`'s order
    b = coarse.voxels.batch_index
    fresh = torch.stack([serialize(coarse_grid, b, o, depth=_depth(coarse_grid)) for o in ("z", "hilbert")])
    assert torch.equal(coarse.codes, fresh)


def test_non_power_of_two_strides_need_grid_pooling():
    with pytest.raises(ValueError, match="powers of 2 .* for serialized pooling"):
        _m2(stride=(3, 2), pooling_type="serialized")
    with pytest.raises(ValueError, match="`pooling_type` must be one of"):
        _m2(pooling_type="voxel")


def test_layer_scale_scales_both_residual_branches():
    model = _randomise(PTv3Model(_m2(layer_scale=1e-5, enc_depths=(2, 1, 1))))
    block = model.enc[0].blocks[1]
    assert not torch.allclose(block.ls1.gamma, torch.ones(8))  # trained values, not the init
    seen, handles = _capture(model, {"block": block, "cpe": block.cpe_norm, "attn": block.attn, "mlp": block.mlp})
    coords, feats, offsets = two_scenes(80, 100, EXTENT)
    with torch.no_grad():
        model(coords, feats, offsets)
    for h in handles:
        h.remove()
    x, out = seen["block"][0][0], seen["block"][1]
    cpe, attn, mlp = seen["cpe"][1], seen["attn"][1], seen["mlp"][1]
    # Block.forward (pre-norm): x += cpe(x); x += ls1(attn(norm1(x))); x += ls2(mlp(norm2(x)))
    h1 = x + cpe
    torch.testing.assert_close(seen["attn"][0][0], block.norm1(h1))
    h2 = h1 + block.ls1.gamma * attn
    torch.testing.assert_close(seen["mlp"][0][0], block.norm2(h2))
    torch.testing.assert_close(out, h2 + block.ls2.gamma * mlp)


def test_encoder_only_output_is_pointcepts_feature_upcasting():
    model = _randomise(PTv3Model(_m2()))
    seen, handles = _capture(model, {"pool1": model.enc[1].pooling, "pool2": model.enc[2].pooling})
    coords, feats, offsets = two_scenes(80, 100, EXTENT)
    outputs = {}
    with torch.no_grad():
        for k in (None, 2, 1):
            model.config.enc_upcast_stages = k
            outputs[k] = model(coords, feats, offsets, output_hidden_states=True)
    for h in handles:
        h.remove()
    c0, c1 = seen["pool1"][1][2], seen["pool2"][1][2]  # pooling_inverse of stage 0 -> 1 and 1 -> 2
    _, f0, f1, f2 = outputs[None].hidden_states  # the stem, then the three encoder stages
    # DefaultSegmentorV2: while pooling_parent: parent.feat = cat([parent.feat, point.feat[inverse]])
    torch.testing.assert_close(outputs[None].last_hidden_state, torch.cat([f0, torch.cat([f1, f2[c1]], 1)[c0]], 1))
    # Sonata's demo (up_cast_level=2 of 5 stages): concatenate the deepest stages only, then copy to the finer ones
    torch.testing.assert_close(outputs[2].last_hidden_state, torch.cat([f1, f2[c1]], 1)[c0])
    torch.testing.assert_close(outputs[1].last_hidden_state, f2[c1][c0])
    assert outputs[None].last_hidden_state.shape == (f0.shape[0], 40)
    assert [PTv3Config(**{**_m2().to_dict(), "enc_upcast_stages": k}).hidden_size for k in (None, 2, 1)] == [40, 32, 16]
