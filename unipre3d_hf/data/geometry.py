"""Torch geometry for the pre-training data: depth maps to world points, points onto silhouettes, and the geometry
checks of a built set (:func:`check_object_rows`, :func:`check_scene_rows`; ``scripts/check_dataset.py``).

The pixel convention is the package's (:meth:`unipre3d_hf.rendering.Cameras.project`, the NumPy
:func:`unipre3d_hf.data._geometry.unproject_depth` of the builders, the stored intrinsics of every dataset): pixel
``(i, j)`` (row, column) has its centre at ``(u, v) = (j + 0.5, i + 0.5)``; cameras are camera-to-world matrices in
OpenCV axes (x right, y down, z forward).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor

from .collators import decode_image
from .schemas import DEPTH_SCALE

__all__ = ["check_object_rows", "check_scene_rows", "silhouette_hits", "unproject_depth_to_world"]


def unproject_depth_to_world(
    depth: Tensor, camera_to_world: Tensor, intrinsics: Tensor, *, min_depth: float = 0.05
) -> tuple[Tensor, Tensor]:
    """World points of every pixel of z-depth maps.

    For pixel ``(i, j)`` with depth ``z``: ``u, v = j + 0.5, i + 0.5``; the camera-space point is
    ``((u - cx) z / fx, (v - cy) z / fy, z)``; the world point is ``R @ p_cam + t`` with ``R, t`` from
    ``camera_to_world``. This inverts :meth:`Cameras.project <unipre3d_hf.rendering.Cameras.project>` exactly.

    Args:
        depth (`Tensor` of shape `[..., H, W]`): floating-point z-depth in metres (camera-space z, not the distance
            along the ray); 0, negative or non-finite values mark missing depth. ScanNet-style 16-bit millimetre
            depth must be converted first (``depth_mm.float() / 1000``).
        camera_to_world (`Tensor` of shape `[..., 4, 4]`): camera-to-world poses, OpenCV axes.
        intrinsics (`Tensor` of shape `[..., 4]`): ``(fx, fy, cx, cy)`` in pixels of this depth map's size.
        min_depth (`float`, *optional*, defaults to 0.05): pixels with ``depth <= min_depth`` are invalid (the
            paper's threshold).

    The leading dimensions ``...`` of the three inputs must broadcast (e.g. depth ``[B, V, H, W]`` with poses
    ``[B, V, 4, 4]`` and intrinsics ``[B, V, 4]``, or one set of intrinsics ``[4]`` for every frame).

    Returns:
        points (`Tensor` of shape `[..., H, W, 3]`): world points, in the dtype of ``depth`` (or the promoted dtype of
            the inputs); invalid pixels hold the camera centre (their depth is taken as 0), so they stay finite.
        valid (`Tensor` of shape `[..., H, W]`, bool): ``depth > min_depth`` and finite.

    Gradients flow to ``depth``, ``camera_to_world`` and ``intrinsics``.
    """
    if not isinstance(depth, Tensor) or depth.dim() < 2:
        shape = tuple(depth.shape) if isinstance(depth, Tensor) else type(depth).__name__
        raise ValueError(f"`depth` must be a tensor of shape [..., H, W], got {shape}")
    if not depth.is_floating_point():
        raise ValueError(
            f"`depth` must be floating-point metres of shape [..., H, W], got dtype {depth.dtype} "
            "(convert millimetres with depth.float() / 1000)"
        )
    if not isinstance(camera_to_world, Tensor) or camera_to_world.dim() < 2 or camera_to_world.shape[-2:] != (4, 4):
        shape = tuple(camera_to_world.shape) if isinstance(camera_to_world, Tensor) else type(camera_to_world).__name__
        raise ValueError(f"`camera_to_world` must be a tensor of shape [..., 4, 4], got {shape}")
    if not isinstance(intrinsics, Tensor) or intrinsics.dim() < 1 or intrinsics.shape[-1] != 4:
        shape = tuple(intrinsics.shape) if isinstance(intrinsics, Tensor) else type(intrinsics).__name__
        raise ValueError(f"`intrinsics` must be a tensor of shape [..., 4] (fx, fy, cx, cy), got {shape}")
    batch_shapes = (depth.shape[:-2], camera_to_world.shape[:-2], intrinsics.shape[:-1])
    try:
        torch.broadcast_shapes(*batch_shapes)
    except RuntimeError as err:
        raise ValueError(
            "the leading dimensions of `depth` [..., H, W], `camera_to_world` [..., 4, 4] and `intrinsics` [..., 4] "
            f"must broadcast, got {tuple(batch_shapes[0])}, {tuple(batch_shapes[1])} and {tuple(batch_shapes[2])}"
        ) from err

    dtype = torch.promote_types(torch.promote_types(depth.dtype, camera_to_world.dtype), intrinsics.dtype)
    if not dtype.is_floating_point:
        dtype = depth.dtype
    depth = depth.to(dtype)
    camera_to_world = camera_to_world.to(dtype=dtype, device=depth.device)
    intrinsics = intrinsics.to(dtype=dtype, device=depth.device)

    valid = torch.isfinite(depth) & (depth > min_depth)
    z = torch.where(valid, depth, torch.zeros((), dtype=dtype, device=depth.device))
    height, width = depth.shape[-2:]
    u = torch.arange(width, dtype=dtype, device=depth.device) + 0.5  # [W]
    v = (torch.arange(height, dtype=dtype, device=depth.device) + 0.5)[:, None]  # [H, 1]
    fx, fy, cx, cy = (t[..., None, None] for t in intrinsics.unbind(-1))  # [..., 1, 1]
    cam = torch.stack(torch.broadcast_tensors((u - cx) * z / fx, (v - cy) * z / fy, z), dim=-1)  # [..., H, W, 3]
    rot_t = camera_to_world[..., None, :3, :3].transpose(-1, -2)  # [..., 1, 3, 3]
    trans = camera_to_world[..., None, None, :3, 3]  # [..., 1, 1, 3]
    points = cam @ rot_t + trans
    return points, valid.expand(points.shape[:-1])


def silhouette_hits(
    points: Tensor, camera_to_world: Tensor, intrinsics: Tensor, masks: Tensor, *, tolerance: int = 0
) -> Tensor:
    """Whether each point projects onto its object's silhouette in each view (the geometry check of the object sets).

    Point ``p`` falls in pixel ``(floor(v), floor(u))`` of a view, ``(u, v)`` its projection with the package's
    pixel centres at +0.5 (pixel ``(i, j)`` covers ``[j, j + 1) x [i, i + 1)``); it hits when the mask is set within
    ``tolerance`` pixels of that pixel (Chebyshev distance: ``tolerance = 1`` accepts the 3x3 neighbourhood, which
    forgives parts thinner than a pixel whose pixel centres the rasteriser missed). Points behind a camera or
    projecting outside the image miss.

    Args:
        points (`Tensor` of shape `[N, 3]`): world points.
        camera_to_world (`Tensor` of shape `[V, 4, 4]`): camera-to-world poses, OpenCV axes.
        intrinsics (`Tensor` of shape `[V, 4]` or `[4]`): ``(fx, fy, cx, cy)`` in pixels.
        masks (`Tensor` of shape `[V, H, W]`): the silhouettes (bool, or nonzero = set, e.g. an RGBA view's alpha).
        tolerance (`int`, *optional*, defaults to 0): pixels of slack around the hit pixel.

    Returns:
        `Tensor` of shape `[V, N]`, bool.
    """
    if not isinstance(points, Tensor) or points.dim() != 2 or points.shape[-1] != 3:
        raise ValueError(f"`points` must be a tensor of shape [N, 3], got {getattr(points, 'shape', type(points))}")
    if not isinstance(masks, Tensor) or masks.dim() != 3:
        raise ValueError(f"`masks` must be a tensor of shape [V, H, W], got {getattr(masks, 'shape', type(masks))}")
    views, height, width = masks.shape
    if not isinstance(camera_to_world, Tensor) or tuple(camera_to_world.shape) != (views, 4, 4):
        shape = getattr(camera_to_world, "shape", type(camera_to_world))
        raise ValueError(f"`camera_to_world` must be a tensor of shape [V = {views}, 4, 4], got {shape}")
    if not isinstance(intrinsics, Tensor) or intrinsics.shape[-1:] != (4,) or intrinsics.dim() > 2:
        raise ValueError(
            f"`intrinsics` must be a tensor of shape [V, 4] or [4], got {getattr(intrinsics, 'shape', None)}"
        )
    if tolerance < 0:
        raise ValueError(f"`tolerance` must be >= 0 pixels, got {tolerance}")
    dtype = torch.float64
    c2w = camera_to_world.to(dtype)
    intr = intrinsics.to(dtype).expand(views, 4)
    rot, trans = c2w[:, :3, :3], c2w[:, :3, 3]
    cam = (points.to(dtype)[None] - trans[:, None]) @ rot  # [V, N, 3]: R^T (p - t) for each view
    z = cam[..., 2]
    safe_z = torch.where(z > 0, z, torch.ones((), dtype=dtype))
    u = intr[:, None, 0] * cam[..., 0] / safe_z + intr[:, None, 2]
    v = intr[:, None, 1] * cam[..., 1] / safe_z + intr[:, None, 3]
    col, row = u.floor(), v.floor()
    inside = (z > 0) & (col >= 0) & (col < width) & (row >= 0) & (row < height)
    mask = masks != 0
    if tolerance:
        k = 2 * tolerance + 1
        mask = torch.nn.functional.max_pool2d(mask[:, None].float(), k, stride=1, padding=tolerance)[:, 0] > 0
    col = col.clamp(0, width - 1).long()
    row = row.clamp(0, height - 1).long()
    hit = mask[torch.arange(views)[:, None], row, col]
    return hit & inside


def check_object_rows(rows: Iterable[dict], tolerances: tuple[int, ...] = (0, 1)) -> list[dict]:
    """Per object row (``OBJECT_FEATURES``, RGBA views): the share of (view, point) pairs whose point projects onto
    the view's alpha > 0, for each pixel ``tolerance`` of :func:`silhouette_hits`.

    Returns a list of ``{"id": str, "category": str, "hit": {tolerance: share}}``, one per row. Rows whose views carry
    no alpha channel (JPEG sets) raise ValueError: their silhouette is not stored.
    """
    out = []
    for row in rows:
        images = [np.asarray(decode_image(im)) for im in row["images"]]
        if any(im.ndim != 3 or im.shape[-1] != 4 for im in images):
            raise ValueError(f"row {row.get('id')!r}: `images` must be RGBA (alpha = the silhouette) for this check")
        masks = torch.from_numpy(np.stack([im[..., 3] for im in images]))
        args = (
            torch.as_tensor(np.asarray(row["points"])),
            torch.as_tensor(np.asarray(row["camera_to_world"])),
            torch.as_tensor(np.asarray(row["intrinsics"])),
            masks,
        )
        hit = {t: float(silhouette_hits(*args, tolerance=t).double().mean()) for t in tolerances}
        out.append({"id": row.get("id"), "category": row.get("category"), "hit": hit})
    return out


def check_scene_rows(rows: Iterable[dict], max_pixels: int = 4096, seed: int = 0) -> list[dict]:
    """Per scene row (``SCENE_FEATURES``): its depth frames unprojected (:func:`unproject_depth_to_world`) against
    its fused cloud, and its labels.

    Returns a list of dicts, one per row: ``id``; ``median_distance`` (metres, the median over up to ``max_pixels``
    valid depth pixels drawn at random, seeded, of the distance to the nearest cloud point); ``valid_fraction`` (the
    share of pixels with depth); ``instance_segments`` (the ``segment`` of each distinct instance id >= 0 in the
    cloud, in id order, the most common one where they disagree); ``classes_per_instance`` (the largest number of
    distinct ``segment`` values among the points of one instance: 1 when every instance is one object of one class);
    ``unlabelled_instances`` (instance points whose segment is < 0).
    """
    gen = torch.Generator().manual_seed(seed)
    out = []
    for row in rows:
        coords = torch.as_tensor(np.asarray(row["coords"]), dtype=torch.float64)
        depth_mm = np.stack([np.asarray(decode_image(d)) for d in row["depths"]]).astype(np.float64)
        points, valid = unproject_depth_to_world(
            torch.from_numpy(depth_mm / DEPTH_SCALE),
            torch.as_tensor(np.asarray(row["camera_to_world"])),
            torch.as_tensor(np.asarray(row["intrinsics"])),
        )
        pts = points[valid]
        if len(pts) > max_pixels:
            pts = pts[torch.randperm(len(pts), generator=gen)[:max_pixels]]
        nearest = torch.cat([torch.cdist(chunk, coords).min(dim=1).values for chunk in pts.split(512)])
        segment, instance = np.asarray(row["segment"]), np.asarray(row["instance"])
        ids = np.unique(instance[instance >= 0])
        per_instance = [np.unique(segment[instance == i], return_counts=True) for i in ids]
        out.append(
            {
                "id": row.get("id"),
                "median_distance": float(nearest.median()) if len(nearest) else float("nan"),
                "valid_fraction": float(valid.double().mean()),
                "instance_segments": [int(values[np.argmax(counts)]) for values, counts in per_instance],
                "classes_per_instance": max((len(values) for values, _ in per_instance), default=0),
                "unlabelled_instances": int(((instance >= 0) & (segment < 0)).sum()),
            }
        )
    return out
