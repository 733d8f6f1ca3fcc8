#!/usr/bin/env python
"""UniPre3D pre-training with Accelerate, on 1 CPU to N GPUs.

    accelerate launch scripts/pretrain.py --config configs/pretrain/ptv3_scannet.yaml
    python scripts/pretrain.py --config configs/pretrain/demo_objects.yaml            # the CPU demo, ~5 minutes
    python scripts/pretrain.py --config configs/pretrain/demo_objects.yaml --max_steps 50 --model.initial_scale 0.05

Any field of ``PretrainArguments`` can be overridden on the command line as ``--<field> <value>`` (values are parsed
as YAML: ``--image_size 64``, ``--use_ema false``); dict fields take ``--backbone.<key> <value>`` /
``--model.<key> <value>``. ``--resume latest`` continues the newest complete checkpoint in ``output_dir``.

What a run writes under ``output_dir``: ``checkpoint-<step>/`` (Accelerate state: model, optimizer, scheduler, EMA,
RNG; the last ``keep_last`` kept, written crash-safely), ``best/`` (the EMA model with the best validation
``psnr_novel``), ``renders/step-<step>.png`` (reference, render and ground truth of validation samples at every
evaluation), ``logs/<run>/metrics.jsonl`` (and TensorBoard when installed) and, at the end, ``backbone/``: the EMA
backbone, loadable with ``AutoModel.from_pretrained``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field

import torch
import yaml
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import ProjectConfiguration, gather_object, send_to_device, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

import unipre3d_hf  # noqa: F401  (registers the Auto classes)
from unipre3d_hf import UniPre3DConfig, UniPre3DForGaussianPretraining
from unipre3d_hf.data import (
    EpochSampler,
    NumpyRows,
    ObjectPretrainingCollator,
    ObjectViewSampler,
    SceneAugmentation,
    ScenePretrainingCollator,
    SceneViewSampler,
    SeededRows,
    load_mini_dataset,
    load_pretraining_dataset,
)
from unipre3d_hf.training import (
    EMA,
    LPIPSLoss,
    ViewMetricAccumulator,
    all_grads_finite,
    build_optimizer,
    build_scheduler,
    build_trackers,
    checkpoint_info,
    psnr,
    resolve_resume,
    save_best,
    save_checkpoint,
    save_render_grid,
    to_json_value,
)

logger = logging.getLogger("pretrain")
MINI_SETS = ("objects-mini", "scenes-mini")


@dataclass
class PretrainArguments:
    """Everything a run needs. The YAML presets in ``configs/pretrain/`` set these fields."""

    # model: UniPre3DConfig.from_preset(preset, backbone_kwargs=backbone, **model)
    preset: str = "pointmlp_shapenet"
    backbone: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)
    # data: "objects-mini" / "scenes-mini" (built under data_root when missing), a folder or a Hub dataset id
    dataset: str = "objects-mini"
    data_root: str = "data"
    train_split: str = "train"
    val_split: str = "validation"
    num_points: int = 1024  # object level: points per cloud
    point_sampling: str = "fps"  # object level: "fps" (the paper), "random", or "first" (mini sets store FPS order)
    image_size: int | list | None = None  # resize images (and intrinsics); None keeps the stored size
    num_reference: int = 8  # scene level: reference frames (each paired with a supervision frame)
    max_scene_points: int | None = None  # scene level: cap per scene (PTv3: 80000, by FPS)
    augment: bool = True
    num_workers: int = 0
    # a training split of fewer batches than this is repeated within an epoch: workers prepare no batch across an
    # epoch's end, so a one-batch epoch (60 objects at batch 32) waits for every batch from scratch
    min_batches_per_epoch: int = 50
    skip_corrupt: bool = True  # report and skip unreadable samples instead of stopping
    # optimisation (method reference 7.5): AdamW, per-iteration StepLR, clipping, non-finite steps skipped
    output_dir: str = "outputs/pretrain"
    max_steps: int = 100_000
    batch_size: int = 32  # global batch per optimizer step (all processes and accumulation steps)
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    adam_betas: list = field(default_factory=lambda: [0.9, 0.999])
    adam_epsilon: float = 1e-15
    lr_step_size: int = 20_000
    lr_gamma: float = 0.8
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"  # "no" | "bf16" | "fp16"
    seed: int = 42
    use_ema: bool = True
    ema_beta: float = 0.9999
    ema_update_every: int = 10
    ema_update_after_step: int = 100
    find_unused_parameters: bool = False
    sync_batchnorm: bool = True  # SyncBatchNorm across GPUs (CUDA, more than one process)
    # logging, evaluation, checkpoints
    log_every: int = 10
    eval_every: int = 2000
    eval_at_start: bool = True
    val_samples: int | None = None  # None = the whole validation split
    val_views: int = 4  # object level: supervision views per validation sample (besides the reference)
    val_batch_size: int = 8
    # LPIPS of the validation views (the paper scores it): None = when the model trains with LPIPS (lambda_lpips > 0),
    # true = always, false = never. It needs the lpips package and torchvision's VGG weights, checked at the start.
    val_lpips: bool | None = None
    grid_samples: int = 4
    save_every: int = 2000
    keep_last: int = 3
    resume: str | None = None  # None, "latest" or a checkpoint folder
    run_name: str = "pretrain"
    # benchmark: after training, time this many forward+backward passes on one batch with batched rendering and with
    # the paper's loop of one rasterizer call per (sample, view) (method reference 6.1); results in final.json
    compare_render_loop: int = 0
    # testing aid: at this step the main process writes NaN into one of its gradients (after DDP's all-reduce, so only
    # its copy is bad); every process must then skip the step together
    nan_grad_step: int | None = None


# --------------------------------------------------------------------------------------------------- arguments
def _coerce(value: str):
    """A command-line value parsed as YAML; "1e-3" (a string to YAML 1.1) becomes a float."""
    parsed = yaml.safe_load(value)
    if isinstance(parsed, str):
        try:
            return float(parsed)
        except ValueError:
            return parsed
    return parsed


def parse_args(argv: list[str] | None = None) -> PretrainArguments:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="a YAML preset (configs/pretrain/*.yaml)")
    known, rest = parser.parse_known_args(argv)
    values: dict = {}
    if known.config:
        with open(known.config) as f:
            values = yaml.safe_load(f) or {}
    names = {f.name for f in dataclasses.fields(PretrainArguments)}
    unknown = set(values) - names
    if unknown:
        raise SystemExit(f"{known.config}: unknown fields {sorted(unknown)}; see PretrainArguments in {__file__}")
    if len(rest) % 2:
        raise SystemExit(f"overrides come in pairs `--field value`, got {rest}")
    for key, value in zip(rest[::2], rest[1::2]):
        if not key.startswith("--"):
            raise SystemExit(f"expected `--field value`, got {key!r}")
        key = key[2:].replace("-", "_") if "." not in key else key[2:]
        head, _, sub = key.partition(".")
        if head not in names:
            raise SystemExit(f"unknown field --{head}; fields: {sorted(names)}")
        if sub:
            if head not in ("backbone", "model"):
                raise SystemExit(f"only `backbone` and `model` take dotted keys, got --{key}")
            values.setdefault(head, {})
            values[head] = {**values[head], sub: _coerce(value)}
        else:
            values[head] = _coerce(value)
    return PretrainArguments(**values)


# -------------------------------------------------------------------------------------------------------- data
def load_split(args: PretrainArguments, split: str):
    if args.dataset in MINI_SETS:
        dataset = load_mini_dataset(args.dataset, root=args.data_root, split=split)
    else:
        dataset = load_pretraining_dataset(args.dataset, split=split)
    # rows with the point and camera columns as NumPy arrays straight from Arrow: 14-23x faster than Python rows
    return NumpyRows(dataset)


def build_collators(args: PretrainArguments, level: str, background, num_views: int):
    size = tuple(args.image_size) if isinstance(args.image_size, list) else args.image_size
    if level == "object":
        train = ObjectPretrainingCollator(
            num_points=args.num_points, point_sampling=args.point_sampling, image_size=size, background=background,
            augment=args.augment, skip_corrupt=args.skip_corrupt,
        )  # fmt: skip
        val = ObjectPretrainingCollator(
            num_points=args.num_points, point_sampling=args.point_sampling, image_size=size, background=background,
            augment=False, skip_corrupt=args.skip_corrupt, seed=0,
            view_sampler=ObjectViewSampler(mode="eval", num_supervision=min(args.val_views, num_views - 1)),
        )  # fmt: skip
    else:
        train = ScenePretrainingCollator(
            view_sampler=SceneViewSampler(num_reference=args.num_reference), image_size=size, background=background,
            augmentation=SceneAugmentation() if args.augment else None, max_points=args.max_scene_points,
            return_labels=False, skip_corrupt=args.skip_corrupt,
        )  # fmt: skip
        val = ScenePretrainingCollator(
            view_sampler=SceneViewSampler(num_reference=args.num_reference, mode="eval"), image_size=size,
            background=background, max_points=args.max_scene_points, max_points_method="fps", return_labels=False,
            skip_corrupt=args.skip_corrupt, seed=0,
        )  # fmt: skip
    return train, val


def _num_views(dataset) -> int:
    return len(dataset[0]["camera_to_world"])


# ------------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model, val_rows, collator, args, accelerator, level: str, background, lpips=None) -> tuple[dict, list]:
    """PSNR/SSIM (and LPIPS with an ``LPIPSLoss`` as ``lpips``) on reference and novel views of this process's share
    of the validation rows, reduced over all processes; plus render-grid rows (reference, then render / ground truth
    of up to two novel views) of the main process's first ``grid_samples`` samples."""
    model.eval()
    lpips_fn = lpips.per_image if lpips is not None else None
    metrics = ViewMetricAccumulator(lpips_fn=lpips_fn, background=background, device=accelerator.device)
    grid = []
    for start in range(0, len(val_rows), args.val_batch_size):
        batch = send_to_device(collator(val_rows[start : start + args.val_batch_size]), accelerator.device)
        num_ref = batch["reference_images"].shape[1]
        if level == "object":  # render the reference view(s) too: they are scored as "reference" views
            for key in ("images", "c2w", "intrinsics"):
                batch[f"target_{key}"] = torch.cat([batch[f"reference_{key}"], batch[f"target_{key}"]], dim=1)
            is_reference = torch.arange(batch["target_images"].shape[1], device=accelerator.device) < num_ref
        else:  # scene level: the supervision frames are all novel
            is_reference = torch.zeros(batch["target_images"].shape[1], dtype=torch.bool, device=accelerator.device)
        with accelerator.autocast():
            out = model(**batch)
        rendered = out.rendered_images.float()
        metrics.add(rendered, batch["target_images"].float(), is_reference, batch["background"])
        novel = (~is_reference).nonzero().flatten()[:2].tolist()
        for b in range(rendered.shape[0]):
            if len(grid) < args.grid_samples:
                row = [batch["reference_images"][b, 0].float().cpu()]
                for v in novel:
                    row += [rendered[b, v].clamp(0, 1).cpu(), batch["target_images"][b, v].float().cpu()]
                grid.append(row)
    state = accelerator.reduce(metrics.state(), "sum")
    return metrics.compute_from_state(state), grid


def run_evaluation(model_eval, val_rows, val_collator, args, accelerator, level, background, step, output_dir, lpips):
    results, grid = evaluate(model_eval, val_rows, val_collator, args, accelerator, level, background, lpips)
    if accelerator.is_main_process and grid:
        save_render_grid(os.path.join(output_dir, "renders", f"step-{step:07d}.png"), grid)
    return {f"val/{k}": v for k, v in results.items()}


# ------------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    """Pre-trains as ``argv`` says (see ``PretrainArguments``) and returns the run's history (also in final.json)."""
    args = parse_args(argv)
    logging_dir = os.path.join(args.output_dir, "logs")
    accelerator = Accelerator(
        # without CUDA, several processes (e.g. `accelerate launch --multi_gpu --num_processes 2`) run on CPU with gloo
        cpu=not torch.cuda.is_available(),
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=build_trackers(logging_dir, args.run_name),
        project_config=ProjectConfiguration(project_dir=args.output_dir, logging_dir=logging_dir),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=args.find_unused_parameters)],
        step_scheduler_with_optimizer=False,  # the StepLR is per iteration, stepped once per optimizer step
    )
    try:
        return train(args, accelerator)
    finally:
        # Free the DDP model before the process group. Its C++ Reducer owns a reference to the gloo process group and
        # is freed with the GIL held; freed last, it destroys the group, which joins gloo's worker threads, and a
        # worker still releasing the tensors of a finished collective waits for the GIL: the process hangs at exit
        # (seen in about 1 of 10 two-process CPU runs; pytorch/pytorch#56297). Freed first, only the process group's
        # own destructor joins the threads, and it releases the GIL.
        accelerator.free_memory()
        gc.collect()  # also a model kept alive only by a reference cycle
        accelerator.end_training()


def train(args: PretrainArguments, accelerator: Accelerator) -> dict:
    output_dir = args.output_dir
    logging.basicConfig(level=logging.INFO if accelerator.is_main_process else logging.WARNING)
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    set_seed(args.seed)
    world = accelerator.num_processes
    per_process, remainder = divmod(args.batch_size, world * args.gradient_accumulation_steps)
    if remainder or per_process < 1:
        raise SystemExit(
            f"batch_size={args.batch_size} must be a multiple of num_processes x gradient_accumulation_steps = "
            f"{world} x {args.gradient_accumulation_steps}"
        )

    config = UniPre3DConfig.from_preset(args.preset, backbone_kwargs=args.backbone, **args.model)
    level, background = config.level, tuple(config.background)
    with accelerator.main_process_first():  # the main process builds a missing mini set first
        train_ds = load_split(args, args.train_split)
        val_ds = load_split(args, args.val_split)
    if len(train_ds) < args.batch_size:
        raise SystemExit(f"the training split has too few rows ({len(train_ds)}) for batch_size={args.batch_size}")
    repeats = math.ceil(args.min_batches_per_epoch * args.batch_size / len(train_ds))
    if repeats > 1:
        logger.info("%d training rows: an epoch goes through them %d times", len(train_ds), repeats)
    # each draw carries its own seed, so the views and augmentation of a sample don't depend on the workers or on
    # what was collated before: a resume mid-epoch is exact (see EpochSampler)
    sampler = EpochSampler(len(train_ds), repeats, seed=args.seed)
    num_val = len(val_ds) if args.val_samples is None else min(args.val_samples, len(val_ds))
    val_rows = [val_ds[i] for i in range(accelerator.process_index, num_val, world)]
    train_collator, val_collator = build_collators(args, level, background, _num_views(val_ds))
    train_loader = DataLoader(
        SeededRows(train_ds, seed=args.seed), batch_size=per_process, sampler=sampler, drop_last=True,
        collate_fn=train_collator, num_workers=args.num_workers, persistent_workers=args.num_workers > 0,
    )  # fmt: skip

    model = UniPre3DForGaussianPretraining(config)
    if model.image_encoder is not None and hasattr(model.image_encoder, "load"):
        with accelerator.main_process_first():  # download the frozen VAE once
            model.image_encoder.load()
    if model.lpips is not None and args.max_steps > config.lpips_start_step:
        with accelerator.main_process_first():  # fail now, not at step lpips_start_step, if LPIPS is unavailable
            model.lpips.network.load()
    val_lpips = None
    if args.val_lpips or (args.val_lpips is None and model.lpips is not None):
        val_lpips = model.lpips if model.lpips is not None else LPIPSLoss(config.lpips_net)
        with accelerator.main_process_first():  # fail now, not at the first validation
            val_lpips.network.load()
    if args.sync_batchnorm and world > 1 and accelerator.device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    groups = {
        "point_network": [*model.backbone.parameters(), *model.gaussian_head.parameters()],
        "fusion": list(model.fusion.parameters()) if model.fusion is not None else [],
        "image_encoder": [
            p for m in (model.image_encoder, model.image_projection) if m is not None for p in m.parameters()
        ],
    }
    optimizer = build_optimizer(
        groups, lr=args.learning_rate, weight_decay=args.weight_decay, betas=tuple(args.adam_betas),
        eps=args.adam_epsilon,
    )  # fmt: skip
    scheduler = build_scheduler(optimizer, args.lr_step_size, args.lr_gamma)
    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)
    ema = None
    if args.use_ema:
        ema = EMA(
            accelerator.unwrap_model(model), beta=args.ema_beta, update_every=args.ema_update_every,
            update_after_step=args.ema_update_after_step,
        )  # fmt: skip
        accelerator.register_for_checkpointing(ema)

    step = 0
    resume_from = resolve_resume(output_dir, args.resume)
    if resume_from is not None:
        accelerator.load_state(resume_from)
        step = int(checkpoint_info(resume_from)["step"])
        logger.info("resumed from %s at step %d", resume_from, step)
    accelerator.init_trackers(args.run_name, config={k: str(v) for k, v in dataclasses.asdict(args).items()})
    if accelerator.is_main_process:
        os.makedirs(output_dir, exist_ok=True)
        with open(os.path.join(output_dir, "pretrain_args.json"), "w") as f:
            json.dump(dataclasses.asdict(args), f, indent=2)
        n_params = sum(p.numel() for p in accelerator.unwrap_model(model).parameters())
        logger.info(
            "%s: %s level, %.2fM trainable parameters, %d processes x %d samples x %d accumulation, %d steps",
            args.preset, level, n_params / 1e6, world, per_process, args.gradient_accumulation_steps, args.max_steps,
        )  # fmt: skip

    def model_for_eval():
        return ema.model if ema is not None else accelerator.unwrap_model(model)

    def validate(at_step: int) -> dict:
        return run_evaluation(
            model_for_eval(), val_rows, val_collator, args, accelerator, level, background, at_step, output_dir,
            val_lpips,
        )  # fmt: skip

    history: dict = {}
    if args.eval_at_start and step == 0:
        history["initial"] = validate(step)
        accelerator.log(history["initial"], step=step)
        logger.info("step 0 validation: %s", _fmt(history["initial"]))

    batches_per_step = args.gradient_accumulation_steps
    steps_per_epoch = len(train_loader) // batches_per_step
    epoch, skip_batches = divmod(step, steps_per_epoch)
    skip_batches *= batches_per_step
    progress = tqdm(total=args.max_steps, initial=step, disable=not accelerator.is_main_process, desc="pretrain")
    skipped_steps, window_start, window_samples, window_data_time = 0, time.perf_counter(), 0, 0.0
    last_eval = None
    model.train()
    while step < args.max_steps:
        train_loader.set_epoch(epoch)
        loader = accelerator.skip_first_batches(train_loader, skip_batches) if skip_batches else train_loader
        skip_batches = 0
        fetch_start = time.perf_counter()
        for batch in loader:
            window_data_time += time.perf_counter() - fetch_start  # time spent waiting for the DataLoader
            with accelerator.accumulate(model):
                out = model(**batch, global_step=step)
                accelerator.backward(out.loss)
                if accelerator.sync_gradients and args.nan_grad_step == step + 1 and accelerator.is_main_process:
                    next(p for p in model.parameters() if p.grad is not None).grad.fill_(float("nan"))
                if accelerator.sync_gradients:
                    # skip the step on every rank when any rank sees a non-finite gradient (method reference 7.5)
                    # (accelerate's reduce knows sum / mean / max only: count the processes with a bad gradient)
                    num_bad = accelerator.reduce(1.0 - all_grads_finite(model), "sum")
                    if num_bad.item() > 0:
                        skipped_steps += 1
                        logger.warning("step %d: non-finite gradient, step skipped", step + 1)
                    else:
                        accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                        optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
            window_samples += batch["offsets"].numel() if "offsets" in batch else batch["points"].shape[0]
            if not accelerator.sync_gradients:
                fetch_start = time.perf_counter()
                continue
            step += 1
            progress.update(1)
            if ema is not None:
                ema.update(accelerator.unwrap_model(model))
            if step % args.log_every == 0 or step == args.max_steps:
                with torch.no_grad():
                    train_psnr = psnr(out.rendered_images.detach().float(), out.target_images.float()).mean()
                    scale, opacity = gaussian_statistics(out.gaussians)
                logs = accelerator.reduce(
                    torch.stack([out.loss.detach().float(), out.reconstruction_loss.detach().float(), train_psnr,
                                 scale, opacity]),
                    "mean",
                ).tolist()  # fmt: skip
                elapsed = time.perf_counter() - window_start
                steps_in_window = (step - 1) % args.log_every + 1
                record = {
                    "train/loss": logs[0],
                    "train/reconstruction_loss": logs[1],
                    "train/psnr": logs[2],
                    "train/gaussian_scale": logs[3],
                    "train/gaussian_opacity": logs[4],
                    "train/lr": scheduler.get_last_lr()[0],
                    "train/samples_per_second": window_samples * world / max(elapsed, 1e-9),
                    "train/step_time": elapsed / steps_in_window,
                    "train/data_time": window_data_time / steps_in_window,
                    "train/skipped_steps": skipped_steps,
                    "train/epoch": epoch,
                }
                if out.lpips_loss is not None:
                    record["train/lpips"] = accelerator.reduce(out.lpips_loss.detach().float(), "mean").item()
                if accelerator.device.type == "cuda":
                    record["train/peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
                accelerator.log(record, step=step)
                progress.set_postfix(loss=f"{logs[0]:.4f}", psnr=f"{logs[2]:.2f}")
                window_start, window_samples, window_data_time = time.perf_counter(), 0, 0.0
            paused = time.perf_counter()  # validation and checkpoints are left out of the training speed
            if step % args.eval_every == 0 or step == args.max_steps:
                last_eval = validate(step)
                model.train()
                accelerator.log(last_eval, step=step)
                logger.info("step %d validation: %s", step, _fmt(last_eval))
                best_source = model_for_eval()
                save_best(accelerator, best_source, output_dir, "psnr_novel", last_eval["val/psnr_novel"], step)
            if step % args.save_every == 0 or step == args.max_steps:
                save_checkpoint(accelerator, output_dir, step, keep_last=args.keep_last)
            window_start += time.perf_counter() - paused
            fetch_start = time.perf_counter()
            if step >= args.max_steps:
                break
        epoch += 1
    progress.close()

    if args.compare_render_loop > 0:
        history["render_loop_comparison"] = compare_render_loop(model, batch, args.compare_render_loop, accelerator)
        logger.info("render comparison (forward + backward per step): %s", history["render_loop_comparison"])
    accelerator.wait_for_everyone()
    # every rank's weights must be identical after DDP training: compare their checksums
    checksums = gather_object([weights_checksum(accelerator.unwrap_model(model))])
    history.update(final=last_eval, step=step, skipped_steps=skipped_steps, weight_checksums=checksums)
    history["skipped_samples"] = [list(s) for s in getattr(train_collator, "skipped", [])]
    if accelerator.is_main_process:
        backbone = model_for_eval().backbone
        backbone.save_pretrained(os.path.join(output_dir, "backbone"))
        logger.info("saved the %sbackbone to %s", "EMA " if ema else "", os.path.join(output_dir, "backbone"))
        if len(set(checksums)) != 1:
            logger.error("the processes ended with different weights: %s", checksums)
        with open(os.path.join(output_dir, "final.json"), "w") as f:
            json.dump(to_json_value(history), f, indent=2)  # strict JSON: a NaN metric becomes "nan"
    return history


def per_view_render(gaussians, cameras, background=None, backend="auto", **kwargs):
    """The paper's rendering for comparison: one rasterizer call per (sample, view), results stacked."""
    from unipre3d_hf.rendering import Cameras, Gaussians, RenderOutput, render

    colors, alphas, depths = [], [], []
    for b in range(cameras.batch_size):
        fields = (gaussians.means, gaussians.quats, gaussians.scales, gaussians.opacities, gaussians.sh, gaussians.mask)
        sample = Gaussians(*(None if t is None else t[b : b + 1] for t in fields))
        for v in range(cameras.num_views):
            camera = Cameras(
                cameras.world_to_camera[b : b + 1, v : v + 1], cameras.intrinsics[b : b + 1, v : v + 1],
                cameras.width, cameras.height, cameras.near, cameras.far,
            )  # fmt: skip
            bg = background[b : b + 1] if isinstance(background, torch.Tensor) else background
            out = render(sample, camera, bg, backend=backend, **kwargs)
            colors.append(out.colors)
            alphas.append(out.alphas)
            depths.append(out.depths)
    b, v = cameras.batch_size, cameras.num_views
    stack = [torch.cat(t, dim=1).view(b, v, *t[0].shape[2:]) for t in (colors, alphas, depths)]
    return RenderOutput(*stack, backend=out.backend)


def compare_render_loop(model, batch: dict, steps: int, accelerator) -> dict:
    """Median seconds of a forward + backward pass on ``batch`` with batched rendering and with the per-view loop."""
    import unipre3d_hf.modeling.pretraining as pretraining_module

    def sync():
        if accelerator.device.type == "cuda":
            torch.cuda.synchronize()

    results = {}
    original = pretraining_module.render
    model.train()
    for mode, fn in (("batched", original), ("per_view_loop", per_view_render)):
        pretraining_module.render = fn
        try:
            times = []
            for _ in range(steps + 1):  # the first pass warms up
                sync()
                start = time.perf_counter()
                with accelerator.autocast():
                    out = model(**batch)
                accelerator.backward(out.loss)
                sync()
                times.append(time.perf_counter() - start)
                model.zero_grad(set_to_none=True)
        finally:
            pretraining_module.render = original
        results[f"{mode}_seconds"] = sorted(times[1:])[len(times[1:]) // 2]
    results["speedup"] = results["per_view_loop_seconds"] / results["batched_seconds"]
    return results


def gaussian_statistics(gaussians) -> tuple[torch.Tensor, torch.Tensor]:
    """Geometric-mean scale (largest axis) and mean opacity of the real Gaussians: a collapse into a few large, faint
    Gaussians shows as the scale growing and the opacity falling while the loss stalls."""
    mask = gaussians.mask if gaussians.mask is not None else torch.ones_like(gaussians.opacities, dtype=torch.bool)
    log_scale = gaussians.scales.detach().float().amax(dim=-1).clamp_min(1e-12).log()[mask]
    return log_scale.mean().exp(), gaussians.opacities.detach().float()[mask].mean()


def weights_checksum(model: torch.nn.Module) -> str:
    """SHA-256 of every parameter (name, dtype, bytes), to compare the processes' weights. Buffers are left out:
    without SyncBatchNorm (CPU), each process keeps BatchNorm running statistics of its own batches."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.named_parameters()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _fmt(metrics: dict) -> str:
    return ", ".join(
        f"{k.split('/')[-1]} {v:.3f}" for k, v in metrics.items() if isinstance(v, float) and math.isfinite(v)
    )


if __name__ == "__main__":
    main(sys.argv[1:])
