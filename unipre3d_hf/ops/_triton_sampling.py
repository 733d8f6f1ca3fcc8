"""Triton kernels for farthest point sampling, kNN and ball query; their torch twins are in ``sampling.py``.

Imported only by the ``unipre3d_hf::*`` custom ops of :mod:`unipre3d_hf.ops.sampling` (triton is optional). Every
kernel measures squared distances as direct differences in float32, channel by channel in order
(``((dx*dx + dy*dy) + dz*dz) + ...``, floating-point contraction into FMAs disabled), so that on the same float32
values it rounds as the twins' ``((p - q) ** 2).sum(-1)`` does on the CPU; indices need no autograd (none is
defined, as for the twins, which run under ``no_grad``).

Ties are broken towards the lowest index everywhere: FPS takes the first of equal farthest distances (as
``torch.argmax``), kNN takes equal distances in index order.

The kernels keep one whole cloud of ``N <= MAX_POINTS`` points in registers per program (``tl.arange`` needs a power of
two: the cloud is padded to ``next_power_of_2(N)``); the dispatcher in ``sampling.py`` sends larger clouds to the twin.
With ``TRITON_INTERPRET=1`` set before this module is imported, the kernels run in triton's interpreter on CPU tensors
(the CPU parity tests).
"""

from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

MAX_POINTS = 8192
# triton decides at decoration time whether a kernel is interpreted (``knobs.runtime.interpret``, read from the
# environment); the same spellings as its ``env_bool``
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on", "y")


@triton.jit(do_not_specialize=["start"])  # a start of 1 would become a constexpr, not a loop-carried int
def _fps_kernel(points_ptr, out_ptr, N, S, start, D: tl.constexpr, BLOCK_N: tl.constexpr, POINTNET2: tl.constexpr):
    """One program per cloud: the whole S-step loop, the cloud and its min-distances in registers. ``POINTNET2``:
    pointnet2_ops' variant (``sampling.farthest_point_sample_pointnet2``: points with |p|^2 <= 1e-3 are never
    updated nor picked, distances start at 1e10)."""
    b = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_N)
    valid = offs < N
    base = points_ptr + b * N * D
    x = tl.load(base + offs * D, mask=valid, other=0.0).to(tl.float32)
    if D > 1:
        y = tl.load(base + offs * D + 1, mask=valid, other=0.0).to(tl.float32)
    if D > 2:
        z = tl.load(base + offs * D + 2, mask=valid, other=0.0).to(tl.float32)
    if D > 3:
        w = tl.load(base + offs * D + 3, mask=valid, other=0.0).to(tl.float32)
    # padding lanes hold -1 (real distances are >= 0) so that they never win the argmax
    if POINTNET2:
        norm = x * x
        if D > 1:
            norm = norm + y * y
        if D > 2:
            norm = norm + z * z
        if D > 3:
            norm = norm + w * w
        usable = valid & (norm > 1e-3)
        min_dist = tl.where(valid, 1e10, -1.0)
    else:
        min_dist = tl.where(valid, float("inf"), -1.0)
    cur = start
    for i in range(S):
        tl.store(out_ptr + b * S + i, cur.to(tl.int64))
        dx = x - tl.load(base + cur * D).to(tl.float32)
        d = dx * dx
        if D > 1:
            dy = y - tl.load(base + cur * D + 1).to(tl.float32)
            d = d + dy * dy
        if D > 2:
            dz = z - tl.load(base + cur * D + 2).to(tl.float32)
            d = d + dz * dz
        if D > 3:
            dw = w - tl.load(base + cur * D + 3).to(tl.float32)
            d = d + dw * dw
        if POINTNET2:
            min_dist = tl.where(usable, tl.minimum(min_dist, d), min_dist)
            cur = tl.argmax(tl.where(usable, min_dist, -1.0), 0, tie_break_left=True)
        else:
            min_dist = tl.minimum(min_dist, d)
            cur = tl.argmax(min_dist, 0, tie_break_left=True)


@triton.jit
def _square_distances(
    query_base, points_base, q, n, q_valid, n_valid, D: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr
):
    """``[BLOCK_Q, BLOCK_N]`` float32 squared distances, summed channel by channel in order."""
    d = tl.zeros((BLOCK_Q, BLOCK_N), dtype=tl.float32)
    for c in tl.static_range(D):
        qc = tl.load(query_base + q * D + c, mask=q_valid, other=0.0).to(tl.float32)
        pc = tl.load(points_base + n * D + c, mask=n_valid, other=0.0).to(tl.float32)
        diff = qc[:, None] - pc[None, :]
        d = d + diff * diff
    return d


@triton.jit
def _knn_kernel(
    query_ptr, points_ptr, dist_ptr, idx_ptr, S, N, K, D: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr
):
    """One program per (block of BLOCK_Q queries, cloud): K rounds of "take the nearest, then mask it out"."""
    b = tl.program_id(1).to(tl.int64)
    q = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    n = tl.arange(0, BLOCK_N)
    q_valid, n_valid = q < S, n < N
    d = _square_distances(query_ptr + b * S * D, points_ptr + b * N * D, q, n, q_valid, n_valid, D, BLOCK_Q, BLOCK_N)
    d = tl.where(n_valid[None, :], d, float("inf"))
    out = (b * S + q) * K
    for j in range(K):
        nearest, i = tl.min(d, axis=1, return_indices=True, return_indices_tie_break_left=True)
        tl.store(dist_ptr + out + j, nearest, mask=q_valid)
        tl.store(idx_ptr + out + j, i.to(tl.int64), mask=q_valid)
        d = tl.where(n[None, :] == i[:, None], float("inf"), d)


@triton.jit
def _ball_query_kernel(
    query_ptr,
    points_ptr,
    idx_ptr,
    S,
    N,
    K,
    radius2,
    D: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """The first K hits (d < radius^2) in index order; empty slots repeat the first hit, or hold 0 without one."""
    b = tl.program_id(1).to(tl.int64)
    q = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    n = tl.arange(0, BLOCK_N)
    q_valid, n_valid = q < S, n < N
    d = _square_distances(query_ptr + b * S * D, points_ptr + b * N * D, q, n, q_valid, n_valid, D, BLOCK_Q, BLOCK_N)
    hit = (d < radius2) & n_valid[None, :]
    hits = hit.to(tl.int32)
    rank = tl.cumsum(hits, axis=1) - 1  # slot of each hit
    count = tl.sum(hits, axis=1)
    first = tl.min(tl.where(hit, n[None, :], BLOCK_N), axis=1)
    first = tl.where(count > 0, first, 0)
    out = (b * S + q) * K
    keep = hit & (rank < K) & q_valid[:, None]
    index = tl.broadcast_to(n[None, :], (BLOCK_Q, BLOCK_N)).to(tl.int64)
    tl.store(idx_ptr + out[:, None] + rank, index, mask=keep)
    slot = tl.arange(0, BLOCK_K)
    empty = (slot[None, :] >= count[:, None]) & (slot[None, :] < K) & q_valid[:, None]
    pad = tl.broadcast_to(first[:, None], (BLOCK_Q, BLOCK_K)).to(tl.int64)
    tl.store(idx_ptr + out[:, None] + slot[None, :], pad, mask=empty)


def _prepare(name: str, x: torch.Tensor) -> torch.Tensor:
    if not (x.is_cuda or INTERPRETED):
        raise ValueError(
            f"`{name}` is on {x.device}: the triton kernels need CUDA tensors (or TRITON_INTERPRET=1 set before "
            "unipre3d_hf.ops._triton_sampling is imported, to run them in triton's interpreter)"
        )
    return x.detach().contiguous()


def _device(x: torch.Tensor):
    """triton launches on the current CUDA device: make it the tensors' (a process may hold several GPUs)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _block_n(n: int) -> int:
    if n > MAX_POINTS:
        raise ValueError(f"the triton sampling kernels take clouds of at most {MAX_POINTS} points, got N={n}")
    return triton.next_power_of_2(n)


def _query_block(block_n: int) -> tuple[int, int]:
    """(queries per program, warps): about 4096 distances per program, 32 a thread (no spills at sm_90: 72
    registers at N = 1024; 8 warps for the 8192 of one query of the largest cloud)."""
    block_q = max(1, min(64, 4096 // block_n))
    return block_q, 4 if block_q * block_n <= 4096 else 8


def farthest_point_sample(
    points: torch.Tensor, num_samples: int, start_index: int, pointnet2: bool = False
) -> torch.Tensor:
    """``points [B, N, D]`` (D <= 4) -> ``[B, num_samples]`` long, as ``sampling.farthest_point_sample`` (or, with
    ``pointnet2``, as ``sampling.farthest_point_sample_pointnet2`` from ``start_index`` 0)."""
    points = _prepare("points", points)
    B, N, D = points.shape
    if not 1 <= D <= 4:
        raise ValueError(f"the triton FPS kernel takes 1 to 4 channels, got D={D}")
    block_n = _block_n(N)
    out = torch.empty(B, num_samples, dtype=torch.long, device=points.device)
    if B:
        num_warps = min(16, max(1, block_n // 256))
        with _device(points):
            _fps_kernel[(B,)](
                points, out, N, num_samples, start_index, D=D, BLOCK_N=block_n, POINTNET2=pointnet2,
                num_warps=num_warps, enable_fp_fusion=False,
            )  # fmt: skip
    return out


def knn(query: torch.Tensor, points: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(float32 distances [B, S, k], long indices [B, S, k])``, nearest first, as ``sampling.knn``."""
    query, points = _prepare("query", query), _prepare("points", points)
    (B, S, D), N = query.shape, points.shape[1]
    block_n = _block_n(N)
    block_q, num_warps = _query_block(block_n)
    dist = torch.empty(B, S, k, dtype=torch.float32, device=points.device)
    idx = torch.empty(B, S, k, dtype=torch.long, device=points.device)
    if B and S:
        with _device(points):
            _knn_kernel[(triton.cdiv(S, block_q), B)](
                query, points, dist, idx, S, N, k, D=D, BLOCK_Q=block_q, BLOCK_N=block_n, num_warps=num_warps,
                enable_fp_fusion=False,
            )  # fmt: skip
    return dist, idx


def ball_query(query: torch.Tensor, points: torch.Tensor, radius: float, k: int) -> torch.Tensor:
    """``[B, S, k]`` long indices, as ``sampling.ball_query`` (PointNet++'s padding)."""
    query, points = _prepare("query", query), _prepare("points", points)
    (B, S, D), N = query.shape, points.shape[1]
    block_n = _block_n(N)
    block_q, num_warps = _query_block(block_n)
    idx = torch.empty(B, S, k, dtype=torch.long, device=points.device)
    if B and S:
        # radius^2 rounded once to float32, as the twin's ``d < radius * radius`` on a float32 tensor
        with _device(points):
            _ball_query_kernel[(triton.cdiv(S, block_q), B)](
                query, points, idx, S, N, k, radius * radius, D=D, BLOCK_Q=block_q, BLOCK_N=block_n,
                BLOCK_K=triton.next_power_of_2(k), num_warps=num_warps, enable_fp_fusion=False,
            )  # fmt: skip
    return idx
