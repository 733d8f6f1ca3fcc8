"""The Triton sampling kernels in triton's CPU interpreter against their torch twins (small sizes: the interpreter runs
every program in numpy). On a machine with CUDA, tests/ops/test_sampling_gpu.py runs the compiled kernels instead.

triton decides whether ``@triton.jit`` interprets when it decorates, its own ``triton.language`` helpers included, and
``import unipre3d_hf`` already imports triton (through transformers / torch._dynamo): so the parity tests run in a
child pytest started with TRITON_INTERPRET=1, which ``test_in_the_triton_interpreter`` launches.
"""

import os
import re
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")
if torch.cuda.is_available():
    pytest.skip("CUDA is visible: test_sampling_gpu.py runs the compiled kernels", allow_module_level=True)

from unipre3d_hf.ops import sampling  # noqa: E402
from unipre3d_hf.ops.sampling import (  # noqa: E402
    ball_query,
    farthest_point_sample,
    farthest_point_sample_pointnet2,
    knn,
)

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
interpreted = pytest.mark.skipif(not INTERPRETING, reason="runs in the child pytest with TRITON_INTERPRET=1")


@pytest.mark.skipif(INTERPRETING, reason="this is the child")
def test_in_the_triton_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    summary = done.stdout.strip().splitlines()[-1]
    assert re.search(r"\b12 passed, 2 skipped\b", summary), summary  # all kernel tests ran; 2 are the parent's


def lattice_cloud(b, n, generator, side=6):
    """Integer points of a small grid, with repeats: every distance is exact in float32 and many are equal."""
    return torch.randint(0, side, (b, n, 3), generator=generator).float()


@interpreted
def test_interpreter_is_active():
    from unipre3d_hf.ops import _triton_sampling

    assert _triton_sampling.INTERPRETED


@interpreted
@pytest.mark.parametrize("dims,start", [(3, 0), (4, 5)])
def test_fps_kernel_equals_the_twin(dims, start):
    g = torch.Generator().manual_seed(0)
    clouds = {
        "random": torch.rand(3, 150, dims, generator=g),  # N not a power of two: padded lanes
        "far from the origin": torch.rand(2, 100, dims, generator=g) + 1000.0,
        "bfloat16": torch.rand(2, 90, dims, generator=g).to(torch.bfloat16),
    }
    for name, points in clouds.items():
        ours = farthest_point_sample(points, 24, start, backend="triton")
        assert ours.dtype == torch.long and ours.shape == (points.shape[0], 24)
        assert torch.equal(ours, farthest_point_sample(points, 24, start, backend="torch")), name
        assert ours[:, 0].eq(start).all()


@interpreted
def test_fps_kernel_breaks_ties_as_argmax():
    g = torch.Generator().manual_seed(1)
    points = lattice_cloud(2, 100, g, side=4)  # ties everywhere, and duplicates: 64 grid points, 80 samples
    ours = farthest_point_sample(points, 80, backend="triton")
    assert torch.equal(ours, farthest_point_sample(points, 80, backend="torch"))
    # when every distance left is 0 (duplicates of chosen points), argmax's first index: 0 again, as the twin
    dup = torch.zeros(1, 8, 3)
    dup[0, 3] = 1.0
    assert farthest_point_sample(dup, 4, backend="triton")[0].tolist() == [0, 3, 0, 0]
    # on a line, FPS from index 0 picks the far end next, then the middle
    line = torch.linspace(0, 1, 11).view(1, 11, 1).expand(1, 11, 3).contiguous()
    assert farthest_point_sample(line, 3, backend="triton")[0].tolist() == [0, 10, 5]


@interpreted
def test_pointnet2_fps_kernel_equals_its_twin():
    g = torch.Generator().manual_seed(6)
    points = torch.rand(3, 100, 3, generator=g) - 0.5
    points[:, 10:20] *= 0.01  # |p|^2 <= 1e-3: never updated nor picked
    points[2] = 0.0  # all but one point at the origin: after it, the only usable point again
    points[2, 7] = 0.5
    ours = farthest_point_sample_pointnet2(points, 30, backend="triton")
    assert torch.equal(ours, farthest_point_sample_pointnet2(points, 30, backend="torch"))
    assert not ((ours[:2] >= 10) & (ours[:2] < 20)).any()
    assert ours[2].tolist() == [0] + [7] * 29


def _clear_gaps(query, points, k):
    """Per query: True where the float64 k-th and k+1-th distances differ by more than float32 can blur."""
    d = ((query.double()[:, :, None] - points.double()[:, None]) ** 2).sum(-1).sort(dim=-1).values
    return (d[..., k] - d[..., k - 1]) > 1e-5 if k < d.shape[-1] else torch.ones(d.shape[:2], dtype=torch.bool)


@interpreted
@pytest.mark.parametrize("k", [4, 24, 32])
def test_knn_kernel_equals_the_twin(k):
    g = torch.Generator().manual_seed(2)
    points = torch.rand(2, 130, 3, generator=g)
    query = points[:, :37] + 0.01 * torch.randn(2, 37, 3, generator=g)
    dist, idx = knn(query, points, k, backend="triton")
    ref_dist, ref_idx = knn(query, points, k, backend="torch")
    assert dist.dtype == torch.float32 and idx.shape == (2, 37, k)
    torch.testing.assert_close(dist, ref_dist, rtol=1e-5, atol=1e-6)
    clear = _clear_gaps(query, points, k)
    assert clear.float().mean() > 0.9
    # the twin's centred matmul and the kernel's direct differences only disagree at float32-level near-ties
    same = (idx == ref_idx).all(-1)
    assert same[clear].all()


@interpreted
def test_knn_kernel_orders_equal_distances_by_index():
    g = torch.Generator().manual_seed(3)
    points = lattice_cloud(2, 100, g, side=4)
    query = lattice_cloud(2, 20, g, side=4)
    dist, idx = knn(query, points, 24, backend="triton")
    d = ((query[:, :, None] - points[:, None]) ** 2).sum(-1)  # exact: small integers
    ref_dist, ref_idx = d.sort(dim=-1, stable=True)
    assert torch.equal(idx, ref_idx[..., :24]) and torch.equal(dist, ref_dist[..., :24])
    # a legacy 4-channel cloud (PointMLP's xyz + height)
    p4 = torch.rand(1, 70, 4, generator=g)
    assert torch.equal(knn(p4, p4, 5, backend="triton")[1][..., 0], torch.arange(70).view(1, 70))


@interpreted
def test_ball_query_kernel_equals_the_twin():
    g = torch.Generator().manual_seed(4)
    points = torch.rand(2, 140, 3, generator=g)
    query = torch.cat([points[:, :30], torch.full((2, 2, 3), 9.0)], dim=1)  # the last two queries hit nothing
    radius = 0.2
    d = ((query.double()[:, :, None] - points.double()[:, None]) ** 2).sum(-1)
    assert (d - radius**2).abs().min() > 1e-6  # no distance rounds across the radius differently in the two
    for k in (8, 32, 200):  # 200 > N: padding after the last hit
        ours = ball_query(query, points, radius, k, backend="triton")
        assert ours.shape == (2, 32, k)
        assert torch.equal(ours, ball_query(query, points, radius, k, backend="torch")), k
    assert ours[:, -2:].eq(0).all()


def test_dispatch_rules():
    points = torch.rand(1, 20, 3)
    assert not sampling._use_triton("knn", "auto", points, points)  # CPU: the twin
    with pytest.raises(ValueError, match="backend"):
        knn(points, points, 2, backend="cuda")
    with pytest.raises(ValueError, match="float64"):
        farthest_point_sample(points.double(), 4, backend="triton")
    with pytest.raises(ValueError, match="8192"):
        farthest_point_sample(torch.zeros(1, 8193, 3), 1, backend="triton")
    with pytest.raises(ValueError, match="agree in B and D"):
        knn(points[..., :2], points, 2)
    with pytest.raises(ValueError, match="start_index"):
        farthest_point_sample(points, 4, start_index=20)
    assert sampling.fused_ops_enabled()
    sampling.set_fused_ops(False)
    try:
        assert not sampling.fused_ops_enabled()
        assert torch.equal(farthest_point_sample(points, 5), farthest_point_sample(points, 5, backend="torch"))
    finally:
        sampling.set_fused_ops(True)


@interpreted
def test_custom_ops_trace_under_torch_compile():
    g = torch.Generator().manual_seed(5)
    points = torch.rand(2, 64, 3, generator=g)

    def group(p):
        centres = sampling.gather_points(p, farthest_point_sample(p, 16, backend="triton"))
        _, idx = knn(centres, p, 8, backend="triton")
        return sampling.gather_points(p, idx) - centres.unsqueeze(2), ball_query(centres, p, 0.3, 8, backend="triton")

    compiled = torch.compile(group, fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(points), group(points)):
        assert torch.equal(got, want)


@pytest.mark.skipif(INTERPRETING, reason="compiles the real kernels: runs in the parent")
def test_kernels_compile_for_sm90_without_fused_multiply_adds():
    # the interpreter runs Python, not triton's compiler: compile each kernel ahead of time for an H100/H200 (no GPU
    # needed) so that type errors of the compiled path show here; with fp fusion off, no FMA rounds the distances
    # differently from the twins' separate multiplies and adds
    import inspect

    import triton
    from triton.compiler import ASTSource

    try:
        from triton.backends.compiler import GPUTarget
    except ImportError:
        pytest.skip("this triton has no GPUTarget")
    if "constexprs" not in inspect.signature(ASTSource).parameters:
        pytest.skip("ASTSource of this triton version takes other arguments")
    from unipre3d_hf.ops import _triton_sampling as kernels

    cases = {
        "fps": (kernels._fps_kernel, "*fp32", {"D": 3, "BLOCK_N": 1024, "POINTNET2": False}),
        "fps bf16, 4 channels": (kernels._fps_kernel, "*bf16", {"D": 4, "BLOCK_N": 256, "POINTNET2": False}),
        "fps, pointnet2_ops' variant": (kernels._fps_kernel, "*fp32", {"D": 3, "BLOCK_N": 1024, "POINTNET2": True}),
        "knn": (kernels._knn_kernel, "*fp32", {"D": 3, "BLOCK_Q": 4, "BLOCK_N": 1024}),
        "ball query": (kernels._ball_query_kernel, "*fp32", {"D": 3, "BLOCK_Q": 4, "BLOCK_N": 1024, "BLOCK_K": 32}),
    }

    def arg_type(arg: str, points: str, constexprs: dict) -> str:
        if arg in constexprs:
            return "constexpr"
        if arg in ("out_ptr", "idx_ptr"):
            return "*i64"
        if arg == "dist_ptr":
            return "*fp32"
        return points if arg.endswith("_ptr") else "fp32" if arg == "radius2" else "i32"

    for name, (fn, points, constexprs) in cases.items():
        signature = {arg: arg_type(arg, points, constexprs) for arg in fn.arg_names}
        compiled = triton.compile(
            ASTSource(fn=fn, signature=signature, constexprs=constexprs),
            target=GPUTarget("cuda", 90, 32),
            options={"num_warps": 4, "enable_fp_fusion": False},
        )
        ptx = compiled.asm["ptx"]
        assert ".entry" in ptx and "fma.rn.f32" not in ptx, name
