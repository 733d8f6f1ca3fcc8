#!/usr/bin/env python
"""Speed and memory benchmarks. Results go to docs/benchmarks.md together with the command that produced them.

    python scripts/benchmark.py render                       # both workloads, every backend available here
    python scripts/benchmark.py render --workload object --device cpu --methods torch --repeats 3
    python scripts/benchmark.py selective-scan --device cpu --repeats 3   # Mamba3D and PCM sizes

`render` times forward + backward of one pre-training step's rendering:
  - object: 32 samples x 4 views, 1,024 Gaussians each, 128x128 (ShapeNet level);
  - scene:  1 sample x 8 views, 150,000 Gaussians, 160x120 (ScanNet level);
with three methods: ``gsplat`` (one batched call), ``gsplat-loop`` (one call per sample and view, as the paper's
render loop does) and ``torch`` (the pure-PyTorch backend).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch

from unipre3d_hf.rendering import Cameras, Gaussians, render
from unipre3d_hf.rendering.synthetic import object_workload, scene_workload
from unipre3d_hf.utils import is_gsplat_available

PARAMS = ("means", "quats", "scales", "opacities", "sh")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _render_step(gauss: Gaussians, cams: Cameras, method: str, bg: list[float]) -> None:
    params = [getattr(gauss, k).detach().requires_grad_(True) for k in PARAMS]
    if method == "gsplat-loop":
        loss = 0.0
        for b in range(cams.batch_size):
            single = Gaussians(*(p[b : b + 1] for p in params))
            for v in range(cams.num_views):
                cam = Cameras(
                    cams.world_to_camera[b : b + 1, v : v + 1], cams.intrinsics[b : b + 1, v : v + 1],
                    cams.width, cams.height, cams.near, cams.far,
                )  # fmt: skip
                loss = loss + render(single, cam, background=bg, backend="gsplat", check_inputs=False).colors.sum()
    else:
        loss = render(Gaussians(*params), cams, background=bg, backend=method, check_inputs=False).colors.sum()
    loss.backward()


def time_method(gauss, cams, method, bg, warmup: int, repeats: int) -> dict:
    device = gauss.means.device
    for _ in range(warmup):
        _render_step(gauss, cams, method, bg)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        _render_step(gauss, cams, method, bg)
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    result = {"median_ms": statistics.median(times), "min_ms": min(times), "repeats": repeats}
    if device.type == "cuda":
        result["peak_mem_MiB"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


def bench_render(args) -> list[dict]:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    methods = args.methods.split(",") if args.methods else None
    if methods is None:
        methods = ["gsplat", "gsplat-loop", "torch"] if device.type == "cuda" and is_gsplat_available() else ["torch"]
    workloads = {
        "object": (lambda: object_workload(batch=32, views=4, num=1024, size=128), [0.0, 0.0, 0.0]),
        "scene": (lambda: scene_workload(num=150_000, views=8, width=160, height=120), [1.0, 1.0, 1.0]),
    }
    names = list(workloads) if args.workload == "all" else [args.workload]
    rows = []
    for name in names:
        make, bg = workloads[name]
        gauss, cams = make()
        gauss = Gaussians(*(getattr(gauss, k).to(device) for k in PARAMS))
        cams = cams.to(device)
        for method in methods:
            repeats = max(1, args.repeats // 10) if method == "gsplat-loop" else args.repeats
            row = {"benchmark": "render", "workload": name, "method": method, "device": str(device)}
            row.update(time_method(gauss, cams, method, bg, warmup=args.warmup, repeats=repeats))
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def bench_selective_scan(args) -> list[dict]:
    """Forward + backward of the selective scan (delta_softplus, D, z, delta_bias all on) at Mamba3D and PCM sizes.

    Methods: ``torch`` (the chunked twin), ``naive`` (a Python loop over time, for comparison) and ``mamba_ssm``.
    """
    import torch.nn.functional as F

    from unipre3d_hf.ops.selective_scan import selective_scan
    from unipre3d_hf.utils import is_mamba_ssm_available

    def naive(u, delta, A, B, C, D, z, delta_bias):
        dt = F.softplus(delta + delta_bias[:, None])
        h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
        ys = []
        for dt_t, u_t, B_t, C_t in zip(dt.unbind(-1), u.unbind(-1), B.unbind(-1), C.unbind(-1)):
            h = torch.exp(dt_t[..., None] * A) * h + (dt_t * u_t)[..., None] * B_t[:, None]
            ys.append((h * C_t[:, None]).sum(-1))
        return (torch.stack(ys, -1) + D[:, None] * u) * F.silu(z)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    methods = args.methods.split(",") if args.methods else None
    if methods is None:
        methods = ["torch", "naive"] + (["mamba_ssm"] if device.type == "cuda" and is_mamba_ssm_available() else [])
    workloads = {"mamba3d": (32, 768, 129), "pcm": (32, 1536, 1036)}  # (batch, d_inner, L); d_state 16
    names = list(workloads) if args.workload == "all" else [args.workload]
    rows = []
    for name in names:
        batch, dim, length = workloads[name]
        batch = args.batch or batch
        gen = torch.Generator().manual_seed(0)
        dt = 1e-3 * 100.0 ** torch.rand(dim, generator=gen)  # Mamba's dt init, log-uniform in [1e-3, 1e-1]
        inputs = {
            "u": torch.randn(batch, dim, length, generator=gen),
            "delta": 0.5 * torch.randn(batch, dim, length, generator=gen),
            "A": -torch.arange(1, 17, dtype=torch.float32).repeat(dim, 1),  # -exp(A_log), A_log = log(1..16)
            "B": torch.randn(batch, 16, length, generator=gen),
            "C": torch.randn(batch, 16, length, generator=gen),
            "D": torch.ones(dim),
            "z": torch.randn(batch, dim, length, generator=gen),
            "delta_bias": dt + torch.log(-torch.expm1(-dt)),
        }
        inputs = {k: v.to(device) for k, v in inputs.items()}

        def step(method, inputs=inputs):
            leaves = {k: v.detach().requires_grad_(True) for k, v in inputs.items()}
            if method == "naive":
                y = naive(**leaves)
            else:
                y = selective_scan(**leaves, delta_softplus=True, backend=method)
            y.sum().backward()

        for method in methods:
            for _ in range(args.warmup):
                step(method)
            _sync(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            times = []
            for _ in range(args.repeats):
                _sync(device)
                start = time.perf_counter()
                step(method)
                _sync(device)
                times.append((time.perf_counter() - start) * 1e3)
            row = {"benchmark": "selective-scan", "workload": name, "batch": batch, "dim": dim, "L": length, "N": 16}
            row.update({"method": method, "device": str(device), "median_ms": statistics.median(times)})
            row.update({"min_ms": min(times), "repeats": args.repeats})
            if device.type == "cuda":
                row["peak_mem_MiB"] = torch.cuda.max_memory_allocated(device) / 2**20
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_render = sub.add_parser("render", help="Gaussian rasterization, forward + backward")
    p_render.add_argument("--workload", choices=["object", "scene", "all"], default="all")
    p_render.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p_render.add_argument("--methods", default=None, help="comma-separated subset of gsplat,gsplat-loop,torch")
    p_render.add_argument("--repeats", type=int, default=20)
    p_render.add_argument("--warmup", type=int, default=3)
    p_render.add_argument("--output", default=None, help="also write the results as JSON to this file")
    p_scan = sub.add_parser("selective-scan", help="Mamba selective scan, forward + backward")
    p_scan.add_argument("--workload", choices=["mamba3d", "pcm", "all"], default="all")
    p_scan.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p_scan.add_argument("--methods", default=None, help="comma-separated subset of torch,naive,mamba_ssm")
    p_scan.add_argument("--batch", type=int, default=None, help="override the batch size (default: 32)")
    p_scan.add_argument("--repeats", type=int, default=10)
    p_scan.add_argument("--warmup", type=int, default=2)
    p_scan.add_argument("--output", default=None, help="also write the results as JSON to this file")
    p_scan.set_defaults(bench=bench_selective_scan)
    args = parser.parse_args(argv)

    header = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "cpu_threads": torch.get_num_threads(),
    }
    print(json.dumps(header), flush=True)
    rows = getattr(args, "bench", bench_render)(args)
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"environment": header, "command": " ".join(sys.argv), "results": rows}, f, indent=1)


if __name__ == "__main__":
    main()
