"""Aten ops per forward of the object backbones (issue 17): every op the host issues is a kernel launch (or at least a
dispatcher round trip) on the GPU, so the counts are pinned here, on CPU, where they are the same.

FPS, kNN, ball query and the selective scan count as ONE op per call: on the GPU they are one kernel each (the Triton
sampling kernels, mamba-ssm's scan), while their CPU twins loop. ``measure_op_counts()`` prints the table of the
report (forward and forward + backward at the paper size, grouped by the Python line that issued the ops, and the
host milliseconds of a tiny forward + backward):

    python -c "from tests.models.test_op_counts import measure_op_counts; measure_op_counts()"
"""

from __future__ import annotations

import collections
import os
import statistics
import sys
import time

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import unipre3d_hf
from unipre3d_hf import (
    Mamba3DConfig,
    Mamba3DModel,
    PCMConfig,
    PCMModel,
    PointMLPConfig,
    PointMLPModel,
    PointTransformerConfig,
    PointTransformerModel,
)
from unipre3d_hf.ops import sampling, selective_scan

from .object_backbone_common import make_points

_PACKAGE_DIR = os.path.dirname(unipre3d_hf.__file__) + os.sep
# one GPU kernel each (the Triton sampling ops; mamba-ssm's selective scan: one kernel forward, one backward)
ONE_KERNEL = {
    f.__code__: f.__name__
    for f in (
        sampling.farthest_point_sample,
        sampling.farthest_point_sample_pointnet2,
        sampling.knn,
        sampling.ball_query,
        selective_scan.selective_scan,
    )
}


class CountOps(TorchDispatchMode):
    """Counts every aten op dispatched inside the ``with`` block (views included), the ops of one call to a function
    of ``ONE_KERNEL`` (or to the backward of ``ScanAsOneKernel``) as one.

    ``by_line`` groups the count by the innermost line of the package that issued the op ("file:line"), or by the
    one-kernel function's name; backward ops by the forward line that built their autograd node when anomaly mode
    records it (``torch.autograd.set_detect_anomaly(True)``), else by the node's name.
    """

    def __init__(self):
        super().__init__()
        self.total = 0
        self.by_line = collections.Counter()
        self._fused_frame = None  # the frame of the one-kernel call counted last (held, so its id is not reused)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        fused, issuer = None, None
        frame = sys._getframe(1)
        while frame is not None:
            code = frame.f_code
            if code in ONE_KERNEL or code in _SCAN_AS_ONE_KERNEL:
                fused = frame  # the outermost one wins
            if issuer is None and code.co_filename.startswith(_PACKAGE_DIR):
                issuer = f"{code.co_filename[len(_PACKAGE_DIR) :]}:{frame.f_lineno}"
            frame = frame.f_back
        if fused is not None:
            if fused is not self._fused_frame:
                self._fused_frame = fused
                self.total += 1
                self.by_line[f"[one kernel] {ONE_KERNEL.get(fused.f_code, 'selective_scan')}"] += 1
        else:
            node = torch._C._current_autograd_node()
            if node is not None:
                issuer = _forward_line(node) or f"backward of {node.name()}"
                issuer = "bwd " + issuer
            self.total += 1
            self.by_line[issuer or f"outside the package: {func._overloadpacket.__name__}"] += 1
        return func(*args, **(kwargs or {}))

    def __exit__(self, *exc):
        self._fused_frame = None
        return super().__exit__(*exc)


def _forward_line(node) -> str | None:
    for entry in reversed(node.metadata.get("traceback_", ())):
        # '  File "/path/unipre3d_hf/modeling/layers.py", line 123, in forward\n'
        path, _, rest = entry.strip().removeprefix('File "').partition('", line ')
        if path.startswith(_PACKAGE_DIR):
            return f"{path[len(_PACKAGE_DIR) :]}:{rest.split(',')[0]}"
    return None


class ScanAsOneKernel(torch.autograd.Function):
    """The torch twin of the selective scan with its backward as one call (as mamba-ssm's kernel pair), for counting:
    the forward runs without autograd, the backward recomputes it and differentiates."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias)
        ctx.delta_softplus = delta_softplus
        return selective_scan.selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus)

    @staticmethod
    def backward(ctx, grad):
        inputs = [t.detach().requires_grad_() for t in ctx.saved_tensors]
        with torch.enable_grad():
            y = selective_scan.selective_scan_torch(*inputs, ctx.delta_softplus, checkpoint_chunks=False)
        return (*torch.autograd.grad(y, inputs, grad), None)


def _scan_as_one_kernel(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, **kwargs):
    return ScanAsOneKernel.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus)


_SCAN_AS_ONE_KERNEL = {_scan_as_one_kernel.__code__, ScanAsOneKernel.backward.__code__}


# The paper sizes (the configs' defaults, as configs/pretrain/*_shapenet.yaml use them) and tiny configs of the same
# layer structure (as many blocks / stages / layers, narrow and few points) for the host-overhead timing.
BACKBONES = {
    "PointMLP": (PointMLPModel, PointMLPConfig, {}, dict(embed_dim=8, k_neighbors=[4] * 4, decoder_dims=[16] * 4)),
    "point Transformer": (
        PointTransformerModel,
        PointTransformerConfig,
        {},
        dict(num_groups=16, group_size=8, encoder_dims=32, hidden_size=32, num_attention_heads=2),
    ),
    "Mamba3D": (
        Mamba3DModel,
        Mamba3DConfig,
        {"selective_scan_backend": "torch"},
        dict(num_groups=16, group_size=8, encoder_dims=32, hidden_size=32, d_state=4, dt_rank=4),
    ),
    "PCM": (
        PCMModel,
        PCMConfig,
        {"selective_scan_backend": "torch"},
        dict(embed_dim=8, k_neighbors=[4] * 4, d_state=4, decoder_dims=[16] * 4, head_hidden_size=16, hidden_size=8),
    ),
}


def _build(name: str, tiny: bool, **overrides):
    model_class, config_class, paper, small = BACKBONES[name]
    torch.manual_seed(0)
    return model_class(config_class(**paper, **(small if tiny else {}), **overrides))


def count_forward(model, points, backward: bool = False, by_line: bool = False) -> CountOps:
    """The ops of one forward (and backward of the summed output) of ``model`` on ``points``."""
    if backward:
        model.zero_grad(set_to_none=True)
    original = selective_scan.selective_scan
    selective_scan.selective_scan = _scan_as_one_kernel if backward else original
    try:
        with torch.autograd.set_detect_anomaly(by_line and backward, check_nan=False), CountOps() as counter:
            out = model(points)
            if backward:
                (out.last_hidden_state.sum() + out.pooler_output.sum()).backward()
    finally:
        selective_scan.selective_scan = original
    return counter


def host_ms(model, points, repeats: int = 7) -> float:
    """Median CPU milliseconds of one forward + backward on one thread (kernel time ~0 at a tiny size: the Python /
    dispatcher cost the host spends issuing the step; process time, so that other jobs on the machine count less)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    times = []
    try:
        for _ in range(repeats + 1):
            model.zero_grad(set_to_none=True)
            start = time.process_time()
            out = model(points)
            (out.last_hidden_state.sum() + out.pooler_output.sum()).backward()
            times.append(time.process_time() - start)
    finally:
        torch.set_num_threads(threads)
    return 1e3 * statistics.median(times[1:])


def measure_op_counts(names=None, batch: int = 2, top: int = 25) -> None:
    """Print, per backbone: aten ops of one training-mode forward and forward + backward at the paper size (batch
    ``batch`` x 1,024 points; the counts do not depend on the batch), the lines that issue most of them, and the host
    ms of a tiny forward + backward (batch 1, 64 points, the same layers)."""
    for name in names or BACKBONES:
        model = _build(name, tiny=False).train()
        points = make_points(batch, 1024)
        fwd = count_forward(model, points).total
        both = count_forward(model, points, backward=True, by_line=True)
        tiny = _build(name, tiny=True).train()
        ms = host_ms(tiny, _tiny_points(name))
        print(f"\n{name}: forward {fwd} ops, forward + backward {both.total} ops, tiny fwd + bwd host {ms:.1f} ms")
        for line, n in both.by_line.most_common(top):
            print(f"  {n:6d}  {line}")


def _tiny_points(name: str) -> torch.Tensor:
    return make_points(1, 256 if name in ("PointMLP", "PCM") else 64)


# Ops of one training-mode forward of the tiny configs (the same layers as the paper sizes; the counts are structural,
# except the serialization loops of PCM, whose Hilbert / z-order depth follows the cloud's grid extent).
# Measured with this file's counter; an increase means new small ops on the hot path.
FORWARD_OPS = {"PointMLP": 596, "point Transformer": 647, "Mamba3D": 1460, "PCM": 1765}


@pytest.mark.parametrize("name", list(BACKBONES))
def test_forward_op_count_does_not_grow(name):
    model = _build(name, tiny=True).train()
    counter = count_forward(model, _tiny_points(name))
    assert counter.total <= FORWARD_OPS[name], counter.by_line.most_common(10)
    assert counter.by_line["[one kernel] farthest_point_sample"] >= 1  # FPS counted as one op per call
