import math

import torch

from unipre3d_hf.rendering.sh import SH_C0, SH_C1, eval_sh_colors, sh_basis


def fibonacci_sphere(n: int) -> torch.Tensor:
    i = torch.arange(n, dtype=torch.float64) + 0.5
    phi = torch.acos(1 - 2 * i / n)
    theta = math.pi * (1 + 5**0.5) * i
    return torch.stack([torch.cos(theta) * torch.sin(phi), torch.sin(theta) * torch.sin(phi), torch.cos(phi)], -1)


def test_basis_is_orthonormal_up_to_degree_3():
    dirs = fibonacci_sphere(200_000)
    basis = sh_basis(3, dirs)  # [n, 16]
    gram = basis.T @ basis * (4 * math.pi / dirs.shape[0])  # quadrature of the integral over the sphere
    torch.testing.assert_close(gram, torch.eye(16, dtype=torch.float64), atol=2e-4, rtol=0)


def test_degree_one_closed_form_and_clamp():
    sh = torch.zeros(4, 3, dtype=torch.float64)
    sh[0] = torch.tensor([0.1, -0.2, 0.3])
    sh[1] = torch.tensor([0.5, 0.0, 0.0])  # pairs with -y
    sh[2] = torch.tensor([0.0, 0.5, 0.0])  # pairs with +z
    sh[3] = torch.tensor([0.0, 0.0, 0.5])  # pairs with -x
    d = torch.tensor([0.3, -0.4, 1.2], dtype=torch.float64)
    u = d / d.norm()
    expected = SH_C0 * sh[0] + SH_C1 * torch.tensor([-u[1] * 0.5, u[2] * 0.5, -u[0] * 0.5]) + 0.5
    torch.testing.assert_close(eval_sh_colors(sh, d), expected.clamp_min(0))
    very_dark = torch.full((1, 3), -10.0, dtype=torch.float64)
    assert (eval_sh_colors(very_dark, d) == 0).all()  # clamped at 0, never above unclamped
