"""Radius-graph clustering (PointGroup's ball query + BFS in pure torch): equal to a breadth-first search over a
brute-force radius graph on random clouds, hand-built cases, errors, and CUDA vs CPU equality."""

from __future__ import annotations

from collections import deque

import pytest
import torch

from unipre3d_hf.ops.clustering import radius_clusters, radius_connected_components
from unipre3d_hf.testing_utils import require_cuda


def bfs_clusters(points: torch.Tensor, radius: float, groups: torch.Tensor, min_points: int) -> torch.Tensor:
    """The simple reference: all pairs at squared distance < radius**2 in the same group, a BFS from every unvisited
    point in index order, clusters of >= min_points points numbered as met (Pointcept's bfs_cluster.cpp)."""
    d = points[:, None] - points[None]
    d2 = d[..., 0] * d[..., 0] + d[..., 1] * d[..., 1] + d[..., 2] * d[..., 2]
    adjacent = (d2 < radius * radius) & (groups[:, None] == groups[None])
    n = points.shape[0]
    neighbours = [row.nonzero().flatten().tolist() for row in adjacent]
    out, visited, number = torch.full((n,), -1), [False] * n, 0
    for seed in range(n):
        if visited[seed]:
            continue
        visited[seed], queue, members = True, deque([seed]), [seed]
        while queue:
            for j in neighbours[queue.popleft()]:
                if not visited[j]:
                    visited[j] = True
                    queue.append(j)
                    members.append(j)
        if len(members) >= min_points:
            out[members] = number
            number += 1
    return out


def random_cloud(n: int, seed: int, blobs: int = 6):
    """Blobs of varied density plus uniform noise, in two groups."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(blobs, 3, generator=g) * 4
    which = torch.randint(0, blobs, (n,), generator=g)
    spread = torch.rand(blobs, generator=g)[which, None] * 0.15 + 0.02
    points = centres[which] + torch.randn(n, 3, generator=g) * spread
    points[: n // 5] = torch.rand(n // 5, 3, generator=g) * 4
    return points, torch.randint(0, 2, (n,), generator=g)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("radius", [0.08, 0.2])
def test_equal_to_bfs_over_a_brute_force_radius_graph(seed, radius):
    points, groups = random_cloud(600, seed)
    for min_points in (1, 5):
        expected = bfs_clusters(points, radius, groups, min_points)
        got = radius_clusters(points, radius, groups, min_points=min_points)
        assert torch.equal(got, expected), (seed, radius, min_points)
    assert expected.max() >= 2 and (expected == -1).any()  # several clusters survive, some points are dropped


def test_a_small_chunk_budget_and_a_shuffled_order_change_nothing():
    points, groups = random_cloud(500, 7)
    root = radius_connected_components(points, 0.1, groups)
    # a pair budget of 2**16 per chunk (mean_active=1) splits the candidate pairs into several chunks
    assert torch.equal(radius_connected_components(points, 0.1, groups, mean_active=1), root)
    perm = torch.randperm(500, generator=torch.Generator().manual_seed(0))
    shuffled = radius_connected_components(points[perm], 0.1, groups[perm])
    # same partition: two points share a component exactly when they did before
    same = root[perm][:, None] == root[perm][None]
    assert torch.equal(shuffled[:, None] == shuffled[None], same)
    assert torch.equal(root, torch.minimum(root, torch.arange(500)))  # named by the smallest index


def test_hand_built_chain_groups_and_strict_radius():
    # a chain 0-1-2 with steps of 0.5 (radius 0.6), point 3 exactly 0.6 from point 2 (not joined: strict), point 4 is
    # next to point 0 but in another group
    points = torch.tensor([[0.0, 0, 0], [0.5, 0, 0], [1.0, 0, 0], [1.6, 0, 0], [0.0, 0.1, 0]])
    groups = torch.tensor([0, 0, 0, 0, 1])
    assert radius_connected_components(points, 0.6, groups).tolist() == [0, 0, 0, 3, 4]
    assert radius_clusters(points, 0.6, groups, min_points=2).tolist() == [0, 0, 0, -1, -1]
    assert radius_clusters(points, 0.61, groups, min_points=2).tolist() == [0, 0, 0, 0, -1]
    # far-away and non-finite points join nothing, and break nothing
    wild = torch.cat([points, torch.tensor([[1e30, 0, 0], [float("nan"), 0, 0], [-float("inf"), 1, 2]])])
    assert radius_connected_components(wild, 0.6).tolist() == [0, 0, 0, 3, 0, 5, 6, 7]
    assert radius_clusters(torch.zeros(0, 3), 0.5).shape == (0,)


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"`points` must be a float tensor of shape \[N, 3\]"):
        radius_clusters(torch.zeros(4, 2), 0.1)
    with pytest.raises(ValueError, match="`radius` must be > 0"):
        radius_clusters(torch.zeros(4, 3), 0.0)
    with pytest.raises(ValueError, match=r"`groups` must be an integer tensor of shape \[4\]"):
        radius_clusters(torch.zeros(4, 3), 0.1, groups=torch.zeros(4))
    with pytest.raises(ValueError, match="`min_points` must be >= 1"):
        radius_clusters(torch.zeros(4, 3), 0.1, min_points=0)


@pytest.mark.gpu
@require_cuda
def test_cuda_equals_cpu():
    from unipre3d_hf.testing_utils import write_report

    points, groups = random_cloud(20000, 3, blobs=40)
    cpu = radius_clusters(points, 0.03, groups, min_points=50)
    gpu = radius_clusters(points.cuda(), 0.03, groups.cuda(), min_points=50)
    assert torch.equal(gpu.cpu(), cpu)
    write_report({"test": "clustering_cuda_vs_cpu", "points": 20000, "clusters": int(cpu.max()) + 1, "equal": True})
