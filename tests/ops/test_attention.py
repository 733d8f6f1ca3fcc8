import pytest
import torch

from unipre3d_hf.ops.attention import build_patches, resolve_attention_backend, serialized_patch_attention


def reference_patch_attention(qkv, order, counts, k, scale):
    """Explicit per-patch loop: the patches described in ops/attention.py, softmax(q k^T * scale) v per head."""
    out_sorted = torch.zeros(qkv.shape[0], qkv.shape[2], qkv.shape[3], dtype=qkv.dtype)
    done = torch.zeros(qkv.shape[0], dtype=torch.bool)
    q_all = qkv[order]
    start = 0
    for n in counts.tolist():
        if n <= k:
            patches = [(start, start + n)]
        else:
            patches = [(start + j, start + j + k) for j in range(0, n - k + 1, k)]
            if n % k:
                patches.append((start + n - k, start + n))
        for lo, hi in patches:
            q, kk, v = q_all[lo:hi].unbind(1)  # [n, H, D]
            att = torch.einsum("nhd,mhd->hnm", q, kk) * scale
            res = torch.einsum("hnm,mhd->nhd", att.softmax(-1), v)
            for t in range(lo, hi):
                if not done[t]:
                    out_sorted[t] = res[t - lo]
                    done[t] = True
        start += n
    assert done.all()
    out = torch.empty_like(out_sorted)
    out[order] = out_sorted
    return out


@pytest.mark.parametrize("counts", [[5], [16], [37, 3, 16, 50], [1, 100]])
def test_torch_backend_matches_explicit_per_patch_loop(counts):
    g = torch.Generator().manual_seed(sum(counts))
    n, k = sum(counts), 16
    qkv = torch.randn(n, 3, 2, 8, generator=g, dtype=torch.float64)
    order = torch.randperm(n, generator=g)
    # order must be scene after scene: permute rows within each scene only
    sizes = torch.tensor(counts)
    scene = torch.repeat_interleave(torch.arange(len(counts)), sizes)
    order = order[torch.argsort(scene[order], stable=True)]
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(n)
    ours = serialized_patch_attention(qkv, order, inverse, sizes, k, backend="torch")
    ref = reference_patch_attention(qkv, order, sizes, k, 8**-0.5)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


def test_patches_do_not_depend_on_the_other_scenes():
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(120, 3, 2, 4, generator=g)
    order = torch.arange(120)
    alone = serialized_patch_attention(qkv[:100], order[:100], order[:100], torch.tensor([100]), 48)
    batched = serialized_patch_attention(qkv, order, order, torch.tensor([100, 20]), 48)
    torch.testing.assert_close(batched[:100], alone)


def test_patch_layout():
    layout = build_patches(torch.tensor([10, 4, 9]), 4)
    # scene 0: [0,4) [4,8) [6,10); scene 1: [10,14); scene 2: [14,18) [18,22) [19,23)
    assert layout.patch_lengths.tolist() == [4] * 7
    assert layout.token_index.view(7, 4)[2].tolist() == [6, 7, 8, 9]
    assert layout.token_index.view(7, 4)[6].tolist() == [19, 20, 21, 22]
    owned = layout.token_index[layout.owner]
    assert torch.equal(owned, torch.arange(23))  # every token takes its output from a slot holding itself


def test_backend_resolution():
    assert resolve_attention_backend("auto", torch.device("cpu")) == "torch"
    with pytest.raises(ValueError, match="attention_backend"):
        resolve_attention_backend("xformers", torch.device("cpu"))
    with pytest.raises(ValueError, match="qkv"):
        serialized_patch_attention(torch.zeros(4, 2, 1, 1), torch.arange(4), torch.arange(4), torch.tensor([4]), 2)
