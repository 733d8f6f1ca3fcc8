#!/usr/bin/env python
"""Speed and memory benchmarks. Results go to docs/benchmarks.md together with the command that produced them.

    python scripts/benchmark.py render                       # both workloads, every backend available here
    python scripts/benchmark.py render --workload object --device cpu --methods torch --repeats 3
    python scripts/benchmark.py backbones --models pcm --scan-backends torch,mamba_ssm
    python scripts/benchmark.py selective-scan --device cpu --repeats 3   # Mamba3D and PCM sizes

`render` times forward + backward of one pre-training step's rendering:
  - object: 32 samples x 4 views, 1,024 Gaussians each, 128x128 (ShapeNet level);
  - scene:  1 sample x 8 views, 150,000 Gaussians, 160x120 (ScanNet level);
with three methods: ``gsplat`` (one batched call), ``gsplat-loop`` (one call per sample and view, as the paper's
render loop does) and ``torch`` (the pure-PyTorch backend).

`backbones` times forward + backward of the four object backbones at their default (paper) size, B=32, N=1024, with
the torch and mamba-ssm selective scans for Mamba3D and PCM; peak memory on CUDA.

`backbones-scene` times forward + backward (loss = mean square of the output) of the Sparse UNet and PTv3 at their
paper configurations on ScanNet-sized synthetic rooms (points on the walls of 6 x 5 x 3 m rooms, 2 cm voxels), batch
1 and 4, with a chosen sparse-conv and attention backend:

    python scripts/benchmark.py backbones-scene --sparse-conv spconv --attention auto
    python scripts/benchmark.py backbones-scene --sparse-conv torch --attention torch --batch-sizes 1

`instance` times PointGroup inference (``SparseUNetForPointCloudInstanceSegmentation``, ScanNet20 settings) on one
synthetic room of ``--points`` points: the model forward alone, forward + clustering of the (untrained) model, and the
clustering alone on oracle predictions (the walls cut into 1 m patches, each an instance of a "thing" class, every
voxel shifted onto its patch centre with 1 cm noise: the dense case a trained model gives):

    python scripts/benchmark.py instance --points 100000 --sparse-conv spconv

`step` times whole pre-training steps (issue 17) of one of the six paper presets on one real mini-set batch at the
paper's sizes, through the training loop's own ``train_micro_step`` (forward, backward, non-finite check, clipping,
AdamW, schedule): objects, 32 clouds of 1,024 points with 1 reference + 4 supervision views at 128x128 of
objects-mini; scenes, ``--scenes`` 1 or 4 rooms of scenes-mini with 8 + 8 RGB-D frames at 160x120 (PTv3: at most
80,000 points per scene). The variants, on the same batch and seeds in one process: ``baseline`` (with
``--compare-baseline``: every lever of issue 17 off, i.e. the torch twins of FPS / kNN / ball query instead of the
Triton kernels, foreach AdamW and the host-side NaN check, fp32 SD VAE, pageable blocking copies, no compile),
``levers`` (the defaults, eager) and ``levers+compile`` (with ``--compile``: the defaults and the object backbones
compiled); ``--compare-baseline --compile`` runs all three. Each row's ``levers`` says what it ran with, read back from
the objects of the step (``fused_sampling``, ``fused_adamw``, ``nonfinite_skip`` on the device or the host, the SD
VAE's ``image_encoder_dtype``, ``pinned_copies``, ``compile``), and a ``step-ratio`` row per variant gives its speedup
over the baseline. Options after the known ones go to the preset's arguments (e.g. ``--model.image_encoder conv``,
``--batch_size 2``, ``--torch_compile_backend eager``; ``--torch_compile`` itself is the variant's)::

    python scripts/benchmark.py step --preset pointmlp --compare-baseline --json outputs/step_pointmlp.json
    python scripts/benchmark.py step --preset ptv3 --scenes 4 --bf16 --compare-baseline --dataset data/scenes-mini
    python scripts/benchmark.py step --preset pcm --device cpu --steps 1 --warmup 0 --batch_size 2

Reported per row: ``step_ms`` (median wall time of one step, synchronised), ``kernel_ms_per_step`` and
``gpu_busy`` (the summed duration of every CUDA kernel, memcpy and memset the profiler records over
``--profile-steps`` steps, per step, divided by ``step_ms``: 1.0 is a GPU that never waits for the host; overlapping
streams could push it past 1), ``launches_per_step`` (CUDA kernel / graph launch calls) and ``host_syncs_per_step``
(CUDA synchronisations; on CPU, the ops that would synchronise on a GPU: ``.item()``, ``nonzero``, boolean-mask
indexing, ``unique``), ``aten_ops_per_step``, on CPU ``aten_ms_per_step`` and ``host_ms_per_step`` (the profiled
steps' time inside the top-level ATen ops, and outside them: Python, module calls, the autograd engine's bookkeeping,
the profiler's own cost; the host overhead that a GPU step pays as well), and the breakdown, each a median of
``--steps`` synchronised repeats: ``backbone_ms`` (the backbone's forward + backward alone on the batch, no fusion),
``render_ms`` (rasterizing the step's Gaussians into the supervision views, forward + backward), ``image_encoder_ms``
(the frozen SD VAE, or the image encoder the preset uses, forward), ``optimizer_ms`` (``optimizer.step()``) and
``copy_ms`` (the batch from host to device memory: pinned + non_blocking when the levers are on).

`curves` runs the bf16 / fp32 learning-curve pair of each preset of ``--preset`` on its ``configs/pretrain/*_mini.yaml``
config: two ``scripts/pretrain.py`` processes with the same seed, data and schedule (``--mixed_precision no`` /
``bf16``), ``--steps`` steps, validation at step 0 and at the end, ``--concurrent`` processes at a time (side by side
on one GPU; each with ``--num-workers`` DataLoader workers and its share of the CPU threads). Every run's arguments are
checked, and a missing mini set is built, before any run starts. A row per preset: each run's validation PSNRs
[before, after] (novel views; objects also the reference view) from its ``final.json``, ``difference_db`` = bf16 - fp32
after training, and ``within_tolerance`` (every |difference| <= ``--tolerance``, 0.3 dB); then a Markdown table. The
runs (checkpoint, renders, metrics) and their logs stay in ``--output-dir``. ``--dataset`` (once per level) takes a
pre-built set instead of the config's mini set under ``data/``; options after the known ones go to every run::

    python scripts/benchmark.py curves --preset ptv3,sparse_unet,pointmlp,point_transformer,mamba3d,pcm --steps 200 \
        --concurrent 4 --dataset data/objects-mini --dataset data/scenes-mini --json outputs/curves.json
    python scripts/benchmark.py curves --preset point_transformer --steps 200 --model.render_backend torch
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

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
    return _time_step(lambda: _render_step(gauss, cams, method, bg), gauss.means.device, warmup, repeats)


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


OBJECT_BACKBONES = ("pointmlp", "point_transformer", "mamba3d", "pcm")
MAMBA_BACKBONES = ("mamba3d", "pcm")


def _object_backbone(name: str, scan_backend: str):
    import unipre3d_hf as u

    configs = {
        "pointmlp": lambda: (u.PointMLPConfig(), u.PointMLPModel),
        "point_transformer": lambda: (u.PointTransformerConfig(), u.PointTransformerModel),
        "mamba3d": lambda: (u.Mamba3DConfig(selective_scan_backend=scan_backend), u.Mamba3DModel),
        "pcm": lambda: (u.PCMConfig(selective_scan_backend=scan_backend), u.PCMModel),
    }
    config, cls = configs[name]()
    return cls(config)


def bench_backbones(args) -> list[dict]:
    """Forward + backward of each object backbone (default config, train mode) on ``[B, N, 3]`` random clouds."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    names = args.models.split(",") if args.models else list(OBJECT_BACKBONES)
    rows = []
    for name in names:
        scans = args.scan_backends.split(",") if name in MAMBA_BACKBONES else ["-"]
        for scan in scans:
            torch.manual_seed(0)
            model = _object_backbone(name, "torch" if scan == "-" else scan).to(device).train()
            points = 0.4 * torch.nn.functional.normalize(torch.randn(args.batch, args.points, 3, device=device), dim=-1)

            def step(model=model, points=points):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
                    out = model(points)
                out.last_hidden_state.float().square().mean().backward()
                model.zero_grad(set_to_none=True)

            result = _time_step(step, device, args.warmup, args.repeats)
            row = {"benchmark": "backbones", "model": name, "selective_scan": scan, "batch": args.batch,
                   "points": args.points, "bf16": args.bf16, "device": device.type,
                   "params_M": sum(p.numel() for p in model.parameters()) / 1e6, **result}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def _times_ms(fn, device: torch.device, repeats: int) -> list[float]:
    """Wall times (ms) of ``repeats`` calls of ``fn``, each between two device synchronisations."""
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def _time_step(step, device: torch.device, warmup: int, repeats: int) -> dict:
    for _ in range(warmup):
        step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = _times_ms(step, device, repeats)
    result = {"median_ms": statistics.median(times), "min_ms": min(times), "repeats": repeats}
    if device.type == "cuda":
        result["peak_mem_MiB"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


def bench_data(args) -> list[dict]:
    """Rows/s of the dataset + collator path as ``scripts/pretrain.py`` runs it on the mini presets: a DataLoader over
    the mini sets (built first when missing), rows read three ways: Python rows (``datasets``' default conversion),
    `NumpyRows` (numeric columns straight from Arrow, what pretrain.py uses) and streaming."""
    from torch.utils.data import DataLoader

    from unipre3d_hf.data import (
        NumpyRows,
        ObjectPretrainingCollator,
        ScenePretrainingCollator,
        SceneViewSampler,
        load_mini_dataset,
    )

    settings = {  # the *_mini presets' collators: objects-mini stores its points in FPS order
        "object": ("objects-mini", lambda: ObjectPretrainingCollator(num_points=1024, point_sampling="first"), 32),
        "scene": ("scenes-mini", lambda: ScenePretrainingCollator(SceneViewSampler(num_reference=8)), 2),
    }
    names = list(settings) if args.workload == "all" else [args.workload]
    rows = []
    for name in names:
        dataset_name, make_collator, batch_size = settings[name]
        batch_size = args.batch_size or batch_size
        for reader in args.readers.split(","):
            ds = load_mini_dataset(dataset_name, root=args.root, streaming=reader == "streaming")
            if reader == "streaming":
                ds, sampler = ds.repeat(None), None
            else:
                ds = ds.with_format(None) if reader == "python" else NumpyRows(ds)
                sampler = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=batch_size * 10**6)
            loader = DataLoader(ds, batch_size=batch_size, collate_fn=make_collator(), num_workers=args.workers,
                                sampler=sampler)  # fmt: skip
            it = iter(loader)
            for _ in range(max(args.workers, 1)):  # warm-up: worker start and each worker's first batch
                next(it)
            start = time.perf_counter()
            for _ in range(args.batches):
                next(it)
            seconds = time.perf_counter() - start
            del it
            row = {
                "benchmark": "data", "workload": name, "dataset": dataset_name, "rows": reader,
                "batch_size": batch_size, "workers": args.workers, "batches": args.batches,
                "rows_per_s": batch_size * args.batches / seconds, "ms_per_batch": 1e3 * seconds / args.batches,
            }  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def synthetic_rooms(batch: int, points_per_scene: int, device: torch.device, seed: int = 0):
    """Packed clouds: points on the six walls of 6 x 5 x 3 m rooms (surface density like ScanNet), 6 features."""
    g = torch.Generator().manual_seed(seed)
    size = torch.tensor([6.0, 5.0, 3.0])
    coords, feats = [], []
    for _ in range(batch):
        face = torch.randint(0, 6, (points_per_scene,), generator=g)
        p = torch.rand(points_per_scene, 3, generator=g) * size
        axis = face // 2
        p[torch.arange(points_per_scene), axis] = (face % 2).float() * size[axis]
        coords.append(p)
        feats.append(torch.randn(points_per_scene, 6, generator=g))
    offsets = torch.arange(1, batch + 1) * points_per_scene
    return torch.cat(coords).to(device), torch.cat(feats).to(device), offsets.to(device)


def _scene_step(model, coords, feats, offsets) -> int:
    model.zero_grad(set_to_none=True)
    out = model(coords, feats, offsets)
    out.last_hidden_state.square().mean().backward()
    return out.last_hidden_state.shape[0]


def bench_backbones_scene(args) -> list[dict]:
    from unipre3d_hf import PTv3Config, PTv3Model, SparseUNetConfig, SparseUNetModel

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    builders = {
        "sparse_unet": lambda: SparseUNetModel(SparseUNetConfig(sparse_conv_backend=args.sparse_conv)),
        "ptv3": lambda: PTv3Model(PTv3Config(sparse_conv_backend=args.sparse_conv, attention_backend=args.attention)),
    }
    names = list(builders) if args.models == "all" else args.models.split(",")
    rows = []
    for name in names:
        model = builders[name]().to(device).train()
        for batch in [int(b) for b in args.batch_sizes.split(",")]:
            coords, feats, offsets = synthetic_rooms(batch, args.points, device)
            voxels = _scene_step(model, coords, feats, offsets)
            step = functools.partial(_scene_step, model, coords, feats, offsets)
            result = _time_step(step, device, args.warmup, args.repeats)
            row = {
                "benchmark": "backbones-scene", "model": name, "batch": batch, "points_per_scene": args.points,
                "voxels": voxels, "sparse_conv": args.sparse_conv,
                "attention": args.attention if name == "ptv3" else None, "device": str(device), **result,
            }  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def bench_instance(args) -> list[dict]:
    from types import SimpleNamespace

    from unipre3d_hf import SparseUNetConfig, SparseUNetForPointCloudInstanceSegmentation
    from unipre3d_hf.ops.voxelize import segment_mean

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    config = SparseUNetConfig(sparse_conv_backend=args.sparse_conv, num_labels=20)
    model = SparseUNetForPointCloudInstanceSegmentation(config).to(device).eval()
    coords, feats, offsets = synthetic_rooms(1, args.points, device)
    with torch.no_grad():
        out = model.backbone(coords, feats, offsets)
    # oracle predictions: 1 m patches of the walls are instances of classes 2..19, shifted onto their centres
    patch = torch.unique((out.anchor_points / 1.0).floor(), dim=0, return_inverse=True)[1]
    g = torch.Generator(device=device).manual_seed(0)
    centres = segment_mean(out.anchor_points, patch, int(patch.max()) + 1)
    shifts = centres[patch] - out.anchor_points + 0.01 * torch.randn(patch.shape[0], 3, device=device, generator=g)
    logits = torch.nn.functional.one_hot(2 + patch % 18, 20).float() * 5
    oracle = SimpleNamespace(batch_index=out.batch_index, anchor_points=out.anchor_points,
                             point_to_token=out.point_to_token)  # fmt: skip
    stages = {
        "forward": lambda: model(coords, feats, offsets, return_instances=False),
        "forward+clustering (untrained model)": lambda: model(coords, feats, offsets),
        "clustering (oracle offsets)": lambda: model.cluster_instances(oracle, logits, shifts, offsets),
    }
    rows = []
    for stage, step in stages.items():
        with torch.no_grad():
            result = _time_step(step, device, args.warmup, args.repeats)
            found = step()
        masks = found[0][0] if isinstance(found, list) else found.pred_masks
        count = masks.shape[0] if isinstance(found, list) else (masks[0].shape[0] if masks is not None else None)
        row = {
            "benchmark": "instance", "stage": stage, "points": args.points, "voxels": int(out.batch_index.numel()),
            "oracle_instances": int(centres.shape[0]), "predicted_instances": count, "sparse_conv": args.sparse_conv,
            "device": str(device), **result,
        }  # fmt: skip
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
            result = _time_step(functools.partial(step, method), device, args.warmup, args.repeats)
            row = {"benchmark": "selective-scan", "workload": name, "batch": batch, "dim": dim, "L": length, "N": 16}
            row.update({"method": method, "device": str(device), **result})
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


STEP_PRESETS = {  # --preset -> configs/pretrain/<name>.yaml
    "pointmlp": "pointmlp_shapenet", "point_transformer": "point_transformer_shapenet", "mamba3d": "mamba3d_shapenet",
    "pcm": "pcm_shapenet", "sparse_unet": "sparse_unet_scannet", "ptv3": "ptv3_scannet",
}  # fmt: skip
SCENE_PRESETS = ("sparse_unet", "ptv3")
# every lever of issue 17 off: the step as main ran it before (fused AdamW and its on-device NaN skip, bf16 VAE,
# pinned non-blocking copies, torch.compile)
BASELINE_ARGS = ["--fused_optimizer", "false", "--pin_memory", "false", "--torch_compile", "false",
                 "--model.image_encoder_precision", "float32"]  # fmt: skip
# CUDA runtime / driver calls, by name prefix (CUPTI may add a version suffix, e.g. cudaLaunchKernelExC_v11060)
CUDA_LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cudaGraphLaunch", "cuGraphLaunch")
CUDA_SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cuStreamSynchronize")
# ops that make the host wait for a GPU (their result's value or size lives on the device)
SYNCING_OPS = ("aten::_local_scalar_dense", "aten::nonzero", "aten::_unique2", "aten::unique_dim",
               "aten::unique_consecutive", "aten::masked_select")  # fmt: skip
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "pretrain"


def _median_ms(fn, device: torch.device, repeats: int) -> float:
    return statistics.median(_times_ms(fn, device, repeats))


def _random_sd_vae(folder: str) -> str:
    """stabilityai/sd-vae-ft-mse's architecture (diffusers' AutoencoderKL defaults with its four blocks, 128-512
    channels, 2 layers each) with random weights, saved to ``folder``: the same compute as the real VAE, for machines
    that cannot download it."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4, sample_size=512,
    ).save_pretrained(folder)  # fmt: skip
    return folder


def _top_level_aten_us(events) -> list[float]:
    """Durations (us) of the ATen ops the profiler recorded that no other ATen op called: the time the host spent
    inside ATen (dispatch and, on CPU, the computation), each nested op counted once, in its caller."""

    def nested(event) -> bool:
        parent = event.cpu_parent
        while parent is not None:
            if parent.name.startswith("aten::"):
                return True
            parent = parent.cpu_parent
        return False

    return [e.time_range.elapsed_us() for e in events if e.name.startswith("aten::") and not nested(e)]


def _profile_counts(step, device: torch.device, steps: int) -> dict:
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    _sync(device)
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(device)
        wall_ms = (time.perf_counter() - start) * 1e3
    events = prof.events()
    names = [e.name for e in events]
    syncs = CUDA_SYNCS if device.type == "cuda" else SYNCING_OPS
    counts = {
        "aten_ops_per_step": sum(n.startswith("aten::") for n in names) / steps,
        "host_syncs_per_step": sum(n.startswith(syncs) if device.type == "cuda" else n in syncs for n in names) / steps,
    }
    if device.type == "cpu":  # the profiled steps' time inside ATen ops and outside them (Python, module calls, the
        # autograd engine's bookkeeping, and the profiler's own cost per op): the host overhead a GPU step pays too
        counts["aten_ms_per_step"] = sum(_top_level_aten_us(events)) / 1e3 / steps
        counts["host_ms_per_step"] = wall_ms / steps - counts["aten_ms_per_step"]
    if device.type == "cuda":
        counts["host_syncs_per_step"] -= 1 / steps  # not the synchronize that closes the profiled window
        kernel_us = sum(e.time_range.elapsed_us() for e in events if e.device_type == DeviceType.CUDA)
        counts["kernel_ms_per_step"] = kernel_us / 1e3 / steps
        counts["launches_per_step"] = sum(n.startswith(CUDA_LAUNCHES) for n in names) / steps
        counts["syncing_ops_per_step"] = sum(n in SYNCING_OPS for n in names) / steps
    return counts


def _step_variants(args) -> list[tuple[str, list[str]]]:
    """The variants ``step`` runs, each as (name, the arguments that follow the preset's and the pass-through ones):
    ``baseline`` (every lever off, with ``--compare-baseline``), ``levers`` (the defaults, eager) and
    ``levers+compile`` (the defaults with the object backbones compiled, with ``--compile``)."""
    compiled = ["--torch_compile", "true"] + (["--torch_compile_mode", args.compile_mode] if args.compile_mode else [])
    variants = [("baseline", BASELINE_ARGS)] if args.compare_baseline else []
    if args.compare_baseline or not args.compile:
        variants.append(("levers", ["--torch_compile", "false"]))
    if args.compile:
        variants.append(("levers+compile", compiled))
    return variants


def _step_row(args, extra: list[str], dataset: str, accelerator, variant: tuple[str, list[str]], output_dir: str):
    from accelerate.utils import send_to_device

    from unipre3d_hf.data import SeededRows
    from unipre3d_hf.ops.sampling import fused_ops_enabled, set_fused_ops
    from unipre3d_hf.training.loop import build_optimizer_and_scheduler, optimizer_skips_on_device, train_micro_step
    from unipre3d_hf.training.optim import is_fused_adam
    from unipre3d_hf.training.pretrain import PretrainingTask, build_collators, load_split, parse_pretrain_arguments

    name, variant_args = variant
    baseline = name == "baseline"
    set_fused_ops(not baseline)  # the Triton FPS / kNN / ball query kernels: off in the baseline (today's torch twins)
    device = accelerator.device
    scene = args.preset in SCENE_PRESETS
    argv = [
        "--config", str(CONFIG_DIR / f"{STEP_PRESETS[args.preset]}.yaml"), "--dataset", dataset,
        "--output_dir", output_dir, "--num_workers", "0", "--seed", str(args.seed), "--val_lpips", "false",
        # the paper adds LPIPS late (step 50k / 30k): it is not part of these steps, and its network is not loaded
        "--max_steps", str(10 * (args.warmup + args.steps + args.profile_steps) + 100),
        "--mixed_precision", "bf16" if args.bf16 else "no",
    ]  # fmt: skip
    if scene:
        argv += ["--batch_size", str(args.scenes)]
    if args.vae:
        argv += ["--model.image_encoder_name_or_path", args.vae]
    argv += extra + variant_args
    pargs = parse_pretrain_arguments(argv)
    torch.manual_seed(args.seed)
    task = PretrainingTask(pargs)
    task.accelerator, task.args = accelerator, pargs
    rows = load_split(pargs, pargs.train_split)
    collator = build_collators(pargs, task.level, task.background, len(rows[0]["camera_to_world"]))[0]
    seeded = SeededRows(rows, seed=args.seed)
    cpu_batch = collator([seeded[i] for i in range(pargs.batch_size)])  # batch_size > rows: later draws repeat rows
    model = task.build_model()
    if pargs.torch_compile:
        model = task.compile_model(model, pargs.torch_compile_mode, pargs.torch_compile_backend)
    optimizer, scheduler = build_optimizer_and_scheduler(pargs, task, model, device)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    task.set_train_mode(model)
    pinned = pargs.pin_memory and device.type == "cuda"
    host_batch = {k: v.pin_memory() if pinned and isinstance(v, torch.Tensor) else v for k, v in cpu_batch.items()}
    batch = send_to_device(host_batch, device)
    calls = iter(range(10**9))

    def step():
        train_micro_step(pargs, task, accelerator, model, optimizer, scheduler, batch, next(calls))

    for _ in range(args.warmup):
        step()
    encoder = accelerator.unwrap_model(model).image_encoder
    levers = {  # what this variant ran with, read back from the objects the step uses
        "fused_sampling": fused_ops_enabled(),  # Triton FPS / kNN / ball query where their inputs allow (CUDA)
        "fused_adamw": is_fused_adam(optimizer),
        "nonfinite_skip": "device" if optimizer_skips_on_device(optimizer, accelerator) else "host",
        # the frozen SD VAE's arithmetic (None: a trainable image encoder, in the step's own precision)
        "image_encoder_dtype": str(encoder.compute_dtype(device)) if hasattr(encoder, "compute_dtype") else None,
        "pinned_copies": pinned,
        "compile": (pargs.torch_compile_mode or "default") if pargs.torch_compile else False,
    }
    row = {
        "benchmark": "step", "preset": args.preset, "config": STEP_PRESETS[args.preset], "variant": name,
        "bf16": args.bf16, "levers": levers, "device": str(device), "batch": pargs.batch_size,
        "image_encoder": task.config.image_encoder, "render_backend": task.config.render_backend,
    }  # fmt: skip
    if scene:
        row["points"] = int(batch["coords"].shape[0])
    else:
        row["points"] = int(batch["points"].shape[1])
    row["reference_views"], row["target_views"] = batch["reference_images"].shape[1], batch["target_images"].shape[1]
    row["image_size"] = list(batch["target_images"].shape[-2:])
    row["step_ms"] = _median_ms(step, device, args.steps)
    row.update(_profile_counts(step, device, args.profile_steps))
    if "kernel_ms_per_step" in row:
        row["gpu_busy"] = row["kernel_ms_per_step"] / row["step_ms"]

    # the breakdown, on the same batch and model
    inner = accelerator.unwrap_model(model)

    def backbone():
        with accelerator.autocast():
            if scene:
                out = inner.backbone(batch["coords"], batch["features"], batch["offsets"], return_dict=True)
            else:
                out = inner.backbone(batch["points"], features=batch.get("features"), return_dict=True)
        out.last_hidden_state.float().square().mean().backward()
        inner.zero_grad(set_to_none=True)

    row["backbone_ms"] = _median_ms(backbone, device, args.steps)
    with torch.no_grad(), accelerator.autocast():
        gaussians = inner(**batch).gaussians
    leaves = Gaussians(*(getattr(gaussians, k).detach().float().requires_grad_(True) for k in PARAMS), gaussians.mask)
    images = batch["target_images"]
    cameras = Cameras.from_camera_to_world(
        batch["target_c2w"].float(), batch["target_intrinsics"].float(), images.shape[-1], images.shape[-2]
    )
    background = batch.get("background")
    if background is None:
        background = torch.tensor(task.config.background, device=device).expand(images.shape[0], 3)

    def rendering():
        out = render(leaves, cameras, background, backend=task.config.render_backend, check_inputs=False)
        out.colors.sum().backward()

    row["render_ms"] = _median_ms(rendering, device, args.steps)
    if inner.image_encoder is not None:
        references = batch["reference_images"].flatten(0, 1)

        def encode():
            with torch.no_grad(), accelerator.autocast():
                inner.image_encoder(references)

        row["image_encoder_ms"] = _median_ms(encode, device, args.steps)
    with accelerator.autocast():  # gradients for the optimizer alone (the step zeroes its own)
        loss = inner(**batch).loss
    accelerator.backward(loss)
    row["optimizer_ms"] = _median_ms(optimizer.step, device, args.steps)
    optimizer.zero_grad(set_to_none=True)
    row["copy_ms"] = _median_ms(lambda: send_to_device(host_batch, device, non_blocking=pinned), device, args.steps)
    if device.type == "cuda":
        row["peak_mem_MiB"] = torch.cuda.max_memory_allocated(device) / 2**20
    print(json.dumps(row), flush=True)
    return row


def bench_step(args, extra: list[str]) -> list[dict]:
    """Rows of every preset of ``--preset`` (comma-separated, one level); a preset that fails gets an error row and
    the others still run."""
    from accelerate import Accelerator

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    presets = args.preset.split(",")
    unknown = [p for p in presets if p not in STEP_PRESETS]
    levels = {"scene" if p in SCENE_PRESETS else "object" for p in presets}
    if unknown or len(levels) != 1:
        raise SystemExit(f"step: --preset takes presets of one level among {list(STEP_PRESETS)}, got {args.preset!r}")
    level = levels.pop()
    accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision="bf16" if args.bf16 else "no")
    rows = []
    with tempfile.TemporaryDirectory(prefix="unipre3d-step-") as tmp:
        dataset = args.dataset
        if dataset is None:
            from unipre3d_hf.data import build_objects_mini, build_scenes_mini
            from unipre3d_hf.utils.import_utils import require_package

            require_package("pybullet", "building the mini set (or pass --dataset DIR, a pre-built copy)")
            dataset = os.path.join(tmp, f"{level}s-mini")
            (build_objects_mini if level == "object" else build_scenes_mini)(dataset, show_progress=False)
        if args.vae is None and not any(a.startswith("--model.image_encoder") for a in extra):
            try:
                args.vae = _random_sd_vae(os.path.join(tmp, "sd-vae-random"))
            except ImportError:
                print("step: diffusers is not installed: the rows use the small conv image encoder, not the SD VAE",
                      file=sys.stderr)  # fmt: skip
                extra = [*extra, "--model.image_encoder", "conv"]
        for preset in presets:
            one = argparse.Namespace(**{**vars(args), "preset": preset})
            variants = []
            try:
                for variant in _step_variants(args):
                    variants.append(_step_row(one, extra, dataset, accelerator, variant, os.path.join(tmp, "run")))
                    accelerator.free_memory()  # the variant's model and optimizer go before the next one is built
                    gc.collect()
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                        torch.cuda.reset_peak_memory_stats(device)
            except Exception as err:  # reported as a row; the other presets still run
                error = {
                    "benchmark": "step",
                    "preset": preset,
                    "bf16": args.bf16,
                    "error": f"{type(err).__name__}: {err}",
                }
                print(json.dumps(error), flush=True)
                rows += [*variants, error]
            else:
                rows += variants
                for after in variants[1:] if args.compare_baseline else []:
                    ratio = {
                        "benchmark": "step-ratio", "preset": preset, "variant": after["variant"], "bf16": args.bf16,
                        "device": str(device), "baseline_step_ms": variants[0]["step_ms"],
                        "step_ms": after["step_ms"], "speedup": variants[0]["step_ms"] / after["step_ms"],
                    }  # fmt: skip
                    print(json.dumps(ratio), flush=True)
                    rows.append(ratio)
            if args.output:  # after every preset: a command stopped by a time limit keeps the presets it finished
                _write_results(args.output, rows)
    return rows


CURVE_PRECISIONS = ("fp32", "bf16")  # the pair of each preset: --mixed_precision no / bf16
# the validation PSNRs pretrain writes per level (a scene's validation frames are all novel views)
CURVE_METRICS = {"object": ("psnr_novel", "psnr_reference"), "scene": ("psnr_novel",)}
SCRIPTS_DIR = Path(__file__).resolve().parent


def _dataset_level(path: str) -> str:
    """``"scene"`` or ``"object"``, from the columns of the dataset's train split (the rule of
    ``load_pretraining_dataset``)."""
    from unipre3d_hf.data.schemas import load_split_dataset

    features = load_split_dataset(path, "train", streaming=True).features or {}
    return "scene" if "coords" in features else "object"


def _curve_argv(preset: str, precision: str, args, datasets: dict, output_dir: str, extra: list[str]) -> list[str]:
    """``scripts/pretrain.py`` arguments of one run of the pair: the preset's mini config, validation at step 0 and
    at the end, one checkpoint at the end; ``extra`` last, so that it overrides any of these."""
    steps = str(args.steps)
    argv = [
        "--config", str(CONFIG_DIR / f"{preset}_mini.yaml"), "--max_steps", steps, "--eval_every", steps,
        "--save_every", steps, "--log_every", str(min(10, args.steps)), "--eval_at_start", "true",
        "--seed", str(args.seed), "--mixed_precision", "no" if precision == "fp32" else "bf16",
        "--output_dir", output_dir, "--overwrite_output_dir", "true", "--num_workers", str(args.num_workers),
    ]  # fmt: skip
    level = "scene" if preset in SCENE_PRESETS else "object"
    if level in datasets:
        argv += ["--dataset", datasets[level]]
    return argv + extra


def _run_pretrain(argv: list[str], log_path: str, env: dict) -> dict:
    """One ``scripts/pretrain.py`` process, its output to ``log_path``: exit status and wall seconds."""
    import subprocess

    print(f"curves: started {log_path}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.run([sys.executable, str(SCRIPTS_DIR / "pretrain.py"), *argv], stdout=log,
                              stderr=subprocess.STDOUT, env=env, check=False)  # fmt: skip
    seconds = time.perf_counter() - start
    print(f"curves: exit {proc.returncode} after {seconds:.0f} s: {log_path}", file=sys.stderr, flush=True)
    return {"returncode": proc.returncode, "seconds": seconds}


def _curve_run_summary(output_dir: str, metrics: tuple[str, ...]) -> dict:
    """Validation ``metrics`` before (step 0) and after the run from its ``final.json`` (a missing value is NaN: it
    fails the tolerance), and its skipped steps."""
    with open(os.path.join(output_dir, "final.json")) as f:
        history = json.load(f)
    initial, final = history.get("initial") or {}, history.get("final") or {}
    # strict JSON: pretrain writes a NaN metric as "nan", which float() reads back
    summary = {m: [float(initial.get(f"val/{m}", "nan")), float(final.get(f"val/{m}", "nan"))] for m in metrics}
    summary["steps"], summary["skipped_steps"] = history.get("step"), history.get("skipped_steps")
    return summary


def _log_tail(path: str, lines: int = 5) -> str:
    with open(path, errors="replace") as f:
        return " | ".join(line.strip() for line in f.read().splitlines()[-lines:])


def _curve_row(preset: str, args, runs: dict) -> dict:
    """The pair's row: each run's PSNRs [before, after], bf16 - fp32 after training per metric (dB), and whether every
    difference is finite and within ``args.tolerance``."""
    row = {"benchmark": "curves", "preset": preset, "config": f"{preset}_mini", "steps": args.steps, "seed": args.seed}
    for precision, run in runs.items():
        if run["returncode"] != 0:
            row["error"] = f"the {precision} run exited with {run['returncode']}: {_log_tail(run['log'])}"
            row["log"] = run["log"]
            return row
    metrics = CURVE_METRICS["scene" if preset in SCENE_PRESETS else "object"]
    for precision, run in runs.items():
        row[precision] = {**_curve_run_summary(run["output_dir"], metrics), "seconds": run["seconds"],
                          "output_dir": run["output_dir"], "log": run["log"]}  # fmt: skip
    fp32, bf16 = row["fp32"], row["bf16"]
    row["difference_db"] = {m: bf16[m][1] - fp32[m][1] for m in metrics}
    diffs = list(row["difference_db"].values())
    row["tolerance_db"] = args.tolerance
    row["within_tolerance"] = bool(diffs) and all(abs(d) <= args.tolerance for d in diffs)  # NaN: not within
    return row


def _curves_markdown(rows: list[dict]) -> str:
    """The rows as the Markdown table of docs/benchmarks.md ("bf16 vs fp32: 200-step learning curves")."""

    def cell(run: dict, metrics) -> str:
        parts = [f"{m.split('_')[1]} {run[m][0]:.2f} -> {run[m][1]:.2f}" for m in metrics]
        skipped = f" ({run['skipped_steps']} skipped)" if run.get("skipped_steps") else ""
        return ", ".join(parts) + skipped

    lines = [
        "| preset | steps | fp32 val PSNR (dB) | bf16 val PSNR (dB) | bf16 - fp32 | within |",
        "|---|---:|---|---|---:|---|",
    ]
    for row in rows:
        if "error" in row:
            error = row["error"].replace("|", "\\|")
            lines.append(f"| `{row['config']}.yaml` | {row['steps']} | failed: {error} | | | |")
            continue
        metrics = list(row["difference_db"])
        fp32, bf16 = cell(row["fp32"], metrics), cell(row["bf16"], metrics)
        diff = " / ".join(f"{d:+.2f}" for d in row["difference_db"].values())
        within = f"{'yes' if row['within_tolerance'] else 'no'} ({row['tolerance_db']} dB)"
        lines.append(f"| `{row['config']}.yaml` | {row['steps']} | {fp32} | {bf16} | {diff} | {within} |")
    return "\n".join(lines)


def bench_curves(args, extra: list[str]) -> list[dict]:
    """The bf16 / fp32 pair of every preset of ``--preset``: two ``scripts/pretrain.py`` runs with the same seed,
    data and schedule, ``--concurrent`` processes at a time; a row per preset, in ``--preset``'s order, as each
    pair ends (also written to ``--json`` then, so that an interrupted command keeps the finished pairs)."""
    from concurrent.futures import ThreadPoolExecutor

    from unipre3d_hf.training.pretrain import load_split, parse_pretrain_arguments

    presets = args.preset.split(",")
    unknown = [p for p in presets if p not in STEP_PRESETS]
    if unknown or len(set(presets)) != len(presets):
        raise SystemExit(f"curves: --preset takes distinct presets among {list(STEP_PRESETS)}, got {args.preset!r}")
    if args.steps < 1 or args.concurrent < 1:
        raise SystemExit(f"curves: --steps and --concurrent must be >= 1, got {args.steps} and {args.concurrent}")
    if args.num_workers is None:  # the CPU cores shared by the concurrent runs (the configs ask for 8 workers each)
        args.num_workers = max(1, (os.cpu_count() or 1) // args.concurrent - 1)
    datasets = {}
    for path in args.dataset or []:
        level = _dataset_level(path)
        if level in datasets:
            raise SystemExit(f"curves: two --dataset folders of the {level} level: {datasets[level]!r}, {path!r}")
        datasets[level] = path
    # every run's arguments are checked before anything runs; each set's splits are loaded once, here, so that a
    # missing mini set is built (and the datasets cache written) by this process, not by several runs at once
    runs, loaded = {}, set()
    for preset in presets:
        for precision in CURVE_PRECISIONS:
            output_dir = os.path.join(args.output_dir, f"{preset}-{precision}")
            argv = _curve_argv(preset, precision, args, datasets, output_dir, extra)
            try:
                pargs = parse_pretrain_arguments(argv)
            except ValueError as err:
                raise SystemExit(f"curves: {preset} {precision}: {err}") from None
            for split in (pargs.train_split, pargs.val_split):
                if (pargs.dataset, pargs.data_root, split) not in loaded:
                    load_split(pargs, split)
                    loaded.add((pargs.dataset, pargs.data_root, split))
            runs[preset, precision] = {"argv": argv, "output_dir": output_dir,
                                       "log": os.path.join(args.output_dir, f"{preset}-{precision}.log")}  # fmt: skip
    os.makedirs(args.output_dir, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.concurrent)))
    rows = []
    with ThreadPoolExecutor(max_workers=args.concurrent) as pool:
        futures = {key: pool.submit(_run_pretrain, run["argv"], run["log"], env) for key, run in runs.items()}
        for preset in presets:
            pair = {p: {**runs[preset, p], **futures[preset, p].result()} for p in CURVE_PRECISIONS}
            row = _curve_row(preset, args, pair)
            print(json.dumps(row), flush=True)
            rows.append(row)
            if args.output:
                _write_results(args.output, rows)
    print(_curves_markdown(rows), flush=True)
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
    p_render.set_defaults(func=bench_render)
    p_bb = sub.add_parser("backbones", help="object backbones, forward + backward at the paper's batch size")
    p_bb.add_argument("--models", default=None, help=f"comma-separated subset of {','.join(OBJECT_BACKBONES)}")
    p_bb.add_argument("--scan-backends", default="torch,mamba_ssm", help="selective scan(s) for the Mamba models")
    p_bb.add_argument("--batch", type=int, default=32)
    p_bb.add_argument("--points", type=int, default=1024)
    p_bb.add_argument("--bf16", action="store_true", help="bf16 autocast")
    p_bb.add_argument("--device", default=None)
    p_bb.add_argument("--repeats", type=int, default=10)
    p_bb.add_argument("--warmup", type=int, default=2)
    p_bb.add_argument("--output", default=None)
    p_bb.set_defaults(func=bench_backbones)
    p_data = sub.add_parser("data", help="rows/s of the dataset + collator path (CPU)")
    p_data.add_argument("--workload", choices=["object", "scene", "all"], default="all")
    p_data.add_argument("--root", default="data", help="folder holding objects-mini / scenes-mini")
    p_data.add_argument("--batch-size", type=int, default=None, help="default 32 objects / 2 scenes (the mini presets)")
    p_data.add_argument("--batches", type=int, default=10)
    p_data.add_argument("--workers", type=int, default=0)
    p_data.add_argument("--readers", default="python,numpy", help="comma-separated subset of python,numpy,streaming")
    p_data.add_argument("--output", default=None, help="also write the results as JSON to this file")
    p_data.set_defaults(func=bench_data)
    p_scene = sub.add_parser("backbones-scene", help="Sparse UNet and PTv3, forward + backward on synthetic rooms")
    p_scene.add_argument("--models", default="all", help="all, or a comma-separated subset of sparse_unet,ptv3")
    p_scene.add_argument("--sparse-conv", choices=["auto", "torch", "spconv"], default="auto")
    p_scene.add_argument("--attention", choices=["auto", "torch", "torch_varlen", "flash_attn"], default="auto")
    p_scene.add_argument("--batch-sizes", default="1,4", help="scenes per batch, comma-separated")
    p_scene.add_argument("--points", type=int, default=150_000, help="points per scene (about 140k voxels at 2 cm)")
    p_scene.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p_scene.add_argument("--repeats", type=int, default=10)
    p_scene.add_argument("--warmup", type=int, default=2)
    p_scene.add_argument("--output", default=None, help="also write the results as JSON to this file")
    p_scene.set_defaults(func=bench_backbones_scene)
    p_inst = sub.add_parser("instance", help="PointGroup inference (forward, clustering) on a synthetic room")
    p_inst.add_argument("--points", type=int, default=100_000, help="points in the room")
    p_inst.add_argument("--sparse-conv", choices=["auto", "torch", "spconv"], default="auto")
    p_inst.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p_inst.add_argument("--repeats", type=int, default=5)
    p_inst.add_argument("--warmup", type=int, default=1)
    p_inst.add_argument("--output", default=None, help="also write the results as JSON to this file")
    p_inst.set_defaults(func=bench_instance)
    p_scan = sub.add_parser("selective-scan", help="Mamba selective scan, forward + backward")
    p_scan.add_argument("--workload", choices=["mamba3d", "pcm", "all"], default="all")
    p_scan.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p_scan.add_argument("--methods", default=None, help="comma-separated subset of torch,naive,mamba_ssm")
    p_scan.add_argument("--batch", type=int, default=None, help="override the batch size (default: 32)")
    p_scan.add_argument("--repeats", type=int, default=10)
    p_scan.add_argument("--warmup", type=int, default=2)
    p_scan.add_argument("--output", default=None, help="also write the results as JSON to this file")
    p_scan.set_defaults(func=bench_selective_scan)
    p_step = sub.add_parser("step", help="whole pre-training steps of a paper preset on a real mini-set batch")
    p_step.add_argument("--preset", required=True, help=f"one or more (comma-separated) of {','.join(STEP_PRESETS)}")
    p_step.add_argument("--scenes", type=int, choices=[1, 4], default=1, help="scenes per batch (scene presets)")
    p_step.add_argument("--dataset", default=None, help="a pre-built objects-mini / scenes-mini folder (default: "
                        "build one into a temporary folder, which needs pybullet)")  # fmt: skip
    p_step.add_argument("--vae", default=None, help="SD VAE folder or Hub id (default: its architecture with random "
                        "weights: the same compute)")  # fmt: skip
    p_step.add_argument("--compare-baseline", action="store_true", help="also run with every issue-17 lever off")
    p_step.add_argument("--bf16", action="store_true", help="bf16 mixed precision (Accelerate autocast)")
    p_step.add_argument("--compile", action="store_true", help="a levers+compile row: the object backbones "
                        "compiled (with --compare-baseline, besides the eager levers row)")  # fmt: skip
    p_step.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. reduce-overhead (CUDA graphs)")
    p_step.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p_step.add_argument("--steps", type=int, default=20, help="timed steps (and repeats of each breakdown part)")
    p_step.add_argument("--warmup", type=int, default=3)
    p_step.add_argument("--profile-steps", type=int, default=3, help="steps under torch.profiler")
    p_step.add_argument("--seed", type=int, default=0)
    p_step.add_argument("--json", "--output", dest="output", default=None, help="also write the results as JSON")
    p_step.set_defaults(func=bench_step)
    p_curves = sub.add_parser("curves", help="bf16 vs fp32 learning-curve pairs of the *_mini presets")
    p_curves.add_argument("--preset", required=True, help=f"one or more (comma-separated) of {','.join(STEP_PRESETS)}")
    p_curves.add_argument("--steps", type=int, default=200, help="training steps of every run")
    p_curves.add_argument("--dataset", action="append", default=None, help="a pre-built set for the presets of its "
                          "level (given once per level; default: the config's mini set under data/, built when "
                          "missing)")  # fmt: skip
    p_curves.add_argument("--concurrent", type=int, default=1, help="runs at a time (side by side on one GPU)")
    p_curves.add_argument("--num-workers", type=int, default=None, help="DataLoader workers per run (default: the "
                          "CPU cores / --concurrent, minus one)")  # fmt: skip
    p_curves.add_argument("--seed", type=int, default=0)
    p_curves.add_argument("--tolerance", type=float, default=0.3, help="dB: the most |bf16 - fp32| after training")
    p_curves.add_argument("--output-dir", default="outputs/curves", help="the runs' output_dir's and logs")
    p_curves.add_argument("--json", "--output", dest="output", default=None, help="also write the results as JSON")
    p_curves.set_defaults(func=bench_curves)
    args, extra = parser.parse_known_args(argv)
    if extra and args.command not in PASS_THROUGH:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")

    print(json.dumps(_environment()), flush=True)
    rows = args.func(args, extra) if args.command in PASS_THROUGH else args.func(args)
    if args.output:
        _write_results(args.output, rows)


PASS_THROUGH = ("step", "curves")  # benchmarks whose unknown options go to the training arguments


def _environment() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "cpu_threads": torch.get_num_threads(),
    }


def _write_results(path: str, rows: list[dict]) -> None:
    with open(path, "w") as f:
        json.dump({"environment": _environment(), "command": " ".join(sys.argv), "results": rows}, f, indent=1)


if __name__ == "__main__":
    main()
