"""torch-vs-gsplat parity on the paper's two workloads (CUDA + gsplat only; skipped elsewhere).

Set ``UNIPRE3D_REPORT`` to a file path to append the measured differences as JSON lines.
"""

import unittest

import torch

from unipre3d_hf.rendering import Gaussians, render
from unipre3d_hf.rendering.synthetic import object_workload, scene_workload
from unipre3d_hf.testing_utils import require_gsplat, write_report

PARAMS = ("means", "quats", "scales", "opacities", "sh")


def _render_with_grads(gauss: Gaussians, cams, backend: str, bg, seed: int):
    params = [getattr(gauss, k).detach().clone().requires_grad_(True) for k in PARAMS]
    out = render(Gaussians(*params, gauss.mask), cams, background=bg, backend=backend)
    gen = torch.Generator(device=out.colors.device).manual_seed(seed)
    w_rgb = torch.rand(out.colors.shape, generator=gen, device=out.colors.device)
    w_alpha = torch.rand(out.alphas.shape, generator=gen, device=out.colors.device)
    ((out.colors * w_rgb).sum() + (out.alphas * w_alpha).sum()).backward()
    return out, {k: p.grad for k, p in zip(PARAMS, params)}


def compare(name: str, gauss: Gaussians, cams, bg) -> dict:
    gauss = Gaussians(*(getattr(gauss, k).cuda() for k in PARAMS))
    cams = cams.to("cuda")
    ref, ref_grads = _render_with_grads(gauss, cams, "gsplat", bg, seed=1)
    ours, our_grads = _render_with_grads(gauss, cams, "torch", bg, seed=1)
    diff = (ours.colors - ref.colors).abs()
    drawn = (ref.alphas > 0.5) & (ours.alphas > 0.5)
    report = {
        "workload": name,
        "color_max_abs": diff.max().item(),
        "color_mean_abs": diff.mean().item(),
        "alpha_max_abs": (ours.alphas - ref.alphas).abs().max().item(),
        "depth_mean_abs_where_alpha>0.5": (ours.depths - ref.depths)[drawn].abs().mean().item(),
    }
    for k in PARAMS:
        g_ref, g_ours = ref_grads[k], our_grads[k]
        report[f"grad_{k}_max_abs"] = (g_ours - g_ref).abs().max().item()
        report[f"grad_{k}_mean_abs"] = (g_ours - g_ref).abs().mean().item()
        report[f"grad_{k}_rel_l2"] = ((g_ours - g_ref).norm() / g_ref.norm().clamp_min(1e-30)).item()
    return write_report(report)


@require_gsplat
class TorchVsGsplatParity(unittest.TestCase):
    def check(self, report: dict) -> None:
        self.assertLess(report["color_mean_abs"], 1e-3)
        self.assertLess(report["color_max_abs"], 5e-2)
        self.assertLess(report["depth_mean_abs_where_alpha>0.5"], 1e-3)
        for k in PARAMS:
            self.assertLess(report[f"grad_{k}_rel_l2"], 1e-2, k)

    def test_object_workload(self):
        gauss, cams = object_workload(batch=32, views=4, num=1024, size=128)
        self.check(compare("object 32x4 views, 1024 Gaussians, 128x128", gauss, cams, bg=[0.0, 0.0, 0.0]))

    def test_scene_workload(self):
        gauss, cams = scene_workload(num=150_000, views=8, width=160, height=120)
        self.check(compare("scene 8 views, 150k Gaussians, 160x120", gauss, cams, bg=[1.0, 1.0, 1.0]))

    def test_padding_mask(self):
        gauss, cams = object_workload(batch=4, views=2, num=256, size=64, seed=3)
        mask = torch.rand(4, 256, generator=torch.Generator().manual_seed(0)) > 0.3
        masked = Gaussians(gauss.means, gauss.quats, gauss.scales, gauss.opacities, gauss.sh, mask)
        masked = Gaussians(*(getattr(masked, k).cuda() for k in (*PARAMS, "mask")))
        cams = cams.to("cuda")
        a = render(masked, cams, backend="gsplat").colors
        b = render(masked, cams, backend="torch").colors
        self.assertLess((a - b).abs().mean().item(), 1e-3)
