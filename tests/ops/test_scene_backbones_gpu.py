"""GPU parity of the scene backbones' kernels (CUDA only; skipped elsewhere):
torch sparse conv vs spconv (ops and the whole Sparse UNet, outputs and gradients), padded-SDPA patch attention vs
the varlen kernels (flash-attn, torch varlen) inside PTv3.

Set ``UNIPRE3D_REPORT`` to a file path to append the measured differences as JSON lines.
"""

import unittest

import torch

from unipre3d_hf import PTv3Config, PTv3Model, SparseUNetConfig, SparseUNetModel
from unipre3d_hf.ops.attention import resolve_attention_backend
from unipre3d_hf.ops.sparse_conv import SparseConv3d, SparseInverseConv3d, SparseVoxels, SubMConv3d, pack_voxel_keys
from unipre3d_hf.testing_utils import require_cuda, require_spconv, write_report


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def room(num_points: int, seed: int, device="cuda"):
    g = torch.Generator().manual_seed(seed)
    # points on the six walls of a 6 x 5 x 3 m room plus a table: surface-like density, as ScanNet
    face = torch.randint(0, 6, (num_points,), generator=g)
    p = torch.rand(num_points, 3, generator=g) * torch.tensor([6.0, 5.0, 3.0])
    axis, value = face // 2, (face % 2).float()
    p[torch.arange(num_points), axis] = value * torch.tensor([6.0, 5.0, 3.0])[axis]
    return p.to(device), torch.randn(num_points, 6, generator=g).to(device)


def batch_of_rooms(sizes, device="cuda"):
    scenes = [room(n, i, device) for i, n in enumerate(sizes)]
    offsets = torch.tensor(sizes, device=device).cumsum(0)
    return torch.cat([s[0] for s in scenes]), torch.cat([s[1] for s in scenes]), offsets


@require_cuda
@require_spconv
class SparseConvGpuParity(unittest.TestCase):
    def _ops(self, backend: str, vox: SparseVoxels, modules, seed=1):
        vox = SparseVoxels(vox.features, vox.grid_coords, vox.batch_index, None, vox.batch_size, backend)
        feats = vox.features.detach().clone().requires_grad_(True)
        subm, stem, one, down, up = modules
        x = vox.replace_features(feats)
        h = subm(x).features + stem(x).features + one(x).features
        c = down(x.replace_features(h))
        u = up(c)
        sort = pack_voxel_keys(c.batch_index, c.grid_coords).argsort()
        g = torch.Generator(device="cuda").manual_seed(seed)
        loss = (u.features * torch.randn(u.features.shape, generator=g, device="cuda")).sum()
        loss = loss + (c.features[sort] * torch.randn(c.features.shape, generator=g, device="cuda")).sum()
        for m in modules:
            m.zero_grad()
        loss.backward()
        return [h, c.features[sort], u.features], [feats.grad] + [m.weight.grad.clone() for m in modules]

    def test_ops_outputs_and_gradients(self):
        coords, feats, offsets = batch_of_rooms([60_000, 40_000])
        model = SparseUNetModel(SparseUNetConfig(sparse_conv_backend="torch")).cuda()
        vox_torch, _ = model_embed(model, coords, feats, offsets)
        vox = SparseVoxels(
            torch.randn(vox_torch.num_voxels, 32, device="cuda"), vox_torch.grid_coords, vox_torch.batch_index,
            None, 2, "torch",
        )  # fmt: skip
        torch.manual_seed(0)
        modules = [
            SubMConv3d(32, 64, 3, indice_key="s"), SubMConv3d(32, 64, 5, padding=1, bias=False, indice_key="stem"),
            SubMConv3d(32, 64, 1), SparseConv3d(64, 96, 2, stride=2, bias=False, indice_key="d"),
            SparseInverseConv3d(96, 48, 2, indice_key="d", bias=False),
        ]  # fmt: skip
        modules = [m.cuda() for m in modules]
        ref_out, ref_grads = self._ops("spconv", vox, modules)
        our_out, our_grads = self._ops("torch", vox, modules)
        entry = {"test": "sparse_conv_ops", "voxels": vox.num_voxels}
        for name, a, b in zip(("subm", "strided", "inverse"), our_out, ref_out):
            entry[f"{name}_out_rel_l2"] = rel(a, b)
        for name, a, b in zip(("input", "subm_w", "stem_w", "one_w", "down_w", "up_w"), our_grads, ref_grads):
            entry[f"grad_{name}_rel_l2"] = rel(a, b)
        write_report(entry)
        for k, v in entry.items():
            if k.endswith("rel_l2"):
                self.assertLess(v, 1e-3, k)  # spconv may use TF32 / implicit GEMM: not bit-exact

    def test_sparse_unet_torch_vs_spconv(self):
        coords, feats, offsets = batch_of_rooms([80_000, 50_000])
        torch.manual_seed(0)
        model = SparseUNetModel(SparseUNetConfig()).cuda().eval()
        results = {}
        for backend in ("spconv", "torch"):
            model.config.sparse_conv_backend = backend
            model.zero_grad()
            out = model(coords, feats, offsets)
            out.last_hidden_state.square().mean().backward()
            results[backend] = (
                out.last_hidden_state.detach(),
                {n: p.grad.clone() for n, p in model.named_parameters()},
            )
        (a, ga), (b, gb) = results["torch"], results["spconv"]
        grad_rel = max(rel(ga[n], gb[n]) for n in ga)
        entry = write_report(
            {
                "test": "sparse_unet_model",
                "voxels": a.shape[0],
                "out_rel_l2": rel(a, b),
                "max_param_grad_rel_l2": grad_rel,
            }
        )
        self.assertLess(entry["out_rel_l2"], 1e-3)
        self.assertLess(entry["max_param_grad_rel_l2"], 1e-2)


def model_embed(model, coords, feats, offsets):
    from unipre3d_hf.modeling.sparse_unet import embed_scene

    return embed_scene(model.config, coords, feats, offsets, False)


@require_cuda
class PatchAttentionGpuParity(unittest.TestCase):
    def test_ptv3_attention_backends(self):
        coords, feats, offsets = batch_of_rooms([60_000, 30_000])
        torch.manual_seed(0)
        model = PTv3Model(PTv3Config(sparse_conv_backend="torch", attention_backend="torch")).cuda().eval()
        with torch.no_grad():
            ref = model(coords, feats, offsets).last_hidden_state
        kernels = [b for b in ("flash_attn", "torch_varlen") if _usable(b)]
        if not kernels:
            self.skipTest("neither flash-attn nor torch varlen attention is available")
        for backend in kernels:
            model.config.attention_backend = backend
            with torch.no_grad():
                out = model(coords, feats, offsets).last_hidden_state
            entry = write_report(
                {"test": "ptv3_attention", "backend": backend, "voxels": out.shape[0], "out_rel_l2": rel(out, ref)}
            )
            self.assertLess(entry["out_rel_l2"], 2e-2)  # the varlen kernels run in fp16, as Pointcept's flash path


def _usable(backend: str) -> bool:
    try:
        resolve_attention_backend(backend, torch.device("cuda"))
    except (ImportError, ValueError):
        return False
    return True
