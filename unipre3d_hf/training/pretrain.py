"""UniPre3D pre-training on the shared loop: the arguments, the task (data, collators, render-grid evaluation, backbone
export) and ``main``, which ``scripts/pretrain.py`` calls.

    accelerate launch scripts/pretrain.py --config configs/pretrain/ptv3_scannet.yaml
    python scripts/pretrain.py --config configs/pretrain/demo_objects.yaml --max_steps 50 --model.initial_scale 0.05

What a run writes under ``output_dir``: ``checkpoint-<step>/`` (model, optimizer, scheduler, EMA, RNG and data position,
in files that load without running code; the last ``keep_last`` kept, written crash-safely), ``best/`` (the EMA model
with the best validation ``psnr_novel``), ``renders/step-<step>.png`` (reference, render and ground truth of validation
samples at every evaluation), ``logs/<run>/metrics.jsonl`` (and TensorBoard when installed), ``training_args.json``
and, at the end, ``backbone/``: the EMA backbone, loadable with ``AutoModel.from_pretrained``, and ``final.json``.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from accelerate.utils import send_to_device

from ..configuration.unipre3d import PRESETS, UniPre3DConfig
from ..data import (
    NumpyRows,
    ObjectPretrainingCollator,
    ObjectViewSampler,
    SceneAugmentation,
    ScenePretrainingCollator,
    SceneViewSampler,
    load_mini_dataset,
    load_pretraining_dataset,
)
from .arguments import parse_arguments
from .loop import TrainingArguments, TrainingTask, run_training
from .losses import LPIPSLoss
from .metrics import ViewMetricAccumulator, psnr
from .visualization import save_render_grid

__all__ = ["PretrainArguments", "PretrainingTask", "compare_render_loop", "main", "per_view_render"]

logger = logging.getLogger("unipre3d_hf.training.pretrain")
MINI_SETS = ("objects-mini", "scenes-mini")


@dataclass
class PretrainArguments(TrainingArguments):
    """Everything a pre-training run needs besides :class:`TrainingArguments`' shared fields (with the paper's
    defaults: AdamW eps 1e-15, EMA, per-iteration StepLR; method reference 7.5). The YAML presets in
    ``configs/pretrain/`` set these fields."""

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
    val_samples: int | None = None  # None = the whole validation split
    val_views: int = 4  # object level: supervision views per validation sample (besides the reference)
    val_batch_size: int = 8
    # LPIPS of the validation views (the paper scores it): None = when the model trains with LPIPS (lambda_lpips > 0),
    # true = always, false = never. It needs the lpips package and torchvision's VGG weights, checked at the start.
    val_lpips: bool | None = None
    grid_samples: int = 4
    # benchmark: after training, time this many forward+backward passes on one batch with batched rendering and with
    # the paper's loop of one rasterizer call per (sample, view) (method reference 6.1); results in final.json
    compare_render_loop: int = 0
    # the shared fields with pre-training's defaults
    output_dir: str = "outputs/pretrain"
    run_name: str = "pretrain"
    max_steps: int = 100_000
    adam_epsilon: float = 1e-15
    use_ema: bool = True
    eval_every: int = 2000
    save_every: int = 2000

    def validate(self) -> None:
        super().validate()
        if self.preset not in PRESETS:
            raise ValueError(f"`preset` must be one of {sorted(PRESETS)}, got {self.preset!r}")
        if self.point_sampling not in ("fps", "random", "first"):
            raise ValueError(f"`point_sampling` must be one of ['fps', 'random', 'first'], got {self.point_sampling!r}")
        for name in ("num_points", "num_reference", "val_views", "val_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be an int >= 1, got {getattr(self, name)!r}")
        for name in ("grid_samples", "compare_render_loop"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be an int >= 0, got {getattr(self, name)!r}")
        for name in ("val_samples", "max_scene_points"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be null or an int >= 1, got {getattr(self, name)!r}")
        size = self.image_size
        sizes = size if isinstance(size, list) else [size] if size is not None else []
        if isinstance(size, list) and len(size) != 2 or not all(isinstance(s, int) and s >= 1 for s in sizes):
            raise ValueError(f"`image_size` must be null, an int >= 1 or [height, width], got {size!r}")


def backbone_config_class(values: dict) -> type:
    """The backbone config class of ``values["preset"]`` (for checking ``--backbone.<key>`` names)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    preset = values.get("preset")
    if preset not in PRESETS:
        raise ValueError(f"`preset` must be one of {sorted(PRESETS)}, got {preset!r}")
    return CONFIG_MAPPING[PRESETS[preset]]


def parse_pretrain_arguments(argv: Sequence[str] | None = None) -> PretrainArguments:
    """:func:`parse_arguments` for :class:`PretrainArguments`, ``--backbone.*`` / ``--model.*`` keys checked."""
    return parse_arguments(
        PretrainArguments, argv, config_classes={"backbone": backbone_config_class, "model": UniPre3DConfig}
    )


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


class PretrainingTask(TrainingTask):
    """UniPre3D pre-training: Gaussians predicted from points, rendered and compared with images. Scored by PSNR /
    SSIM (and LPIPS) of reference and novel views; ``best/`` keeps the model with the best novel-view PSNR (the
    paper's choice); the export is the (EMA) backbone's ``save_pretrained``."""

    best_metric = "psnr_novel"
    best_mode = "max"

    def __init__(self, args: PretrainArguments) -> None:
        self.args = args
        self.config = UniPre3DConfig.from_preset(args.preset, backbone_kwargs=args.backbone, **args.model)
        self.level, self.background = self.config.level, tuple(self.config.background)
        self._train_rows = self._val_rows = self._collators = None
        self.val_lpips = None

    def build_model(self):
        from ..modeling.pretraining import UniPre3DForGaussianPretraining

        accelerator, args, config = self.accelerator, self.args, self.config
        model = UniPre3DForGaussianPretraining(config)
        if model.image_encoder is not None and hasattr(model.image_encoder, "load"):
            with accelerator.main_process_first():  # download the frozen VAE once
                model.image_encoder.load()
        if model.lpips is not None and args.max_steps > config.lpips_start_step:
            with accelerator.main_process_first():  # fail now, not at step lpips_start_step, if LPIPS is unavailable
                model.lpips.network.load()
        if args.val_lpips or (args.val_lpips is None and model.lpips is not None):
            self.val_lpips = model.lpips if model.lpips is not None else LPIPSLoss(config.lpips_net)
            with accelerator.main_process_first():  # fail now, not at the first validation
                self.val_lpips.network.load()
        return model

    def compile_model(self, model, mode, backend):
        """Object level, where every batch has the same shapes (B clouds of N points, fixed image sizes): compiles in
        place, each with ``mode`` / ``backend`` (``mode="reduce-overhead"``: CUDA graphs), the parts that trace as
        one graph each on CPU (no graph break, hence no host sync in them; tests/models/test_compile.py):

        - the backbone, into which the fusion hook (feature lookup, z-buffer, Linear + ReLU) is traced;
        - the Gaussian head;
        - the image encoder (the frozen SD VAE: its feature pass, see ``SDVAEImageEncoder.compile``) and projection.

        The input checks, cameras, renderer and losses stay eager (the torch renderer's tiles have data-dependent
        sizes, gsplat is an extension). On CUDA, mamba-ssm's selective scan is an opaque autograd.Function: Mamba3D
        and PCM then break their backbone graph there. Scene level: nothing is compiled (every batch has its own
        number of voxels, and the voxel hashing, rulebooks and patch layouts read it back): a warning says so."""
        if self.level != "object":
            logger.warning("torch_compile: scene backbones are not compiled (their shapes change with every batch)")
            return model
        parts = [model.backbone, model.gaussian_head]
        if model.image_encoder is not None:
            parts += [model.image_encoder, model.image_projection]
        for part in parts:
            part.compile(mode=mode, backend=backend)
        return model

    def _load_data(self) -> None:
        if self._train_rows is not None:
            return
        args, accelerator = self.args, self.accelerator
        with accelerator.main_process_first():  # the main process builds a missing mini set first
            self._train_rows = load_split(args, args.train_split)
            val_ds = load_split(args, args.val_split)
        num_val = len(val_ds) if args.val_samples is None else min(args.val_samples, len(val_ds))
        self._val_rows = [val_ds[i] for i in range(accelerator.process_index, num_val, accelerator.num_processes)]
        self._collators = build_collators(args, self.level, self.background, len(val_ds[0]["camera_to_world"]))

    def train_dataset(self):
        self._load_data()
        return self._train_rows

    def train_collator(self):
        self._load_data()
        return self._collators[0]

    def parameter_groups(self, model):
        return {
            "point_network": [*model.backbone.parameters(), *model.gaussian_head.parameters()],
            "fusion": list(model.fusion.parameters()) if model.fusion is not None else [],
            "image_encoder": [
                p for m in (model.image_encoder, model.image_projection) if m is not None for p in m.parameters()
            ],
        }

    def training_step(self, model, batch, step):
        out = model(**batch, global_step=step)
        with torch.no_grad():
            scale, opacity = gaussian_statistics(out.gaussians)
            logs = {
                "reconstruction_loss": out.reconstruction_loss.detach(),
                "psnr": psnr(out.rendered_images.detach().float(), out.target_images.float()).mean(),
                "gaussian_scale": scale,
                "gaussian_opacity": opacity,
            }
        if out.lpips_loss is not None:
            logs["lpips"] = out.lpips_loss.detach()
        return out.loss, logs

    def batch_size_of(self, batch):
        return batch["offsets"].numel() if "offsets" in batch else batch["points"].shape[0]

    def evaluate(self, model, accelerator, step, output_dir):
        self._load_data()
        results, grid = evaluate(
            model, self._val_rows, self._collators[1], self.args, accelerator, self.level, self.background,
            self.val_lpips,
        )  # fmt: skip
        if accelerator.is_main_process and grid:
            save_render_grid(os.path.join(output_dir, "renders", f"step-{step:07d}.png"), grid)
        return results

    def export(self, model, output_dir):
        path = os.path.join(output_dir, "backbone")
        model.backbone.save_pretrained(path)
        logger.info("saved the %sbackbone to %s", "EMA " if self.args.use_ema else "", path)

    def history_extras(self, model, last_batch):
        if self.args.compare_render_loop <= 0 or last_batch is None:
            return {}
        comparison = compare_render_loop(model, last_batch, self.args.compare_render_loop, self.accelerator)
        logger.info("render comparison (forward + backward per step): %s", comparison)
        return {"render_loop_comparison": comparison}


def main(argv: Sequence[str] | None = None) -> dict:
    """Pre-trains as ``argv`` says (see :class:`PretrainArguments`) and returns the run's history (also in
    ``final.json``). A bad argument exits with a message naming it, before anything runs."""
    import unipre3d_hf  # noqa: F401  (registers the Auto classes)

    try:
        args = parse_pretrain_arguments(sys.argv[1:] if argv is None else argv)
        task = PretrainingTask(args)
    except ValueError as err:
        raise SystemExit(f"pretrain: error: {err}") from None
    return run_training(args, task)


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
    # masked means, not boolean indexing: indexing by a mask waits for the device to count the mask (a host sync)
    opacities = gaussians.opacities.detach().float()
    mask = gaussians.mask if gaussians.mask is not None else torch.ones_like(opacities, dtype=torch.bool)
    weight = mask.to(torch.float32)
    count = weight.sum().clamp_min(1.0)
    log_scale = gaussians.scales.detach().float().amax(dim=-1).clamp_min(1e-12).log()
    return ((log_scale * weight).sum() / count).exp(), (opacities * weight).sum() / count
