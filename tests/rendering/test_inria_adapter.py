"""The Inria adapter, run against a stand-in for `diff_gaussian_rasterization` (not installable here).

The stand-in checks that the adapter hands it exactly the matrices 3DGS would build itself (view matrix transposed,
full projection = view @ P^T with 3DGS's own projection formula, camera centre) and then rasterizes with the torch
backend, so the adapter's output must equal a direct torch render.
"""

import sys
import types
from typing import NamedTuple

import pytest
import torch

import unipre3d_hf.rendering.renderer as render_module
from unipre3d_hf.rendering import Cameras, Gaussians, render
from unipre3d_hf.rendering.sh import SH_C0
from unipre3d_hf.rendering.synthetic import orbit_cameras, random_gaussians

NEAR, FAR = 0.2, 100.0


def projection_matrix_3dgs(znear, zfar, tanfovx, tanfovy):
    """3DGS's getProjectionMatrix (utils/graphics_utils.py), written out from its definition."""
    top, right = tanfovy * znear, tanfovx * znear
    p = torch.zeros(4, 4, dtype=torch.float64)
    p[0, 0] = 2 * znear / (2 * right)
    p[1, 1] = 2 * znear / (2 * top)
    p[3, 2] = 1.0
    p[2, 2] = zfar / (zfar - znear)
    p[2, 3] = -(zfar * znear) / (zfar - znear)
    return p


class Settings(NamedTuple):
    image_height: int
    image_width: int
    tanfovx: float
    tanfovy: float
    bg: torch.Tensor
    scale_modifier: float
    viewmatrix: torch.Tensor
    projmatrix: torch.Tensor
    sh_degree: int
    campos: torch.Tensor
    prefiltered: bool
    debug: bool
    antialiasing: bool


class FakeRasterizer:
    calls = 0

    def __init__(self, raster_settings):
        self.s = raster_settings

    def __call__(
        self,
        means3D,
        means2D,
        opacities,
        shs=None,
        colors_precomp=None,
        scales=None,
        rotations=None,
        cov3D_precomp=None,
    ):
        s = self.s
        FakeRasterizer.calls += 1
        expected = s.viewmatrix @ projection_matrix_3dgs(NEAR, FAR, s.tanfovx, s.tanfovy).T.to(s.viewmatrix)
        torch.testing.assert_close(s.projmatrix, expected)
        torch.testing.assert_close(s.campos, torch.linalg.inv(s.viewmatrix)[3, :3])
        torch.testing.assert_close(rotations.norm(dim=-1), torch.ones_like(rotations[:, 0]))
        assert (shs is None) != (colors_precomp is None) and cov3D_precomp is None
        sh = shs if colors_precomp is None else ((colors_precomp - 0.5) / SH_C0)[:, None, :]
        cams = Cameras.from_3dgs(
            s.viewmatrix[None, None], s.tanfovx, s.tanfovy, s.image_width, s.image_height, near=NEAR, far=FAR
        )
        g = Gaussians(means3D[None], rotations[None], scales[None], opacities[None, :, 0], sh[None])
        out = render(
            g,
            cams,
            background=s.bg,
            backend="torch",
            sh_degree=s.sh_degree if shs is not None else 0,
            antialiased=s.antialiasing,
        )
        return out.colors[0, 0].permute(2, 0, 1), torch.zeros(means3D.shape[0], dtype=torch.int32), None


@pytest.fixture
def fake_inria(monkeypatch):
    module = types.ModuleType("diff_gaussian_rasterization")
    module.GaussianRasterizationSettings = Settings
    module.GaussianRasterizer = FakeRasterizer
    monkeypatch.setitem(sys.modules, "diff_gaussian_rasterization", module)
    monkeypatch.setattr(render_module, "require_package", lambda *a, **k: None)
    FakeRasterizer.calls = 0
    return module


def test_inria_adapter_matches_torch_backend(fake_inria):
    g = random_gaussians(2, 60, extent=0.3, scale_range=(0.02, 0.06), sh_degree=1, seed=3, dtype=torch.float64)
    masked = Gaussians(g.means, g.quats * 3.0, g.scales, g.opacities, g.sh, torch.rand(2, 60) > 0.2)
    cams = orbit_cameras(2, 3, radius=1.6, width=40, height=30, fov_x_deg=55, dtype=torch.float64, near=NEAR)
    cams = Cameras(cams.world_to_camera, cams.intrinsics, 40, 30, near=NEAR, far=FAR)
    bg = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    ours = render(masked, cams, background=bg, backend="torch")
    inria = render(masked, cams, background=bg, backend="inria")
    assert inria.backend == "inria" and FakeRasterizer.calls == 2 * 3 * 2  # colour + alpha/depth pass per view
    torch.testing.assert_close(inria.colors, ours.colors)
    torch.testing.assert_close(inria.alphas, ours.alphas)
    torch.testing.assert_close(inria.depths, ours.depths)


def test_inria_adapter_refuses_antialiasing_on_old_versions(fake_inria):
    class OldSettings(NamedTuple):
        image_height: int

    fake_inria.GaussianRasterizationSettings = OldSettings
    g = random_gaussians(1, 5, extent=0.3, scale_range=(0.02, 0.06))
    cams = orbit_cameras(1, 1, radius=1.6, width=8, height=8, fov_x_deg=55)
    with pytest.raises(ValueError, match="antialiasing"):
        render(g, cams, backend="inria")
