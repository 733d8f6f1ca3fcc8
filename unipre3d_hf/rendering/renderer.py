"""``render()``: all samples x all views of a batch of Gaussians in one call, with a choice of rasterizer.

Backends:

- ``"gsplat"``: gsplat's ``rasterization`` in one batched call (CUDA only; ``pip install 'unipre3d_hf[gpu]'``).
- ``"torch"``: the pure-PyTorch twin in ``_torch_impl.py``; same function, any device, any float dtype.
- ``"inria"``: an adapter for Inria's ``diff_gaussian_rasterization`` (the paper's rasterizer), one call per view.
  Opt-in only: that package is under a **non-commercial research licence** (Inria / MPII Gaussian-Splatting License),
  so it is never chosen automatically. It hard-codes a near plane of 0.2 and ignores ``cameras.near/far``.
- ``"auto"``: gsplat when it is installed and the inputs are float32 on CUDA, otherwise torch.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..utils.import_utils import is_gsplat_available, require_package
from ._torch_impl import DEFAULT_TILE_SIZE, rasterize_torch
from .cameras import Cameras
from .gaussians import Gaussians

BACKENDS = ("auto", "gsplat", "torch", "inria")
GSPLAT_TILE_SIZE = 16  # gsplat's own default


@dataclass
class RenderOutput:
    """What :func:`render` returns.

    Attributes:
        colors (`Tensor` of shape `[B, V, H, W, 3]`): composited colours over the background; not clamped.
        alphas (`Tensor` of shape `[B, V, H, W]`): accumulated opacity ``1 - T_final``.
        depths (`Tensor` of shape `[B, V, H, W]`): expected camera-space depth ``sum(w_i z_i) / alpha`` (0 where
            nothing was drawn).
        backend (`str`): the backend that ran.
    """

    colors: Tensor
    alphas: Tensor
    depths: Tensor
    backend: str


def _background_tensor(background, batch: int, views: int, device, dtype, check_values: bool = True) -> Tensor:
    """``[B, V, 3]`` background colours; numbers are always checked to be finite and in [0, 1], tensors when
    ``check_values`` (a device sync)."""
    if background is None:
        return torch.zeros(batch, views, 3, device=device, dtype=dtype)
    if not isinstance(background, Tensor):
        if isinstance(background, (int, float)):
            background = [float(background)] * 3
        if not isinstance(background, Sequence) or len(background) != 3:
            raise ValueError(f"`background` must be 3 numbers or a tensor [3], [B, 3] or [B, V, 3], got {background!r}")
        try:
            values = [float(v) for v in background]
        except (TypeError, ValueError) as err:
            raise ValueError(f"`background` must be 3 numbers in [0, 1], got {background!r}") from err
        if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values):
            raise ValueError(f"`background` must be 3 finite numbers in [0, 1], got {values}")
        background = torch.tensor(values, dtype=dtype, device=device)
        check_values = False
    if not background.is_floating_point():
        raise ValueError(f"`background` must be a floating-point tensor, got {background.dtype}")
    if background.device != device:
        raise ValueError(f"`background` is on {background.device} but the Gaussians are on {device}")
    if background.shape[-1:] != (3,) or background.dim() > 3:
        raise ValueError(f"`background` must have shape [3], [B, 3] or [B, V, 3], got {tuple(background.shape)}")
    if background.dim() == 1:
        background = background.expand(batch, views, 3)
    elif background.dim() == 2:
        if background.shape[0] != batch:
            raise ValueError(f"`background` of shape [B, 3] needs B={batch}, got {tuple(background.shape)}")
        background = background[:, None, :].expand(batch, views, 3)
    elif tuple(background.shape[:2]) != (batch, views):
        raise ValueError(f"`background` of shape [B, V, 3] needs [B={batch}, V={views}], got {tuple(background.shape)}")
    if check_values:
        lo, hi = torch.aminmax(background.detach().float())
        lo, hi = float(lo), float(hi)
        if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 <= lo and hi <= 1.0):
            raise ValueError(
                f"`background` must be finite and in [0, 1], got values in [{lo}, {hi}]"
                + (" (NaN)" if torch.isnan(background).any() else "")
            )
    return background.to(dtype)


def _resolve_backend(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"`backend` must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "gsplat" if device.type == "cuda" and dtype == torch.float32 and is_gsplat_available() else "torch"
    if backend == "gsplat":
        require_package("gsplat", 'render(backend="gsplat")')
        if device.type != "cuda":
            raise ValueError(f'render(backend="gsplat") needs CUDA tensors, got {device}; use backend="torch" on CPU')
        if dtype != torch.float32:
            raise ValueError(f'render(backend="gsplat") needs float32 inputs, got {dtype}')
    if backend == "inria":
        require_package("diff_gaussian_rasterization", 'render(backend="inria")')
    return backend


def render(
    gaussians: Gaussians,
    cameras: Cameras,
    background: Tensor | Sequence[float] | float | None = None,
    backend: str = "auto",
    *,
    sh_degree: int | None = None,
    antialiased: bool = True,
    eps2d: float = 0.3,
    tile_size: int | None = None,
    chunk_elements: int | None = None,
    check_inputs: bool = True,
) -> RenderOutput:
    """Rasterize ``B`` samples of Gaussians into their ``V`` views each, differentiably.

    Args:
        gaussians: :class:`Gaussians` with tensors ``[B, N, ...]`` (padding masked out by ``gaussians.mask``).
        cameras: :class:`Cameras` with ``[B, V]`` views, on the same device as the Gaussians.
        background: RGB behind the Gaussians, finite and in [0, 1]: 3 numbers, or a tensor ``[3]``, ``[B, 3]`` or
            ``[B, V, 3]`` (default black). Numbers are always checked; tensor values with ``check_inputs``.
        backend: ``"auto" | "gsplat" | "torch" | "inria"`` (see module docstring).
        sh_degree: SH degree to evaluate (default: the degree of ``gaussians.sh``).
        antialiased: 3DGS's antialiasing (Mip-Splatting opacity compensation for the 0.3 px low-pass), as the paper
            uses. ``False`` gives the classic mode.
        eps2d: the low-pass filter added to 2D covariances, in px^2.
        tile_size: tile edge in pixels (default 16 for gsplat, 8 for torch, whose cost grows with the pixels
            evaluated per Gaussian; the image does not depend on it).
        chunk_elements: torch backend only, the memory bound of one chunk (see ``rasterize_torch``).
        check_inputs: validate values (NaN, quaternion norms, ranges); costs a device sync. Shapes are always checked.

    Returns:
        :class:`RenderOutput` with ``colors [B, V, H, W, 3]``, ``alphas [B, V, H, W]``, ``depths [B, V, H, W]``.
    """
    if not isinstance(gaussians, Gaussians):
        raise ValueError(f"`gaussians` must be a Gaussians instance, got {type(gaussians).__name__}")
    if not isinstance(cameras, Cameras):
        raise ValueError(f"`cameras` must be a Cameras instance, got {type(cameras).__name__}")
    if cameras.device != gaussians.device:
        raise ValueError(f"`cameras` are on {cameras.device} but `gaussians` are on {gaussians.device}")
    if cameras.batch_size != gaussians.batch_size:
        raise ValueError(f"`cameras` has B={cameras.batch_size} samples but `gaussians` has B={gaussians.batch_size}")
    if sh_degree is None:
        sh_degree = gaussians.sh_degree
    elif not 0 <= sh_degree <= gaussians.sh_degree:
        raise ValueError(f"`sh_degree` must be in 0..{gaussians.sh_degree} for these SH coefficients, got {sh_degree}")
    if check_inputs:
        gaussians.check_values()
    dtype = gaussians.means.dtype
    if cameras.dtype != dtype:
        cameras = cameras.to(dtype=dtype)
    bg = _background_tensor(background, cameras.batch_size, cameras.num_views, gaussians.device, dtype, check_inputs)
    chosen = _resolve_backend(backend, gaussians.device, dtype)
    if sh_degree < gaussians.sh_degree:
        k = (sh_degree + 1) ** 2
        gaussians = Gaussians(
            gaussians.means, gaussians.quats, gaussians.scales, gaussians.opacities, gaussians.sh[:, :, :k],
            gaussians.mask,
        )  # fmt: skip
    if chosen == "torch":
        colors, alphas, depths = rasterize_torch(
            gaussians, cameras, bg, eps2d=eps2d, antialiased=antialiased,
            tile_size=tile_size or DEFAULT_TILE_SIZE, chunk_elements=chunk_elements,
        )  # fmt: skip
    elif chosen == "gsplat":
        colors, alphas, depths = _render_gsplat(
            gaussians, cameras, bg, sh_degree, antialiased, eps2d, tile_size or GSPLAT_TILE_SIZE
        )
    else:
        if eps2d != 0.3:
            warnings.warn("the inria backend has a fixed 0.3 px low-pass; `eps2d` is ignored", stacklevel=2)
        colors, alphas, depths = _render_inria(gaussians, cameras, bg, sh_degree, antialiased)
    return RenderOutput(colors=colors, alphas=alphas, depths=depths, backend=chosen)


def _render_gsplat(
    gaussians: Gaussians, cameras: Cameras, bg: Tensor, sh_degree: int, antialiased: bool, eps2d: float, tile_size: int
) -> tuple[Tensor, Tensor, Tensor]:
    from gsplat import rasterization

    opacities = gaussians.opacities
    if gaussians.mask is not None:  # padding: zero opacity is culled by gsplat's projection
        opacities = torch.where(gaussians.mask, opacities, torch.zeros_like(opacities))
    out, alphas, _ = rasterization(
        means=gaussians.means.contiguous(),
        quats=gaussians.quats.contiguous(),
        scales=gaussians.scales.contiguous(),
        opacities=opacities.contiguous(),
        colors=gaussians.sh.contiguous(),
        viewmats=cameras.world_to_camera.contiguous(),
        Ks=cameras.K.contiguous(),
        width=cameras.width,
        height=cameras.height,
        near_plane=cameras.near,
        far_plane=cameras.far,
        eps2d=eps2d,
        sh_degree=sh_degree,
        tile_size=tile_size,
        packed=False,  # padded [B, N] inputs; gsplat's packed mode also can't take per-image backgrounds
        backgrounds=bg.contiguous(),
        render_mode="RGB+ED",
        rasterize_mode="antialiased" if antialiased else "classic",
    )
    return out[..., :3], alphas[..., 0], out[..., 3]


def _render_inria(
    gaussians: Gaussians, cameras: Cameras, bg: Tensor, sh_degree: int, antialiased: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """One Inria rasterizer call per (sample, view), plus a second pass for alpha and depth.

    The Inria rasterizer returns only colour (and inverse depth), so alpha and expected depth come from a second
    pass with precomputed per-Gaussian "colours" ``(1, z, 0)`` on a black background: channel 0 accumulates
    ``sum w_i = alpha``, channel 1 ``sum w_i z_i``.
    """
    from diff_gaussian_rasterization import GaussianRasterizationSettings, GaussianRasterizer

    has_aa = "antialiasing" in getattr(GaussianRasterizationSettings, "_fields", ())
    if antialiased and not has_aa:
        raise ValueError(
            "the installed diff_gaussian_rasterization has no `antialiasing` setting; update it or pass "
            "antialiased=False"
        )
    mats = cameras.to_3dgs()
    quats = torch.nn.functional.normalize(gaussians.quats, dim=-1)  # it does not normalise them itself
    valid = gaussians.valid_mask()
    depth_cam = (
        torch.einsum("bvj,bnj->bvn", cameras.world_to_camera[..., 2, :3], gaussians.means)
        + cameras.world_to_camera[..., 2, 3][:, :, None]
    )
    zeros_bg = torch.zeros(3, dtype=bg.dtype, device=bg.device)
    colors, alphas, depths = [], [], []
    for b in range(cameras.batch_size):
        keep = valid[b]
        means = gaussians.means[b][keep]
        common = {
            "opacities": gaussians.opacities[b][keep][:, None],
            "scales": gaussians.scales[b][keep],
            "rotations": quats[b][keep],
            "cov3D_precomp": None,
        }
        for v in range(cameras.num_views):
            settings = {
                "image_height": cameras.height,
                "image_width": cameras.width,
                "tanfovx": float(mats["tan_half_fov"][b, v, 0]),
                "tanfovy": float(mats["tan_half_fov"][b, v, 1]),
                "scale_modifier": 1.0,
                "viewmatrix": mats["world_view_transform"][b, v],
                "projmatrix": mats["full_proj_transform"][b, v],
                "campos": mats["camera_center"][b, v],
                "prefiltered": False,
                "debug": False,
            }
            if has_aa:
                settings["antialiasing"] = antialiased
            raster = GaussianRasterizer(GaussianRasterizationSettings(bg=bg[b, v], sh_degree=sh_degree, **settings))
            out = raster(
                means3D=means, means2D=torch.zeros_like(means, requires_grad=means.requires_grad),
                shs=gaussians.sh[b][keep], colors_precomp=None, **common,
            )  # fmt: skip
            aux_colors = torch.stack(
                [
                    torch.ones_like(depth_cam[b, v][keep]),
                    depth_cam[b, v][keep],
                    torch.zeros_like(depth_cam[b, v][keep]),
                ],
                dim=-1,
            )
            aux_raster = GaussianRasterizer(GaussianRasterizationSettings(bg=zeros_bg, sh_degree=0, **settings))
            aux = aux_raster(
                means3D=means, means2D=torch.zeros_like(means, requires_grad=means.requires_grad),
                shs=None, colors_precomp=aux_colors, **common,
            )  # fmt: skip
            colors.append(out[0].permute(1, 2, 0))
            alphas.append(aux[0][0])
            depths.append(aux[0][1] / torch.clamp_min(aux[0][0], 1e-10))
    shape = (cameras.batch_size, cameras.num_views, cameras.height, cameras.width)
    return (
        torch.stack(colors).reshape(*shape, 3),
        torch.stack(alphas).reshape(shape),
        torch.stack(depths).reshape(shape),
    )
