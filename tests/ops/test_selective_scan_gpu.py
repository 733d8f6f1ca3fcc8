"""torch twin vs mamba-ssm's ``selective_scan_fn`` at Mamba3D and PCM sizes (CUDA + mamba-ssm only; skipped elsewhere).

Both are also compared with the twin run in float64, which tells which of the two float32 paths is closer to exact.
Set ``UNIPRE3D_REPORT`` to a file path to append the measured differences as JSON lines.
"""

import unittest

import torch

from unipre3d_hf.ops.selective_scan import _is_causal_conv1d_available, causal_conv1d, selective_scan
from unipre3d_hf.testing_utils import require_cuda, require_mamba_ssm, write_report

from .test_selective_scan import NAMES, mamba_like_inputs


def _run(inputs: dict, backend: str, dtype: torch.dtype, weight: torch.Tensor):
    leaves = {k: v.to(dtype).detach().requires_grad_(True) for k, v in inputs.items()}
    y = selective_scan(**leaves, delta_softplus=True, backend=backend)
    (y * weight.to(dtype)).sum().backward()
    return y.detach().double(), {k: v.grad.double() for k, v in leaves.items()}


def _diff(a: torch.Tensor, b: torch.Tensor) -> dict:
    return {
        "max_abs": (a - b).abs().max().item(),
        "rel_max": ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item(),
        "rel_l2": ((a - b).norm() / b.norm().clamp_min(1e-30)).item(),
    }


def compare(name: str, batch: int, dim: int, length: int, seed: int = 0) -> dict:
    inputs = {k: v.cuda() for k, v in mamba_like_inputs(batch, dim, length, seed=seed, dtype=torch.float32).items()}
    weight = torch.randn(batch, dim, length, generator=torch.Generator().manual_seed(seed + 1)).cuda()
    y_k, g_k = _run(inputs, "cuda", torch.float32, weight)
    y_t, g_t = _run(inputs, "torch", torch.float32, weight)
    y_x, g_x = _run(inputs, "torch", torch.float64, weight)  # the twin in float64: the closest to exact
    report = {"workload": name, "shape": {"batch": batch, "dim": dim, "L": length, "N": 16}}
    for key, ours, ref in [("y", y_t, y_k), *((f"grad_{k}", g_t[k], g_k[k]) for k in NAMES)]:
        report[f"{key}_twin_vs_kernel"] = _diff(ours, ref)
    for key, kern, twin, exact in [("y", y_k, y_t, y_x), *((f"grad_{k}", g_k[k], g_t[k], g_x[k]) for k in NAMES)]:
        errors = {"kernel": _diff(kern, exact)["rel_l2"], "twin": _diff(twin, exact)["rel_l2"]}
        report[f"{key}_rel_l2_vs_float64"] = errors
    return write_report(report)


@require_mamba_ssm
class TwinVsMambaSsmParity(unittest.TestCase):
    def check(self, report: dict) -> None:
        self.assertLess(report["y_twin_vs_kernel"]["rel_max"], 1e-4)
        for k in NAMES:
            self.assertLess(report[f"grad_{k}_twin_vs_kernel"]["rel_l2"], 1e-3, k)

    def test_mamba3d_size(self):
        # Mamba3D: d_inner 768, 128 patch tokens + CLS, d_state 16, batch 32
        self.check(compare("mamba3d B=32 d=768 L=129 N=16", batch=32, dim=768, length=129))

    def test_pcm_size(self):
        # PCM: widest stage d_inner 1536, 1024 points + 2 x 6 order prompts, d_state 16
        self.check(compare("pcm B=32 d=1536 L=1036 N=16", batch=32, dim=1536, length=1036, seed=1))

    def test_auto_backend_is_the_kernel_on_cuda(self):
        inputs = {k: v.cuda() for k, v in mamba_like_inputs(2, 64, 100, dtype=torch.float32).items()}
        auto = selective_scan(**inputs, delta_softplus=True)
        kernel = selective_scan(**inputs, delta_softplus=True, backend="mamba_ssm")
        torch.testing.assert_close(auto, kernel, rtol=0, atol=0)


@require_cuda
class CausalConv1dGpu(unittest.TestCase):
    def test_torch_path_on_cuda_matches_cpu(self):
        g = torch.Generator().manual_seed(0)
        x, w, b = torch.randn(4, 768, 129, generator=g), torch.randn(768, 4, generator=g), torch.randn(768, generator=g)
        cpu = causal_conv1d(x, w, b, activation="silu", backend="torch")
        gpu = causal_conv1d(x.cuda(), w.cuda(), b.cuda(), activation="silu", backend="torch")
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-5)

    @unittest.skipUnless(_is_causal_conv1d_available(), "needs the causal-conv1d package")
    def test_kernel_matches_torch(self):
        g = torch.Generator().manual_seed(0)
        x, w, b = torch.randn(4, 768, 129, generator=g), torch.randn(768, 4, generator=g), torch.randn(768, generator=g)
        x, w, b = x.cuda(), w.cuda(), b.cuda()
        kernel = causal_conv1d(x, w, b, activation="silu", backend="cuda")
        twin = causal_conv1d(x, w, b, activation="silu", backend="torch")
        torch.testing.assert_close(kernel, twin, rtol=1e-4, atol=1e-4)
