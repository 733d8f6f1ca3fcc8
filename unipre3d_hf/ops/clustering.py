"""Radius-graph clustering of points in pure torch (PointGroup's "ball query + BFS"), the same code on CPU and GPU.

PointGroup (Jiang et al., CVPR 2020) and Pointcept's ``PG-v1m1`` group the points of each predicted "thing" class
with a CUDA ball query (``pointgroup_ops.ballquery_batch_p``: every other point of the scene at squared distance
``< radius**2``) and a CPU breadth-first search that only follows neighbours of the same semantic label
(``pointgroup_ops.bfs_cluster``); a cluster is kept when it holds ``>= min_points`` points, and clusters are numbered
in the order the search meets them, i.e. by their smallest point index (Pointcept ``libs/pointgroup_ops/src/
bfs_cluster.cpp``, ``bfs_cluster_kernel.cu``). This module computes the same connected components without a compiled
extension:

1. **Cells.** Points are put on a grid (per group: scene x label) of cell edge ``radius / sqrt(3)``: two points of
   one cell are closer than ``radius``, so each point is joined to its cell's first point (the edge is still tested:
   where rounding breaks it, that cell's pairs are all tested instead). Two points closer than ``radius`` lie at most
   2 cells apart on every axis. Cells are found by sorted-key lookups (``torch.unique`` / ``searchsorted``) on
   coordinates compressed axis by axis, so any coordinate range works.
2. **Cell pairs**, one neighbour offset at a time (62 offsets of a half-space, nearest first): the pairs of two cells
   already in one component are skipped (after the nearest offsets a dense blob is one component, so most of the
   quadratic work of dense clusters is never done); the others' point pairs are tested with
   ``dx*dx + dy*dy + dz*dz < radius**2`` written as separate element-wise ops (identical rounding on every device),
   ``mean_active * N`` pairs at a time (the role of Pointcept's ``meanActive`` buffer: memory, never the result).
3. **Components.** Union by "hooking": a forest of parent pointers with ``parent[i] <= i``; for every edge whose
   endpoints have different roots, the larger root is hooked onto the smaller (``scatter_reduce(amin)``), then pointer
   jumping compresses the forest; repeated until every edge is inside one tree. Each component ends with its smallest
   point index as its root, so the result does not depend on the device or on the order of the edges.

Difference from the CUDA kernel: ``ballquery_batch_p`` keeps at most the first 1000 neighbours of a point (in index
order), which can drop edges inside very dense clusters; this module uses every neighbour.
"""

from __future__ import annotations

import torch

# neighbour cells up to 2 away on each axis, one of each +-pair (lexicographically positive), nearest first
_OFFSETS = sorted(
    ((dx, dy, dz) for dx in range(-2, 3) for dy in range(-2, 3) for dz in range(-2, 3) if (dx, dy, dz) > (0, 0, 0)),
    key=lambda o: (o[0] ** 2 + o[1] ** 2 + o[2] ** 2, o),
)
_CELL_LIMIT = float(2**60)  # cell coordinates are clamped here (far-away or non-finite points have no neighbour)


def _lookup(sorted_keys: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Position of each ``query`` key in ``sorted_keys`` (unique, ascending), ``-1`` where absent."""
    if sorted_keys.numel() == 0:
        return torch.full_like(query, -1)
    pos = torch.searchsorted(sorted_keys, query).clamp_(max=sorted_keys.numel() - 1)
    found = sorted_keys[pos] == query
    return torch.where(found, pos, torch.full_like(pos, -1))


def _squared_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[M]`` squared distances of paired rows, summed in a fixed order (x, then y, then z) on every device."""
    d = a - b
    out = d[:, 0] * d[:, 0]
    out = out + d[:, 1] * d[:, 1]
    return out + d[:, 2] * d[:, 2]


class _CellGrid:
    """The non-empty cells of ``groups x floor(points / cell_size)`` and their neighbours at ``_OFFSETS``.

    Attributes: ``cell [N]`` cell of each point, ``order [N]`` points sorted by cell, ``start / count [M]`` each cell's
    slice of ``order``, ``first [M]`` its first point, ``neighbours [M, 62]`` neighbouring cells (``-1`` when empty).
    """

    def __init__(self, points: torch.Tensor, groups: torch.Tensor, cell_size: float):
        scaled = torch.nan_to_num(points / cell_size, nan=_CELL_LIMIT, posinf=_CELL_LIMIT, neginf=-_CELL_LIMIT)
        cells = scaled.floor().clamp_(-_CELL_LIMIT, _CELL_LIMIT).long()  # [N, 3]
        # compress each axis to the ranks of its values, then build the cell key level by level (group, x), y, z:
        # every key stays below N**2, whatever the coordinates
        axes = [torch.unique(cells[:, k]) for k in range(3)]
        ranks = [torch.searchsorted(axes[k], cells[:, k].contiguous()) for k in range(3)]
        _, group_rank = torch.unique(groups, return_inverse=True)
        levels, key = [], group_rank
        for k in range(3):
            uniq, key = torch.unique(key * axes[k].numel() + ranks[k], return_inverse=True)
            levels.append(uniq)
        self.cell = key
        num_cells = levels[-1].numel()
        self.order = torch.argsort(self.cell, stable=True)
        self.count = torch.bincount(self.cell, minlength=num_cells)
        self.start = torch.cumsum(self.count, 0) - self.count
        # one representative point per cell gives the cell's group and integer coordinates
        self.first = rep = self.order[self.start]
        rep_group, rep_cells = group_rank[rep], cells[rep]
        offsets = torch.tensor(_OFFSETS, device=points.device)
        neighbours = []
        for off in offsets:
            key = rep_group
            for k in range(3):
                # cells beyond the clamp limit never have a neighbour cell there: the lookup just fails
                rank = _lookup(axes[k], (rep_cells[:, k] + off[k]).contiguous())
                key = torch.where((key >= 0) & (rank >= 0), key * axes[k].numel() + rank, torch.full_like(key, -1))
                key = _lookup(levels[k], key)
            neighbours.append(key)
        self.neighbours = torch.stack(neighbours, dim=1)  # [M, 62]


def _cell_pairs(grid: _CellGrid, cell_a: torch.Tensor, cell_b: torch.Tensor, chunk: int):
    """Yield ``(src, dst)`` chunks (at most ``chunk`` long) of every point pair of the cell pairs ``(a, b)``; for
    ``a == b``, each unordered pair once."""
    sizes = grid.count[cell_a] * grid.count[cell_b]
    ends = torch.cumsum(sizes, 0)
    total = int(ends[-1]) if ends.numel() else 0
    for first in range(0, total, chunk):
        flat = torch.arange(first, min(first + chunk, total), device=cell_a.device)
        pair = torch.searchsorted(ends, flat, right=True)  # the cell pair each candidate belongs to
        local = flat - (ends[pair] - sizes[pair])
        a, b = cell_a[pair], cell_b[pair]
        width = grid.count[b]
        src = grid.order[grid.start[a] + torch.div(local, width, rounding_mode="floor")]
        dst = grid.order[grid.start[b] + local % width]
        keep = (a != b) | (src < dst)
        yield src[keep], dst[keep]


def _compress(parent: torch.Tensor) -> torch.Tensor:
    """Pointer jumping until every node points at its root."""
    while True:
        grand = parent[parent]
        if torch.equal(grand, parent):
            return parent
        parent = grand


def _union(parent: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Merge the trees of the edges ``(src, dst)``; returns the compressed forest."""
    while True:
        parent = _compress(parent)
        root_s, root_d = parent[src], parent[dst]
        cross = root_s != root_d
        if not cross.any():
            return parent
        root_s, root_d, src, dst = root_s[cross], root_d[cross], src[cross], dst[cross]
        # hook the larger root onto the smaller one (several hooks on one root: the smallest wins, the others stay
        # crossing edges for the next round)
        parent = parent.scatter_reduce(0, torch.maximum(root_s, root_d), torch.minimum(root_s, root_d), "amin")


def radius_connected_components(
    points: torch.Tensor, radius: float, groups: torch.Tensor | None = None, mean_active: int = 300
) -> torch.Tensor:
    """Connected components of the graph joining points of the same group closer than ``radius``.

    Args:
        points: ``[N, 3]`` float coordinates.
        radius: join two points when their squared distance is ``< radius**2`` (strict, as the CUDA ball query).
        groups: optional ``[N]`` integer group of each point (e.g. ``scene * num_classes + label``); points of different
            groups are never joined. None: one group.
        mean_active: expected neighbours per point; candidate pairs are tested ``mean_active * N`` at a time
            (memory only: the result does not depend on it).
    Returns:
        ``[N]`` int64 component of each point, named by the smallest point index in it.
    """
    if not isinstance(points, torch.Tensor) or points.ndim != 2 or points.shape[1] != 3:
        shape = tuple(points.shape) if isinstance(points, torch.Tensor) else type(points).__name__
        raise ValueError(f"`points` must be a float tensor of shape [N, 3], got {shape}")
    if not points.is_floating_point():
        raise ValueError(f"`points` must be a floating-point tensor, got dtype {points.dtype}")
    if not radius > 0:
        raise ValueError(f"`radius` must be > 0, got {radius}")
    if mean_active < 1:
        raise ValueError(f"`mean_active` must be >= 1, got {mean_active}")
    n = points.shape[0]
    if groups is None:
        groups = torch.zeros(n, dtype=torch.long, device=points.device)
    elif groups.shape != (n,) or groups.dtype.is_floating_point or groups.dtype == torch.bool:
        raise ValueError(f"`groups` must be an integer tensor of shape [{n}], got {groups.dtype} {list(groups.shape)}")
    parent = torch.arange(n, device=points.device)
    if n == 0:
        return parent
    with torch.no_grad():
        points, r2, chunk = points.detach(), float(radius) ** 2, max(int(mean_active) * n, 1 << 16)
        # a cell edge a hair below radius / sqrt(3); the within-cell edges are still tested below
        grid = _CellGrid(points, groups.to(points.device).long(), float(radius) / 3**0.5 * (1.0 - 1e-4))

        def close(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
            return _squared_distance(points[src], points[dst]) < r2

        # 1. every point to its cell's first point; a cell where that fails somewhere has all its pairs tested
        src, dst = parent, grid.first[grid.cell]
        ok = close(src, dst)
        parent = _union(parent, src[ok], dst[ok])
        broken = torch.zeros_like(grid.count, dtype=torch.bool)
        broken[grid.cell[~ok]] = True
        cells = broken.nonzero().flatten()
        for src, dst in _cell_pairs(grid, cells, cells, chunk):
            ok = close(src, dst)
            parent = _union(parent, src[ok], dst[ok])
        # 2. neighbouring cells, nearest offsets first, skipping pairs of cells already in one component
        cells = torch.arange(grid.count.numel(), device=points.device)
        for k in range(grid.neighbours.shape[1]):
            other = grid.neighbours[:, k]
            a, b = cells[other >= 0], other[other >= 0]
            a, b = (x[broken[a] | broken[b] | (parent[grid.first[a]] != parent[grid.first[b]])] for x in (a, b))
            for src, dst in _cell_pairs(grid, a, b, chunk):
                ok = close(src, dst)
                parent = _union(parent, src[ok], dst[ok])
        return parent


def radius_clusters(
    points: torch.Tensor,
    radius: float,
    groups: torch.Tensor | None = None,
    min_points: int = 1,
    mean_active: int = 300,
) -> torch.Tensor:
    """PointGroup's clustering: the radius-graph components with at least ``min_points`` points.

    Args: as :func:`radius_connected_components`, plus ``min_points`` (Pointcept's ``cluster_min_points``: a cluster
        is kept when it has ``>= min_points`` points).
    Returns:
        ``[N]`` int64 cluster of each point in ``[0, K)``, clusters numbered by their smallest point index (the order of
        Pointcept's BFS), ``-1`` for the points of smaller components.
    """
    if min_points < 1:
        raise ValueError(f"`min_points` must be >= 1, got {min_points}")
    root = radius_connected_components(points, radius, groups, mean_active)
    if root.numel() == 0:
        return root
    size = torch.bincount(root, minlength=root.numel())
    kept = size >= min_points  # indexed by root (a point index)
    number = torch.cumsum(kept.long(), 0) - 1  # roots in increasing order -> 0, 1, ...
    return torch.where(kept[root], number[root], torch.full_like(root, -1))


__all__ = ["radius_clusters", "radius_connected_components"]
