"""Real spherical harmonics up to degree 3, in the basis and sign convention of 3D Gaussian Splatting.

The constants are the normalisation factors of the real SH basis functions (Y_l^m up to l = 3). The ordering and
signs follow 3DGS (Kerbl et al., SIGGRAPH 2023, ``computeColorFromSH`` in ``cuda_rasterizer/forward.cu``, itself from
PlenOctrees), which gsplat and the Inria rasterizer share, so coefficients move between all three backends.
"""

from __future__ import annotations

import torch
from torch import Tensor

SH_C0 = 0.28209479177387814  # 1 / (2 sqrt(pi))
SH_C1 = 0.4886025119029199  # sqrt(3) / (2 sqrt(pi))
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)


def sh_basis(degree: int, directions: Tensor) -> Tensor:
    """Evaluate the SH basis at unit ``directions`` ``[..., 3]``; returns ``[..., (degree + 1)^2]``."""
    if degree not in (0, 1, 2, 3):
        raise ValueError(f"`degree` must be in 0..3, got {degree}")
    x, y, z = directions.unbind(-1)
    basis = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        basis += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        basis += [
            SH_C2[0] * x * y,
            SH_C2[1] * y * z,
            SH_C2[2] * (2.0 * zz - xx - yy),
            SH_C2[3] * x * z,
            SH_C2[4] * (xx - yy),
        ]
    if degree >= 3:
        basis += [
            SH_C3[0] * y * (3.0 * xx - yy),
            SH_C3[1] * x * y * z,
            SH_C3[2] * y * (4.0 * zz - xx - yy),
            SH_C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy),
            SH_C3[4] * x * (4.0 * zz - xx - yy),
            SH_C3[5] * z * (xx - yy),
            SH_C3[6] * x * (xx - 3.0 * yy),
        ]
    return torch.stack(basis, dim=-1)


def eval_sh_colors(sh: Tensor, directions: Tensor, degree: int | None = None) -> Tensor:
    """Colours seen along ``directions``: ``max(sum_k basis_k(dir) * sh_k + 0.5, 0)`` (3DGS; no upper clamp).

    Args:
        sh (`Tensor` of shape `[..., K, 3]`): coefficients, ``K = (d + 1)^2``.
        directions (`Tensor` of shape `[..., 3]`): viewing directions (camera to Gaussian); normalised here.
        degree (`int`, *optional*): evaluate up to this degree (defaults to the degree of ``sh``).

    Returns:
        `Tensor` of shape `[..., 3]`.
    """
    if degree is None:
        degree = int(round(sh.shape[-2] ** 0.5)) - 1
    num = (degree + 1) ** 2
    if sh.shape[-2] < num:
        raise ValueError(f"`sh` has {sh.shape[-2]} coefficients, fewer than the {num} of degree {degree}")
    if degree == 0:
        rgb = SH_C0 * sh[..., 0, :]
    else:
        unit = directions / directions.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        rgb = (sh_basis(degree, unit)[..., None] * sh[..., :num, :]).sum(-2)
    return torch.clamp_min(rgb + 0.5, 0.0)
