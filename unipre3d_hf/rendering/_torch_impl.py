"""Pure-PyTorch Gaussian rasterizer: the twin of gsplat's ``rasterization`` (3DGS, pinhole), on CPU and GPU.

It computes the same function as gsplat 1.5 (Ye et al., "gsplat", JMLR 2025; itself the EWA splatting of Kerbl et
al., "3D Gaussian Splatting", SIGGRAPH 2023):

1. Projection, per Gaussian and camera (gsplat ``ProjectionEWA3DGSFused.cu`` / ``persp_proj``):
   Sigma = R S S^T R^T from the normalised quaternion and the scales; camera-space covariance W Sigma W^T;
   2D covariance J W Sigma W^T J^T with the perspective Jacobian J evaluated at the mean, whose x/z and y/z are clamped
   to 1.3x the field of view (``lim = (W - cx) / fx + 0.3 W / (2 fx)``); 2D mean ``(fx x/z + cx, fy y/z + cy)``.
   Low-pass: 0.3 px added to the diagonal; in antialiased mode the opacity is multiplied by
   ``sqrt(det(cov2d) / det(cov2d + 0.3 I))`` (Yu et al., "Mip-Splatting", CVPR 2024).
   Culled: depth outside [near, far], non-positive determinant, opacity (after compensation) below 1/255, a
   bounding box off the image. The box is opacity-aware, ``extent = min(3.33, sqrt(2 ln(255 opacity)))`` standard
   deviations per axis (Radl et al., "StopThePop", SIGGRAPH 2024, sec. B.2): outside it a Gaussian's alpha is below
   1/255 by construction, so evaluating it only in the tiles its box touches changes nothing.
2. Colour: SH evaluated in the direction (mean - camera centre), + 0.5, clamped at 0 (see ``sh.py``).
3. Compositing, per pixel (centre at +0.5), front to back in depth order:
   ``alpha = min(0.999, o exp(-0.5 d^T conic d))``; skipped when the exponent is negative or alpha < 1/255;
   the pixel stops (exclusively) at the first Gaussian that would bring the transmittance T to <= 1e-4;
   ``colour = sum_i T_i alpha_i c_i + T_final bg``. The image is not clamped.

Implementation: Gaussians are binned into square tiles of ``tile_size`` px; tiles are processed in chunks of similar
length, each padded to its longest depth-sorted list, with the compositing written as a cumulative sum of
``log(1 - alpha)``. When more than one chunk is needed and gradients are on, each chunk is recomputed in the backward
pass (activation checkpointing), which bounds memory by the chunk size instead of the whole image set.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .cameras import Cameras
from .gaussians import Gaussians
from .sh import eval_sh_colors

ALPHA_THRESHOLD = 1.0 / 255.0
MAX_ALPHA = 0.999
TRANSMITTANCE_THRESHOLD = 1e-4
#: default bound on (tiles x padded Gaussians x pixels per tile) processed at once
DEFAULT_CHUNK_ELEMENTS = 1 << 24
#: the torch backend's cost grows with the pixels evaluated per Gaussian: 8 px tiles were 2.7x faster than 16 on CPU
DEFAULT_TILE_SIZE = 8


def quaternion_to_rotation(quats: Tensor) -> Tensor:
    """Rotation matrices ``[..., 3, 3]`` from quaternions ``[..., 4]`` (w, x, y, z), each normalised first."""
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    rows = [
        torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ]
    return torch.stack(rows, dim=-2)


def project_gaussians(
    gaussians: Gaussians, cameras: Cameras, eps2d: float = 0.3, antialiased: bool = True
) -> dict[str, Tensor]:
    """Project every Gaussian into every view (step 1 and 2 above).

    Returns a dict of ``[B, V, N, ...]`` tensors: ``means2d`` (..., 2), ``depths``, ``conics`` (..., 3) as
    ``(a, b, c)`` of the inverse 2D covariance, ``opacities`` (compensated in antialiased mode), ``colors`` (..., 3),
    ``radii`` (..., 2) integer pixel half-extents of the bounding box, and ``valid`` (bool, not culled).
    """
    width, height = cameras.width, cameras.height
    rot_cam = cameras.world_to_camera[..., :3, :3]  # [B, V, 3, 3]
    trans_cam = cameras.world_to_camera[..., :3, 3]  # [B, V, 3]
    means_c = torch.einsum("bvij,bnj->bvni", rot_cam, gaussians.means) + trans_cam[:, :, None, :]  # [B, V, N, 3]
    x, y, z = means_c.unbind(-1)

    rot = quaternion_to_rotation(gaussians.quats)  # [B, N, 3, 3]
    half = rot * gaussians.scales[..., None, :]  # R S
    cov3d = half @ half.transpose(-1, -2)  # [B, N, 3, 3]
    cov_c = torch.einsum("bvij,bnjk,bvlk->bvnil", rot_cam, cov3d, rot_cam)  # [B, V, N, 3, 3]

    fx, fy, cx, cy = (t[:, :, None] for t in cameras.intrinsics.unbind(-1))  # [B, V, 1]
    in_depth = (z >= cameras.near) & (z <= cameras.far)
    z_safe = torch.where(in_depth, z, torch.ones_like(z))
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos, lim_x_neg = (width - cx) / fx + 0.3 * tan_fovx, cx / fx + 0.3 * tan_fovx
    lim_y_pos, lim_y_neg = (height - cy) / fy + 0.3 * tan_fovy, cy / fy + 0.3 * tan_fovy
    tx = z_safe * torch.minimum(torch.maximum(x / z_safe, -lim_x_neg), lim_x_pos)
    ty = z_safe * torch.minimum(torch.maximum(y / z_safe, -lim_y_neg), lim_y_pos)
    rz = 1.0 / z_safe
    zeros = torch.zeros_like(rz)
    jac = torch.stack(
        [
            torch.stack([fx * rz, zeros, -fx * tx * rz * rz], -1),
            torch.stack([zeros, fy * rz, -fy * ty * rz * rz], -1),
        ],
        dim=-2,
    )  # [B, V, N, 2, 3]
    cov2d = jac @ cov_c @ jac.transpose(-1, -2)  # [B, V, N, 2, 2]
    means2d = torch.stack([fx * x * rz + cx, fy * y * rz + cy], dim=-1)

    a, b, c = cov2d[..., 0, 0], cov2d[..., 0, 1], cov2d[..., 1, 1]
    det_orig = a * c - b * b
    a_blur, c_blur = a + eps2d, c + eps2d
    det = a_blur * c_blur - b * b
    det_pos = det > 0
    det_safe = torch.where(det_pos, det, torch.ones_like(det))
    conics = torch.stack([c_blur / det_safe, -b / det_safe, a_blur / det_safe], dim=-1)
    opacities = gaussians.opacities[:, None, :].expand_as(z)
    if antialiased:
        # sqrt(max(0, ratio)), written so that a zero ratio gives a zero (not NaN) gradient
        ratio = det_orig / det_safe
        ratio_pos = ratio > 0
        compensation = torch.where(ratio_pos, torch.sqrt(torch.where(ratio_pos, ratio, torch.ones_like(ratio))), 0.0)
        opacities = opacities * compensation

    with torch.no_grad():
        opac_ok = opacities >= ALPHA_THRESHOLD
        extent = torch.clamp(
            torch.sqrt(2.0 * torch.log(torch.clamp_min(opacities, ALPHA_THRESHOLD) / ALPHA_THRESHOLD)), max=3.33
        )
        radius_x = torch.ceil(extent * torch.sqrt(torch.clamp_min(a_blur, 0.0)))
        radius_y = torch.ceil(extent * torch.sqrt(torch.clamp_min(c_blur, 0.0)))
        mx, my = means2d[..., 0], means2d[..., 1]
        on_image = (mx + radius_x > 0) & (mx - radius_x < width) & (my + radius_y > 0) & (my - radius_y < height)
        valid = in_depth & det_pos & opac_ok & on_image & ((radius_x > 0) | (radius_y > 0))
        valid = valid & gaussians.valid_mask()[:, None, :]
        radii = torch.stack([radius_x, radius_y], -1).to(torch.int64)

    campos = cameras.camera_centers  # [B, V, 3]
    dirs = gaussians.means[:, None, :, :] - campos[:, :, None, :]  # [B, V, N, 3]
    sh = gaussians.sh[:, None].expand(-1, dirs.shape[1], -1, -1, -1)
    colors = eval_sh_colors(sh, dirs)
    return {
        "means2d": means2d,
        "depths": z,
        "conics": conics,
        "opacities": opacities,
        "colors": colors,
        "radii": radii,
        "valid": valid,
    }


def _intersect_tiles(
    means2d: Tensor, radii: Tensor, depths: Tensor, valid: Tensor, tile_size: int, tiles_x: int, tiles_y: int
) -> tuple[Tensor, Tensor]:
    """List (tile, Gaussian) pairs, sorted by tile then depth.

    Args: ``[I, N, ...]`` tensors for I images. Returns ``tile_ids`` ``[M]`` (``image * tiles_y * tiles_x + row *
    tiles_x + col``) and ``gauss_ids`` ``[M]`` (flat index into ``[I * N]``).
    """
    num_gauss = means2d.shape[1]
    flat = valid.reshape(-1).nonzero().squeeze(1)  # indices into [I * N]
    image = flat // num_gauss
    m = means2d.reshape(-1, 2)[flat]
    r = radii.reshape(-1, 2)[flat].to(m.dtype)
    x0 = torch.clamp(torch.floor((m[:, 0] - r[:, 0]) / tile_size), 0, tiles_x).long()
    x1 = torch.clamp(torch.ceil((m[:, 0] + r[:, 0]) / tile_size), 0, tiles_x).long()
    y0 = torch.clamp(torch.floor((m[:, 1] - r[:, 1]) / tile_size), 0, tiles_y).long()
    y1 = torch.clamp(torch.ceil((m[:, 1] + r[:, 1]) / tile_size), 0, tiles_y).long()
    span_x = (x1 - x0).clamp_min(0)
    counts = span_x * (y1 - y0).clamp_min(0)
    num_pairs = int(counts.sum())  # read once for both expansions (each would read it again)
    owner = torch.repeat_interleave(torch.arange(flat.shape[0], device=flat.device), counts, output_size=num_pairs)
    local = torch.arange(num_pairs, device=flat.device) - torch.repeat_interleave(
        torch.cumsum(counts, 0) - counts, counts, output_size=num_pairs
    )
    col = x0[owner] + local % span_x[owner]
    row = y0[owner] + local // span_x[owner]
    tile_ids = image[owner] * (tiles_x * tiles_y) + row * tiles_x + col
    gauss_ids = flat[owner]
    # depth order first, then a stable sort by tile keeps it within each tile
    by_depth = torch.argsort(depths.reshape(-1)[gauss_ids])
    tile_ids, gauss_ids = tile_ids[by_depth], gauss_ids[by_depth]
    by_tile = torch.sort(tile_ids, stable=True).indices
    return tile_ids[by_tile], gauss_ids[by_tile]


def _gather_rows(source: Tensor, index: Tensor) -> Tensor:
    """``source[index]`` (``source`` ``[N, ...]``, ``index`` ``[T, K]`` -> ``[T, K, ...]``), through ``index_select``.

    The gradients then add up with ``index_add_``, in index order on CPU. ``source[index]`` would give its gradient
    through ``index_put_(accumulate=True)``, which on CPU with several threads adds float32 with atomics in whatever
    order the threads reach them (``index_put`` with accumulate in PyTorch's aten/src/ATen/native/cpu/IndexKernel.cpp,
    when deterministic algorithms are off): two identical backward passes differed by ~1e-5, and it was 10x slower.
    """
    return source.index_select(0, index.reshape(-1)).reshape(*index.shape, *source.shape[1:])


def _composite_tiles(
    pix: Tensor, means2d: Tensor, conics: Tensor, opacities: Tensor, features: Tensor, slot_valid: Tensor
) -> tuple[Tensor, Tensor]:
    """Front-to-back compositing of depth-sorted, padded per-tile lists.

    Args:
        pix: ``[T, P, 2]`` pixel centres; means2d ``[T, K, 2]``; conics ``[T, K, 3]``; opacities ``[T, K]``;
        features ``[T, K, C]`` (colour, then depth); slot_valid ``[T, K]`` bool (False for padding).
    Returns:
        accumulated features ``[T, P, C]`` (without background) and alpha ``[T, P]``.
    """
    delta = means2d[:, :, None, :] - pix[:, None, :, :]  # [T, K, P, 2]
    dx, dy = delta.unbind(-1)
    ca, cb, cc = (t[..., None] for t in conics.unbind(-1))
    sigma = 0.5 * (ca * dx * dx + cc * dy * dy) + cb * dx * dy
    alpha = torch.clamp_max(opacities[..., None] * torch.exp(-sigma), MAX_ALPHA)
    keep = (sigma >= 0) & (alpha >= ALPHA_THRESHOLD) & slot_valid[..., None]
    alpha = torch.where(keep, alpha, torch.zeros_like(alpha))
    log_t = torch.cumsum(torch.log1p(-alpha), dim=1)  # log T after each Gaussian
    with torch.no_grad():
        contributes = log_t > math.log(TRANSMITTANCE_THRESHOLD)
    log_t_before = torch.cat([torch.zeros_like(log_t[:, :1]), log_t[:, :-1]], dim=1)
    weights = torch.where(contributes, alpha * torch.exp(log_t_before), torch.zeros_like(alpha))  # [T, K, P]
    return torch.einsum("tkp,tkc->tpc", weights, features), weights.sum(1)


def rasterize_torch(
    gaussians: Gaussians,
    cameras: Cameras,
    background: Tensor,
    eps2d: float = 0.3,
    antialiased: bool = True,
    tile_size: int = DEFAULT_TILE_SIZE,
    chunk_elements: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Render ``[B, V, H, W, 3]`` colours, ``[B, V, H, W]`` alphas and expected depths (see module docstring).

    ``background`` is ``[B, V, 3]``. ``chunk_elements`` bounds tiles x padded list length x pixels per tile of one
    chunk (default ``2**24``: about 1 GB of float32 intermediates per chunk).
    """
    batch, views = cameras.batch_size, cameras.num_views
    width, height = cameras.width, cameras.height
    num_images = batch * views
    proj = project_gaussians(gaussians, cameras, eps2d=eps2d, antialiased=antialiased)
    num_gauss = gaussians.num_gaussians
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    tiles_per_image = tiles_x * tiles_y
    num_pix = tile_size * tile_size
    budget = chunk_elements or DEFAULT_CHUNK_ELEMENTS

    means2d = proj["means2d"].reshape(num_images, num_gauss, 2)
    depths = proj["depths"].reshape(num_images, num_gauss)
    with torch.no_grad():
        tile_ids, gauss_ids = _intersect_tiles(
            means2d, proj["radii"].reshape(num_images, num_gauss, 2), depths,
            proj["valid"].reshape(num_images, num_gauss), tile_size, tiles_x, tiles_y,
        )  # fmt: skip
        # a scatter, not bincount (whose CUDA kernel reads the maximum on the host)
        tile_counts = tile_ids.new_zeros(num_images * tiles_per_image).index_add_(
            0, tile_ids, torch.ones_like(tile_ids)
        )
        tile_starts = torch.cumsum(tile_counts, 0) - tile_counts
        busy = tile_counts.nonzero().squeeze(1)
        busy = busy[torch.argsort(tile_counts[busy], descending=True)]  # similar lengths share a chunk
        busy_counts = tile_counts[busy].tolist()

    flat_means2d = means2d.reshape(-1, 2)
    flat_conics = proj["conics"].reshape(-1, 3)
    flat_opac = proj["opacities"].reshape(-1)
    flat_feat = torch.cat([proj["colors"], proj["depths"][..., None]], dim=-1).reshape(-1, 4)
    local = torch.arange(tile_size, device=means2d.device, dtype=means2d.dtype) + 0.5
    tile_pix = torch.stack(torch.meshgrid(local, local, indexing="xy"), -1).reshape(num_pix, 2)  # (x, y)

    use_checkpoint = torch.is_grad_enabled() and sum(busy_counts) * num_pix > budget
    pieces_feat, pieces_alpha = [], []
    start = 0
    while start < len(busy):
        longest = busy_counts[start]
        n_tiles = max(1, min(len(busy) - start, budget // max(1, longest * num_pix)))
        tiles = busy[start : start + n_tiles]
        start += n_tiles
        slots = torch.arange(longest, device=means2d.device)
        slot_valid = slots[None, :] < tile_counts[tiles][:, None]  # [T, K]
        idx = gauss_ids[(tile_starts[tiles][:, None] + slots[None, :]).clamp_max(gauss_ids.shape[0] - 1)]
        in_image = tiles % tiles_per_image
        origin = torch.stack([in_image % tiles_x, in_image // tiles_x], -1).to(means2d.dtype) * tile_size
        pix = origin[:, None, :] + tile_pix[None]  # [T, P, 2]
        gathered = (_gather_rows(t, idx) for t in (flat_means2d, flat_conics, flat_opac, flat_feat))
        args = (pix, *gathered, slot_valid)
        if use_checkpoint:
            feat, alpha = checkpoint(_composite_tiles, *args, use_reentrant=False)
        else:
            feat, alpha = _composite_tiles(*args)
        pieces_feat.append(feat)
        pieces_alpha.append(alpha)

    total_tiles = num_images * tiles_per_image
    canvas_feat = flat_feat.new_zeros(total_tiles, num_pix, 4)
    canvas_alpha = flat_feat.new_zeros(total_tiles, num_pix)
    if pieces_feat:
        canvas_feat = canvas_feat.index_put((busy,), torch.cat(pieces_feat))
        canvas_alpha = canvas_alpha.index_put((busy,), torch.cat(pieces_alpha))
    else:  # nothing visible: keep the outputs attached to the graph so that backward() still works
        canvas_feat = canvas_feat + 0.0 * flat_feat.sum()

    def untile(canvas: Tensor) -> Tensor:
        canvas = canvas.reshape(num_images, tiles_y, tiles_x, tile_size, tile_size, -1)
        canvas = canvas.permute(0, 1, 3, 2, 4, 5).reshape(num_images, tiles_y * tile_size, tiles_x * tile_size, -1)
        return canvas[:, :height, :width].reshape(batch, views, height, width, -1)

    feat = untile(canvas_feat)
    alpha = untile(canvas_alpha[..., None])[..., 0]
    colors = feat[..., :3] + (1.0 - alpha)[..., None] * background[:, :, None, None, :]
    depth = feat[..., 3] / torch.clamp_min(alpha, 1e-10)
    return colors, alpha, depth
