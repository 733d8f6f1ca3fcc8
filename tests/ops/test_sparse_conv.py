"""Sparse conv: the torch twin against dense Conv3d references, and against spconv's CPU build when installed."""

import pytest
import torch
import torch.nn.functional as F

from unipre3d_hf.ops.sparse_conv import (
    SparseConv3d,
    SparseInverseConv3d,
    SparseVoxels,
    SubMConv3d,
    pack_voxel_keys,
    resolve_sparse_conv_backend,
)
from unipre3d_hf.testing_utils import require_spconv_cpu

SIZE = 8  # dense reference grid per axis


def random_voxels(n=120, channels=3, batch_size=2, seed=0, dtype=torch.float64, backend="torch"):
    g = torch.Generator().manual_seed(seed)
    grid = torch.randint(0, SIZE, (n, 3), generator=g)
    batch = torch.randint(0, batch_size, (n,), generator=g)
    keys = pack_voxel_keys(batch, grid)
    _, first = torch.unique(keys, return_inverse=True)
    rows = torch.full((int(first.max()) + 1,), n).scatter_reduce(0, first, torch.arange(n), "amin")
    grid, batch = grid[rows], batch[rows]
    feats = torch.randn(rows.numel(), channels, generator=g, dtype=dtype)
    return SparseVoxels(feats, grid, batch, None, batch_size, backend)


def dense(vox: SparseVoxels, features: torch.Tensor, size=SIZE) -> torch.Tensor:
    out = features.new_zeros(vox.batch_size, features.shape[1], size, size, size)
    g = vox.grid_coords
    out[vox.batch_index, :, g[:, 0], g[:, 1], g[:, 2]] = features
    return out


def at_sites(volume, batch, grid):
    return volume[batch, :, grid[:, 0], grid[:, 1], grid[:, 2]]


@pytest.mark.parametrize("kernel", [1, 3, 5])
def test_submanifold_matches_dense_conv3d(kernel):
    vox = random_voxels()
    conv = SubMConv3d(3, 4, kernel, bias=True).double()
    out = conv(vox).features
    w = conv.weight.permute(0, 4, 1, 2, 3)  # spconv [out, kD, kH, kW, in] -> torch [out, in, kD, kH, kW]
    if kernel == 1:  # spconv's 1x1 convs read the weight storage as an [in, out] matrix (see ops/sparse_conv.py)
        w = conv.weight.reshape(3, 4).T.reshape(4, 3, 1, 1, 1)
    ref = F.conv3d(dense(vox, vox.features), w, conv.bias, padding=kernel // 2)
    torch.testing.assert_close(out, at_sites(ref, vox.batch_index, vox.grid_coords))


def test_strided_and_inverse_match_dense_conv3d_and_conv_transpose3d():
    vox = random_voxels(n=200, seed=1)
    down = SparseConv3d(3, 5, 2, stride=2, bias=False, indice_key="d").double()
    up = SparseInverseConv3d(5, 2, 2, indice_key="d", bias=False).double()
    coarse = down(vox)
    # dense reference: every coarse cell with at least one fine voxel, conv3d k2 s2
    ref = F.conv3d(dense(vox, vox.features), down.weight.permute(0, 4, 1, 2, 3), stride=2)
    occupied = F.max_pool3d(dense(vox, torch.ones_like(vox.features[:, :1])), 2, 2)[:, 0] > 0
    assert coarse.num_voxels == int(occupied.sum())
    assert occupied[
        coarse.batch_index, coarse.grid_coords[:, 0], coarse.grid_coords[:, 1], coarse.grid_coords[:, 2]
    ].all()
    torch.testing.assert_close(coarse.features, at_sites(ref, coarse.batch_index, coarse.grid_coords))
    # inverse: conv_transpose3d of the coarse features, read at the fine voxels, in the fine voxels' row order
    fine = up(coarse)
    assert torch.equal(fine.grid_coords, vox.grid_coords) and torch.equal(fine.batch_index, vox.batch_index)
    coarse_dense = dense(coarse, coarse.features, size=SIZE // 2)
    ref_up = F.conv_transpose3d(coarse_dense, up.weight.permute(4, 0, 1, 2, 3), stride=2)
    torch.testing.assert_close(fine.features, at_sites(ref_up, vox.batch_index, vox.grid_coords))


def test_gradients_match_finite_differences():
    vox = random_voxels(n=30, channels=2, seed=2)
    conv = SubMConv3d(2, 2, 3, bias=True).double()
    feats = vox.features.clone().requires_grad_(True)
    torch.autograd.gradcheck(
        lambda f, w: conv.__class__.forward(conv, vox.replace_features(f)).features * 1.0, (feats, conv.weight)
    )


def test_kernel_maps_are_cached_per_indice_key():
    vox = random_voxels()
    a, b = SubMConv3d(3, 3, 3, indice_key="k").double(), SubMConv3d(3, 3, 3, indice_key="k").double()
    out = a(vox)
    assert "torch:k" in vox.kernel_maps and out.kernel_maps is vox.kernel_maps
    cached = vox.kernel_maps["torch:k"]
    b(out)
    assert vox.kernel_maps["torch:k"] is cached
    appended = vox.append(vox.features[:2], vox.grid_coords[:2], vox.batch_index[:2])
    assert appended.kernel_maps == {} and appended.num_voxels == vox.num_voxels + 2


def test_backend_resolution_and_errors():
    assert resolve_sparse_conv_backend("auto", torch.device("cpu")) == "torch"
    with pytest.raises(ValueError, match="sparse_conv_backend"):
        resolve_sparse_conv_backend("minkowski", torch.device("cpu"))
    with pytest.raises(ValueError, match="indice_key"):
        SparseInverseConv3d(2, 2, 2, indice_key="never").double()(random_voxels(channels=2))
    with pytest.raises(ValueError, match="expects features"):
        SubMConv3d(4, 2, 3)(random_voxels(channels=3, dtype=torch.float32))


def _conv_outputs(backend: str):
    """Outputs of a subm k3, the stem's subm k5, a strided k2 conv and its inverse, all sharing one kernel-map cache.
    Forward only: spconv's CPU build has no backward (it asks for a CUDA stream); the GPU test compares gradients."""
    torch.manual_seed(0)
    vox = random_voxels(n=300, channels=4, seed=3, dtype=torch.float32, backend=backend)
    subm = SubMConv3d(4, 6, 3, bias=True, indice_key="s")
    stem = SubMConv3d(4, 6, 5, padding=1, bias=False, indice_key="stem")
    down = SparseConv3d(6, 8, 2, stride=2, bias=False, indice_key="d")
    up = SparseInverseConv3d(8, 6, 2, indice_key="d", bias=False)
    one = SubMConv3d(4, 6, 1, bias=True)
    with torch.no_grad():
        h = subm(vox).features + stem(vox).features + one(vox).features
        c = down(vox.replace_features(h))
        out = up(c)
    sort = pack_voxel_keys(c.batch_index, c.grid_coords).argsort()
    return [h, c.features[sort], c.grid_coords[sort], out.features]


@require_spconv_cpu
def test_torch_twin_matches_spconv_cpu():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # spconv's CPU kernels are only correct single-threaded
    try:
        ref = _conv_outputs("spconv")
        ours = _conv_outputs("torch")
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
