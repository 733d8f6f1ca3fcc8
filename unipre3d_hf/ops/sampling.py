"""Point sampling and grouping in pure PyTorch, batched over samples (no Python loop over the batch).

Every function takes padded batches ``[B, N, D]``; distances are squared Euclidean over all ``D`` channels (``D`` is 3
for xyz; the legacy PointMLP path measures 4 channels, see ``PointMLPConfig.legacy_sampling``).

Precision: distances are computed in the input's dtype, at least float32 (float64 stays float64; half / bfloat16 are
promoted to float32), and the matmul expansion of ``square_distance`` runs on clouds centred on their mean, so that
neighbour sets do not depend on where a cloud sits (uncentred float32, 37 % of the kNN sets were wrong at an offset of
100 and all at 1000).

Fused kernels: ``farthest_point_sample`` (and ``farthest_point_sample_pointnet2``), ``knn`` and ``ball_query`` take
``backend="auto" | "torch" | "triton"``. "auto" runs the Triton kernels of ``_triton_sampling.py`` (the whole FPS loop
in one launch; kNN and ball query without a ``[B, S, N]`` distance matrix) when the inputs are CUDA float32 / float16 /
bfloat16 clouds of at most 8,192 points and triton is installed, and the torch code below otherwise.
``set_fused_ops(False)``, or ``UNIPRE3D_FUSED_OPS=0`` in the environment when this module is imported, makes "auto"
always take the torch twins. The kernels measure direct differences in float32 (no centring needed; the twins' kNN /
ball query use the centred matmul expansion, so they agree up to float32 rounding: a neighbour whose distance ties the
k-th one, or the radius, to float32 precision may differ).
Ties: FPS takes the lowest index in both (``argmax``'s first maximum); the kNN kernel returns equal distances in index
order, where the twin's ``torch.topk`` leaves their order unspecified; ball query lists hits in index order in both.
The kernels are ``torch.library`` custom ops, so ``torch.compile`` traces each as one node. Indices carry no gradient
(nor do kNN distances, in both).
"""

from __future__ import annotations

import importlib.util
import os

import torch

_FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MAX_FUSED_POINTS = 8192  # _triton_sampling.MAX_POINTS (not imported here: triton is optional)
_TRITON_AVAILABLE = importlib.util.find_spec("triton") is not None
_FUSED_OPS = os.environ.get("UNIPRE3D_FUSED_OPS", "1").strip().lower() not in ("0", "false", "no", "off")


def set_fused_ops(enabled: bool) -> None:
    """Let ``backend="auto"`` use the Triton kernels (the default) or always the torch twins (``enabled=False``, as
    ``UNIPRE3D_FUSED_OPS=0``): the baseline of ``scripts/benchmark.py --compare-baseline``."""
    global _FUSED_OPS
    _FUSED_OPS = bool(enabled)


def fused_ops_enabled() -> bool:
    """Whether ``backend="auto"`` may take the Triton kernels (see :func:`set_fused_ops`)."""
    return _FUSED_OPS


def _use_triton(name: str, backend: str, query: torch.Tensor, points: torch.Tensor) -> bool:
    """Whether ``name`` runs its Triton kernel; ``backend="triton"`` on inputs the kernel cannot take is an error."""
    if backend == "torch":
        return False
    if backend not in ("auto", "triton"):
        raise ValueError(f"{name}: `backend` must be 'auto', 'torch' or 'triton', got {backend!r}")
    fits = (
        query.dtype in _FUSED_DTYPES
        and points.dtype in _FUSED_DTYPES
        and points.shape[1] <= _MAX_FUSED_POINTS
        and query.shape[-1] <= 4
    )
    if backend == "auto":
        return _FUSED_OPS and points.is_cuda and query.is_cuda and fits and _TRITON_AVAILABLE
    if not _TRITON_AVAILABLE:
        raise ImportError(f"{name}: backend='triton' needs triton (pip install triton)")
    if not fits:
        raise ValueError(
            f"{name}: backend='triton' takes float32 / float16 / bfloat16 clouds of at most {_MAX_FUSED_POINTS} "
            f"points and 4 channels, got {query.dtype} / {points.dtype}, N={points.shape[1]}, D={query.shape[-1]}"
        )
    return True


# The kernels as custom ops: torch.compile sees one opaque node (its fake kernel gives the output shapes) instead of
# tracing into the launcher. triton is imported on the first call. The schemas are written out: torch 2.4's schema
# inference does not read the string annotations of ``from __future__ import annotations``.
@torch.library.custom_op(
    "unipre3d_hf::farthest_point_sample",
    mutates_args=(),
    schema="(Tensor points, int num_samples, int start_index, bool pointnet2) -> Tensor",
)
def _fps_triton(points: torch.Tensor, num_samples: int, start_index: int, pointnet2: bool) -> torch.Tensor:
    from . import _triton_sampling

    return _triton_sampling.farthest_point_sample(points, num_samples, start_index, pointnet2)


@_fps_triton.register_fake
def _(points, num_samples, start_index, pointnet2):
    return points.new_empty((points.shape[0], num_samples), dtype=torch.long)


@torch.library.custom_op(
    "unipre3d_hf::knn", mutates_args=(), schema="(Tensor query, Tensor points, int k) -> (Tensor, Tensor)"
)
def _knn_triton(query: torch.Tensor, points: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    from . import _triton_sampling

    return _triton_sampling.knn(query, points, k)


@_knn_triton.register_fake
def _(query, points, k):
    shape = (*query.shape[:2], k)
    return query.new_empty(shape, dtype=torch.float32), query.new_empty(shape, dtype=torch.long)


@torch.library.custom_op(
    "unipre3d_hf::ball_query", mutates_args=(), schema="(Tensor query, Tensor points, float radius, int k) -> Tensor"
)
def _ball_query_triton(query: torch.Tensor, points: torch.Tensor, radius: float, k: int) -> torch.Tensor:
    from . import _triton_sampling

    return _triton_sampling.ball_query(query, points, radius, k)


@_ball_query_triton.register_fake
def _(query, points, radius, k):
    return query.new_empty((*query.shape[:2], k), dtype=torch.long)


def _check_batch(name: str, x: torch.Tensor, ndim: int = 3) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != ndim:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"`{name}` must be a tensor of shape [B, N, D], got {got}")


def _check_pair(name: str, query: torch.Tensor, points: torch.Tensor) -> None:
    if query.shape[0] != points.shape[0] or query.shape[2] != points.shape[2]:
        raise ValueError(
            f"{name}: `query` [B, S, D] and `points` [B, N, D] must agree in B and D, got {tuple(query.shape)} and "
            f"{tuple(points.shape)}"
        )


def distance_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype distances of ``x`` are computed in: its own, at least float32."""
    return torch.promote_types(x.dtype, torch.float32) if x.is_floating_point() else torch.float32


def square_distance(query: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances ``[B, S, N]`` between ``query [B, S, D]`` and ``points [B, N, D]``.

    Expanded as |q|^2 - 2 q.p + |p|^2 (one batched matmul, as PointNet++'s ``square_distance``), clamped at 0, after
    moving both onto the mean of each sample's ``points`` (the expansion cancels catastrophically far from the
    origin); computed in ``distance_dtype`` (float64 stays float64).
    """
    dtype = torch.promote_types(distance_dtype(query), distance_dtype(points))
    centre = points.to(dtype).mean(dim=1, keepdim=True)  # [B, 1, D]
    query, points = query.to(dtype) - centre, points.to(dtype) - centre
    d = (query * query).sum(-1, keepdim=True) - 2.0 * query @ points.transpose(1, 2)
    d = d + (points * points).sum(-1).unsqueeze(1)
    return d.clamp_min_(0.0)


def farthest_point_sample(
    points: torch.Tensor, num_samples: int, start_index: int = 0, backend: str = "auto"
) -> torch.LongTensor:
    """Iterative farthest point sampling (Eldar et al. 1997; PointNet++'s CUDA kernel semantics).

    Starts at ``start_index`` for every sample, then repeatedly takes the point farthest from the chosen set (ties:
    the lowest index, as ``argmax``). One step per sample point, each batched over ``B`` and ``N``. Distances are
    direct differences (no cancellation far from the origin) in ``distance_dtype(points)``.

    Args:
        points: ``[B, N, D]``.
        num_samples: ``S <= N``.
        start_index: the first sample of every cloud, in ``[0, N)``.
        backend: "auto", "torch" or "triton" (see the module docstring).
    Returns:
        ``[B, S]`` long indices.
    """
    _check_batch("points", points)
    B, N, _ = points.shape
    if not 0 < num_samples <= N:
        raise ValueError(f"farthest_point_sample: `num_samples` must be in [1, N={N}], got {num_samples}")
    if not 0 <= start_index < N:
        raise ValueError(f"farthest_point_sample: `start_index` must be in [0, N={N}), got {start_index}")
    if _use_triton("farthest_point_sample", backend, points, points):
        return _fps_triton(points.detach(), num_samples, start_index, False)
    pts = points.detach().to(distance_dtype(points))
    min_dist = torch.full((B, N), float("inf"), dtype=pts.dtype, device=points.device)
    batch = torch.arange(B, device=points.device)
    current = torch.full((B,), start_index, dtype=torch.long, device=points.device)
    # the chosen indices are collected and stacked once: writing them into a preallocated buffer in place made
    # torch.compile return wrong samples for every cloud but the last of a batch (issue 17)
    chosen = []
    for _ in range(num_samples):
        chosen.append(current)
        last = pts[batch, current].unsqueeze(1)  # [B, 1, D]
        min_dist = torch.minimum(min_dist, ((pts - last) ** 2).sum(-1))
        current = min_dist.argmax(dim=1)
    return torch.stack(chosen, dim=1)


def gather_points(x: torch.Tensor, idx: torch.LongTensor) -> torch.Tensor:
    """``x [B, N, C]`` gathered at ``idx [B, *S]`` -> ``[B, *S, C]``."""
    B = x.shape[0]
    flat = idx.reshape(B, -1)
    out = torch.gather(x, 1, flat.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    return out.reshape(*idx.shape, x.shape[-1])


def knn(
    query: torch.Tensor, points: torch.Tensor, k: int, backend: str = "auto"
) -> tuple[torch.Tensor, torch.LongTensor]:
    """The ``k`` nearest ``points [B, N, D]`` of every ``query [B, S, D]``, nearest first.

    ``backend``: "auto", "torch" or "triton" (see the module docstring).

    Returns:
        ``(squared distances [B, S, k], indices [B, S, k])``. A query that is itself in ``points`` finds itself.
    """
    _check_batch("query", query)
    _check_batch("points", points)
    if not 0 < k <= points.shape[1]:
        raise ValueError(f"knn: `k` must be in [1, N={points.shape[1]}], got {k}")
    _check_pair("knn", query, points)
    if _use_triton("knn", backend, query, points):
        return _knn_triton(query.detach(), points.detach(), k)
    with torch.no_grad():
        d = square_distance(query.detach(), points.detach())
        dist, idx = d.topk(k, dim=-1, largest=False, sorted=True)
    return dist, idx


def ball_query(
    query: torch.Tensor, points: torch.Tensor, radius: float, k: int, backend: str = "auto"
) -> torch.LongTensor:
    """Up to ``k`` points within ``radius`` of each query, in index order (PointNet++'s ``ball_query``).

    Slots after the last hit repeat the first hit; a query with no hit gets index 0 everywhere, as the CUDA kernel.
    ``backend``: "auto", "torch" or "triton" (see the module docstring).

    Returns:
        ``[B, S, k]`` long indices.
    """
    _check_batch("query", query)
    _check_batch("points", points)
    N = points.shape[1]
    if k < 1:
        raise ValueError(f"ball_query: `k` must be >= 1, got {k}")
    _check_pair("ball_query", query, points)
    if _use_triton("ball_query", backend, query, points):
        return _ball_query_triton(query.detach(), points.detach(), float(radius), k)
    with torch.no_grad():
        d = square_distance(query.detach(), points.detach())
        order = torch.arange(N, device=points.device).expand_as(d)
        candidates = torch.where(d < radius * radius, order, torch.full_like(order, N))
        kk = min(k, N)
        idx = candidates.topk(kk, dim=-1, largest=False, sorted=True).values
        if kk < k:
            idx = torch.cat([idx, idx.new_full((*idx.shape[:-1], k - kk), N)], dim=-1)
        first = idx[..., :1]
        first = torch.where(first == N, torch.zeros_like(first), first)
        idx = torch.where(idx == N, first.expand_as(idx), idx)
    return idx


def three_nn_interpolate(
    query: torch.Tensor, points: torch.Tensor, features: torch.Tensor, eps: float = 1e-8
) -> torch.Tensor:
    """Inverse-squared-distance interpolation from the 3 nearest ``points`` (PointNet++ feature propagation).

    weight_i = 1 / (d_i^2 + eps), normalised over the 3 neighbours. With a single source point, it is copied.

    Args:
        query: ``[B, S, D]`` where features are wanted.
        points: ``[B, N, D]`` where they are known.
        features: ``[B, N, C]``.
    Returns:
        ``[B, S, C]``.
    """
    N = points.shape[1]
    if features.shape[:2] != points.shape[:2]:
        raise ValueError(f"`features` must be [B, N, C] with B, N = {tuple(points.shape[:2])}, got {features.shape}")
    if N == 1:
        return features.expand(-1, query.shape[1], -1)
    dist, idx = knn(query, points, min(3, N))
    weight = 1.0 / (dist + eps)
    weight = (weight / weight.sum(-1, keepdim=True)).to(features.dtype)
    return (gather_points(features, idx) * weight.unsqueeze(-1)).sum(dim=2)


def farthest_point_sample_pointnet2(points: torch.Tensor, num_samples: int, backend: str = "auto") -> torch.LongTensor:
    """Farthest point sampling exactly as pointnet2_ops' CUDA kernel (``furthest_point_sampling_kernel``, which
    Point-MAE-style models such as Mamba3D call through ``misc.fps``), for parity with their checkpoints.

    It differs from :func:`farthest_point_sample` in that points with ``|p|^2 <= 1e-3`` (near the origin, which is the
    centroid of a normalised object) are skipped by the kernel: they are never picked after the first index (0) and
    their distance to the chosen set is never updated. The distances start at 1e10, as the kernel's buffer. When no
    point can be picked any more the kernel returns index 0. Ties go to the lowest index (the kernel's strided thread
    reduction also prefers lower indices for exact ties, which are rare with float coordinates).

    Args:
        points: ``[B, N, 3]``.
        num_samples: ``S <= N``.
        backend: "auto", "torch" or "triton" (see the module docstring).
    Returns:
        ``[B, S]`` long indices.
    """
    _check_batch("points", points)
    B, N, _ = points.shape
    if not 0 < num_samples <= N:
        raise ValueError(f"farthest_point_sample_pointnet2: `num_samples` must be in [1, N={N}], got {num_samples}")
    if _use_triton("farthest_point_sample_pointnet2", backend, points, points):
        return _fps_triton(points.detach(), num_samples, 0, True)
    pts = points.detach().float()
    valid = (pts * pts).sum(-1) > 1e-3
    min_dist = torch.full((B, N), 1e10, device=points.device)
    batch = torch.arange(B, device=points.device)
    current = torch.zeros(B, dtype=torch.long, device=points.device)
    chosen = [current]  # stacked at the end, never written in place (see farthest_point_sample: torch.compile)
    for _ in range(1, num_samples):
        last = pts[batch, current].unsqueeze(1)
        min_dist = torch.where(valid, torch.minimum(min_dist, ((pts - last) ** 2).sum(-1)), min_dist)
        # the kernel starts each search at best = -1, index 0, and skips the invalid points
        current = torch.where(valid, min_dist, torch.full_like(min_dist, -1.0)).argmax(dim=1)
        chosen.append(current)
    return torch.stack(chosen, dim=1)
