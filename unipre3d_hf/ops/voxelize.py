"""Voxelization (grid sampling) of packed point clouds, several scenes per batch.

Follows Pointcept's ``GridSample`` transform (``grid_coord = floor((p - min(p)) / grid_size)`` per scene, one point kept
per voxel) but runs inside the model, batched over scenes with torch's sort/unique/scatter_reduce: no Python loop over
scenes or points, no hashing library.

Which point represents a voxel: in training a uniformly random point of the voxel (Pointcept's ``GridSample`` in
train mode); otherwise (eval, or ``random_representative=False``) the first point of the voxel in input order, so eval
outputs are deterministic. The voxel's anchor is the mean of all its points.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .sparse_conv import MAX_BATCH, MAX_GRID_COORD, pack_voxel_keys


@dataclass
class Voxelization:
    """Result of ``voxelize``. T voxels, sorted by (scene, x, y, z).

    Attributes:
        grid_coords: ``[T, 3]`` int64 cell of each voxel, ``floor((p - scene_min) / grid_size)``.
        batch_index: ``[T]`` int64 scene of each voxel.
        point_to_voxel: ``[P]`` int64 voxel row of every input point.
        representative: ``[T]`` int64 input row of the point whose features represent the voxel.
        mean_coords: ``[T, 3]`` mean position of the voxel's points.
        counts: ``[T]`` points per voxel.
        scene_min: ``[B, 3]`` the per-scene minimum the grid starts at (needed to put new points on the same grid).
    """

    grid_coords: torch.Tensor
    batch_index: torch.Tensor
    point_to_voxel: torch.Tensor
    representative: torch.Tensor
    mean_coords: torch.Tensor
    counts: torch.Tensor
    scene_min: torch.Tensor


def offsets_to_batch_index(offsets: torch.Tensor, num_points: int) -> torch.Tensor:
    """``[P]`` scene index of each point from cumulative ``offsets [B]`` (Pointcept's ``offset2batch``)."""
    counts = torch.diff(offsets, prepend=offsets.new_zeros(1))
    return torch.repeat_interleave(torch.arange(offsets.numel(), device=offsets.device), counts, output_size=num_points)


def check_packed_points(
    coords: torch.Tensor, features: torch.Tensor | None, offsets: torch.Tensor, grid_size: float | None = None
) -> list[int] | None:
    """Validate packed inputs; raise ValueError naming the field and the expected shape. With ``grid_size``, also
    that no scene spans ``MAX_GRID_COORD`` voxels or more along an axis (what :func:`voxelize` can key), and return
    the per-axis largest cell of :func:`voxelize`'s grid (``grid_coords.max(0)``, read in the same host sync; None
    while compiling or without ``grid_size``)."""
    if not isinstance(coords, torch.Tensor) or coords.ndim != 2 or coords.shape[1] != 3:
        shape = tuple(coords.shape) if isinstance(coords, torch.Tensor) else type(coords).__name__
        raise ValueError(f"`coords` must be a float tensor of shape [P, 3] (xyz in metres), got {shape}")
    if not coords.is_floating_point():
        raise ValueError(f"`coords` must be a floating-point tensor, got dtype {coords.dtype}")
    if not isinstance(offsets, torch.Tensor) or offsets.ndim != 1 or offsets.numel() == 0:
        raise ValueError("`offsets` must be a 1-D int64 tensor [B] of cumulative point counts (e.g. [3000, 8000])")
    if offsets.is_floating_point() or offsets.dtype == torch.bool:
        raise ValueError(f"`offsets` must be an integer (int64) tensor [B], got dtype {offsets.dtype}")
    if offsets.numel() > MAX_BATCH:
        raise ValueError(f"at most {MAX_BATCH} scenes per batch, got {offsets.numel()}")
    if features is not None and (
        not isinstance(features, torch.Tensor) or features.ndim != 2 or features.shape[0] != coords.shape[0]
    ):
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(f"`features` must have shape [P, C] with P = {coords.shape[0]} (as coords), got {shape}")
    if grid_size is not None and not grid_size > 0:
        raise ValueError(f"`grid_size` must be positive, got {grid_size}")
    # the value checks (finite, increasing offsets, the grid's extent) need the data: eager calls run them,
    # torch.compile / export skip them. All of them are reduced on the device into one flag, read once (one host
    # sync); only a failing batch goes through them one by one, for the message.
    if torch.compiler.is_compiling():
        return None
    counts = torch.diff(offsets, prepend=offsets.new_zeros(1))
    ok = torch.isfinite(coords).all() & (counts > 0).all() & (offsets[-1] == coords.shape[0])
    if features is not None:
        ok = ok & torch.isfinite(features).all()
    if grid_size is None:
        if bool(ok):
            return None
    else:
        axis_max = _largest_grid_coords(coords, offsets, grid_size)  # [3]; garbage (but no error) for bad inputs
        grid_max = axis_max.max()
        ok = ok & (grid_max < MAX_GRID_COORD)
        ok, *largest = torch.cat([ok[None].long(), axis_max.long()]).tolist()
        if ok:
            return largest
    if not torch.isfinite(coords).all():
        raise ValueError("`coords` contains NaN or infinite values")
    if (counts <= 0).any():
        raise ValueError(
            f"`offsets` must be strictly increasing cumulative counts starting above 0 (no empty scene), got "
            f"{offsets.tolist() if offsets.numel() <= 16 else 'a tensor with an empty scene'}"
        )
    if int(offsets[-1]) != coords.shape[0]:
        raise ValueError(f"`offsets[-1]` must equal the number of points P = {coords.shape[0]}, got {int(offsets[-1])}")
    if features is not None and not torch.isfinite(features).all():
        raise ValueError("`features` contains NaN or infinite values")
    raise ValueError(
        f"a scene spans {int(grid_max) + 1} voxels of {grid_size} m along an axis; at most {MAX_GRID_COORD} "
        "are supported: increase `grid_size` or split the scene"
    )


def _largest_grid_coords(coords: torch.Tensor, offsets: torch.Tensor, grid_size: float) -> torch.Tensor:
    """``[3]`` float: the per-axis largest cell ``floor((p - scene_min) / grid_size)`` of :func:`voxelize`'s grid, from
    the per-scene extents (the floor of a quotient is monotone, so the largest cell is the one of the largest extent).
    The scene of each point by search, which is defined for any offsets (this runs before they are known valid)."""
    rows = torch.arange(coords.shape[0], device=coords.device, dtype=offsets.dtype)
    batch = torch.searchsorted(offsets, rows, right=True).clamp_(max=offsets.numel() - 1)
    lo = scene_minimum(coords, batch, offsets.numel())
    hi = -scene_minimum(-coords, batch, offsets.numel())
    return torch.floor((hi - lo) / grid_size).amax(0)


def scene_minimum(coords: torch.Tensor, batch_index: torch.Tensor, num_scenes: int) -> torch.Tensor:
    """``[B, 3]`` per-scene minimum of ``coords`` ``[P, 3]``: the origin of each scene's voxel grid,
    ``grid = floor((p - scene_min) / grid_size)``."""
    return coords.new_full((num_scenes, 3), float("inf")).scatter_reduce(
        0, batch_index[:, None].expand(-1, 3), coords, reduce="amin"
    )


def voxel_representatives(
    point_to_voxel: torch.Tensor, num_voxels: int, random: bool = False, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``[V]`` one point per voxel: the first point (lowest row), or a uniformly random one (Pointcept's
    ``GridSample`` in train mode), given each point's voxel ``point_to_voxel`` ``[P]`` (every voxel occupied)."""
    num_points = point_to_voxel.numel()
    rows = torch.arange(num_points, device=point_to_voxel.device)
    representative = torch.full((num_voxels,), num_points, dtype=torch.long, device=point_to_voxel.device)
    if not random:
        return representative.scatter_reduce_(0, point_to_voxel, rows, reduce="amin")
    # random priority per point; the point of least priority in each voxel wins
    prio = torch.rand(num_points, device=point_to_voxel.device, generator=generator)
    best = torch.full((num_voxels,), 2.0, device=point_to_voxel.device).scatter_reduce(
        0, point_to_voxel, prio, reduce="amin"
    )
    # the losers propose num_points, the fill value: no boolean-mask indexing (which waits for the device to count)
    winner = prio == best[point_to_voxel]
    return representative.scatter_reduce_(0, point_to_voxel, torch.where(winner, rows, num_points), reduce="amin")


def voxelize(
    coords: torch.Tensor,
    offsets: torch.Tensor,
    grid_size: float,
    random_representative: bool = False,
    generator: torch.Generator | None = None,
    check_inputs: bool = True,
) -> Voxelization:
    """Grid-sample packed clouds.

    Args:
        coords: ``[P, 3]`` xyz (metres), scene after scene.
        offsets: ``[B]`` int64 cumulative point counts.
        grid_size: voxel edge (metres).
        random_representative: pick a uniformly random point per voxel (training) instead of the first one.
        generator: optional RNG for the random choice.
        check_inputs: run :func:`check_packed_points` (with ``grid_size``: one host sync). False is for callers that
            have run it with this ``grid_size`` themselves.
    Returns:
        a ``Voxelization`` with T voxels sorted by (scene, x, y, z).
    """
    if check_inputs:
        check_packed_points(coords, None, offsets, grid_size)
    num_points = coords.shape[0]
    batch = offsets_to_batch_index(offsets, num_points)
    num_scenes = offsets.numel()
    scene_min = scene_minimum(coords, batch, num_scenes)
    grid = torch.floor((coords - scene_min[batch]) / grid_size).long()
    keys = pack_voxel_keys(batch, grid)
    # the number of voxels is data-dependent: unique waits for the device (the one sync of a checked voxelization)
    uniq, point_to_voxel, counts = torch.unique(keys, sorted=True, return_inverse=True, return_counts=True)
    num_voxels = uniq.numel()
    representative = voxel_representatives(point_to_voxel, num_voxels, random_representative, generator)
    sums = coords.new_zeros(num_voxels, 3).index_add_(0, point_to_voxel, coords)
    mean_coords = sums / counts[:, None].to(coords.dtype)
    return Voxelization(
        grid_coords=grid[representative],
        batch_index=batch[representative],
        point_to_voxel=point_to_voxel,
        representative=representative,
        mean_coords=mean_coords,
        counts=counts,
        scene_min=scene_min,
    )


def segment_max(values: torch.Tensor, segment: torch.Tensor, num_segments: int) -> torch.Tensor:
    """``[S, C]`` max of ``values [N, C]`` over rows with equal ``segment [N]`` (every segment must be non-empty)."""
    out = values.new_zeros(num_segments, values.shape[1])
    return out.scatter_reduce(0, segment[:, None].expand_as(values), values, reduce="amax", include_self=False)


def segment_mean(values: torch.Tensor, segment: torch.Tensor, num_segments: int) -> torch.Tensor:
    """``[S, C]`` mean of ``values [N, C]`` over rows with equal ``segment [N]``."""
    out = values.new_zeros(num_segments, values.shape[1])
    return out.scatter_reduce(0, segment[:, None].expand_as(values), values, reduce="mean", include_self=False)


__all__ = [
    "Voxelization",
    "check_packed_points",
    "offsets_to_batch_index",
    "scene_minimum",
    "segment_max",
    "segment_mean",
    "voxel_representatives",
    "voxelize",
]
