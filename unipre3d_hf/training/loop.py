"""The training loop shared by pre-training and fine-tuning.

A :class:`TrainingTask` says what a run trains and how it is scored; :func:`run_training` does everything else: the
Accelerator (1 CPU .. N GPUs, gradient accumulation, mixed precision), clipping, non-finite steps skipped on every
process together, EMA, crash-safe checkpoints that load without running code and resume exactly, SIGTERM / SIGINT
handling, the output-folder lock, tracking, the progress bar, the evaluation cadence, the best checkpoint and the final
export::

    class MyTask(TrainingTask):
        def build_model(self): ...
        def train_dataset(self): ...
        def train_collator(self): ...
        def training_step(self, model, batch, step): ...   # (loss, {"name": scalar tensor})
        def batch_size_of(self, batch): ...
        def evaluate(self, model, accelerator, step, output_dir): ...   # {"metric": float}
        def export(self, model, output_dir): ...

    history = run_training(TrainingArguments(output_dir="outputs/x", max_steps=100), MyTask())
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import math
import os
import shutil
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from .checkpointing import (
    CheckpointError,
    apply_checkpoint,
    read_checkpoint,
    resume_candidates,
    save_best,
    save_checkpoint,
)
from .ema import EMA
from .optim import LR_SCHEDULERS, all_grads_finite, build_optimizer, build_scheduler, is_fused_adam, skip_step_if
from .tracking import build_trackers, to_json_value

__all__ = [
    "TrainingArguments", "TrainingTask", "build_optimizer_and_scheduler", "lock_output_dir",
    "optimizer_skips_on_device", "run_training", "train_micro_step", "weights_checksum",
]  # fmt: skip

logger = logging.getLogger("unipre3d_hf.training")
LOCK_FILE = ".lock"
PREVIOUS_RUN_DIR = ".previous-run"
MIXED_PRECISION = ("no", "fp16", "bf16", "fp8")


@dataclass
class TrainingArguments:
    """The fields every training script shares (subclasses override defaults and add their own).

    ``batch_size`` is the global batch per optimizer step (all processes x accumulation steps). ``lr_scheduler``:
    ``"step"`` (per-iteration StepLR with ``lr_step_size`` / ``lr_gamma``), ``"cosine"`` or ``"constant"`` (both with
    ``warmup_steps`` of linear warm-up; cosine ends at ``min_learning_rate``). ``mixed_precision`` None takes
    Accelerate's own setting (``accelerate launch --mixed_precision bf16`` / ``accelerate config``, else fp32).
    An ``output_dir`` that holds another run is refused unless ``resume`` or ``overwrite_output_dir`` is given.

    Speed (issue 17): ``fused_optimizer`` None takes the fused AdamW kernel on CUDA (then a step with a non-finite
    gradient is skipped on the device, with no host sync) and ``foreach`` on CPU; False restores the ``foreach``
    AdamW and the host-side skip. ``pin_memory`` (CUDA only) pins the batches and copies them with
    ``non_blocking``. ``torch_compile`` compiles what :meth:`TrainingTask.compile_model` chooses (the whole model by
    default) with ``torch_compile_mode`` (None, ``"reduce-overhead"`` for CUDA graphs, ``"max-autotune"``, ...) and
    ``torch_compile_backend``.
    """

    output_dir: str = "outputs/run"
    overwrite_output_dir: bool = False
    resume: str | None = None  # None | "latest" | a checkpoint folder
    run_name: str = "run"
    seed: int = 42
    max_steps: int = 1000
    batch_size: int = 32
    gradient_accumulation_steps: int = 1
    num_workers: int = 0
    # a training split of fewer batches than this is repeated within an epoch: workers prepare no batch across an
    # epoch's end, so a one-batch epoch waits for every batch from scratch
    min_batches_per_epoch: int = 50
    skip_corrupt: bool = True
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    adam_betas: list = field(default_factory=lambda: [0.9, 0.999])
    adam_epsilon: float = 1e-8
    lr_scheduler: str = "step"
    lr_step_size: int = 20_000
    lr_gamma: float = 0.8
    warmup_steps: int = 0
    min_learning_rate: float = 0.0
    max_grad_norm: float | None = 1.0
    mixed_precision: str | None = None
    use_ema: bool = False
    ema_beta: float = 0.9999
    ema_update_every: int = 10
    ema_update_after_step: int = 100
    find_unused_parameters: bool = False
    sync_batchnorm: bool = True  # SyncBatchNorm across GPUs (CUDA, more than one process)
    log_every: int = 10
    eval_every: int = 1000
    eval_at_start: bool = True
    save_every: int = 1000
    keep_last: int = 3
    fused_optimizer: bool | None = None
    pin_memory: bool = True
    torch_compile: bool = False
    torch_compile_mode: str | None = None
    torch_compile_backend: str = "inductor"
    # testing aid: at this step the main process writes NaN into one of its gradients (after DDP's all-reduce, so only
    # its copy is bad); every process must then skip the step together
    nan_grad_step: int | None = None

    def validate(self) -> None:
        """Raises ValueError naming the first field out of range and its allowed values."""

        def need(ok: bool, name: str, allowed: str) -> None:
            if not ok:
                raise ValueError(f"`{name}` must be {allowed}, got {getattr(self, name)!r}")

        positive = ("max_steps", "batch_size", "gradient_accumulation_steps", "log_every", "eval_every", "save_every",
                    "keep_last", "ema_update_every", "lr_step_size", "min_batches_per_epoch")  # fmt: skip
        for name in positive:
            need(getattr(self, name) >= 1, name, "an int >= 1")
        for name in ("num_workers", "warmup_steps", "ema_update_after_step"):
            need(getattr(self, name) >= 0, name, "an int >= 0")
        need(self.learning_rate > 0 and math.isfinite(self.learning_rate), "learning_rate", "a finite float > 0")
        need(self.weight_decay >= 0, "weight_decay", "a float >= 0")
        need(self.adam_epsilon > 0, "adam_epsilon", "a float > 0")
        need(
            len(self.adam_betas) == 2 and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in self.adam_betas),
            "adam_betas", "two floats in [0, 1)",
        )  # fmt: skip
        need(self.lr_scheduler in LR_SCHEDULERS, "lr_scheduler", f"one of {list(LR_SCHEDULERS)}")
        need(0 < self.lr_gamma <= 1, "lr_gamma", "a float in (0, 1]")
        need(self.min_learning_rate >= 0, "min_learning_rate", "a float >= 0")
        if self.lr_scheduler == "step":
            need(self.warmup_steps == 0, "warmup_steps", "0 with lr_scheduler 'step' (use 'cosine' or 'constant')")
        if self.lr_scheduler == "cosine":
            need(self.warmup_steps < self.max_steps, "warmup_steps", f"< max_steps ({self.max_steps})")
        need(self.max_grad_norm is None or self.max_grad_norm > 0, "max_grad_norm", "a float > 0 or null")
        need(self.mixed_precision is None or self.mixed_precision in MIXED_PRECISION, "mixed_precision",
             f"null (Accelerate's setting) or one of {list(MIXED_PRECISION)}")  # fmt: skip
        need(0 < self.ema_beta < 1, "ema_beta", "a float in (0, 1)")
        modes = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
        need(self.torch_compile_mode in modes, "torch_compile_mode", f"one of {list(modes)}")
        need(self.resume is None or str(self.resume).strip() != "", "resume", "null, 'latest' or a checkpoint folder")
        if self.resume is not None and self.overwrite_output_dir:
            raise ValueError(
                "`resume` and `overwrite_output_dir` exclude each other: resume continues the run in output_dir, "
                "overwrite_output_dir replaces it"
            )
        need(self.nan_grad_step is None or self.nan_grad_step >= 1, "nan_grad_step", "null or an int >= 1")


class TrainingTask:
    """What a run trains and how it is scored. Subclass it; :func:`run_training` does everything else.

    ``self.accelerator`` (the run's Accelerator) and ``self.args`` (its arguments) are set before
    :meth:`build_model` is called.
    """

    best_metric: str = "loss"  # a key of evaluate()'s result; best/ keeps the model with the best value
    best_mode: str = "max"  # "max" | "min"
    accelerator: Any = None
    args: Any = None

    def build_model(self) -> nn.Module:
        """The model to train, built on every process before ``accelerator.prepare``."""
        raise NotImplementedError

    def train_dataset(self) -> Sequence:
        """Map-style training rows (``len`` and ``__getitem__``)."""
        raise NotImplementedError

    def train_collator(self) -> Callable:
        """Turns a list of rows into a batch."""
        raise NotImplementedError

    def parameter_groups(self, model: nn.Module) -> dict[str, list[nn.Parameter]]:
        """Named optimizer groups; only what trains (a linear probe: the head)."""
        return {"all": [p for p in model.parameters() if p.requires_grad]}

    def compile_model(self, model: nn.Module, mode: str | None, backend: str) -> nn.Module:
        """With ``torch_compile``: compiles ``model`` (or the parts worth compiling) in place, before
        ``accelerator.prepare``; returns the model to train. Default: ``model.compile(mode=mode, backend=backend)``."""
        model.compile(mode=mode, backend=backend)
        return model

    def set_train_mode(self, model: nn.Module) -> None:
        """Called when training (re)starts after evaluation (a linear probe puts its frozen backbone back in eval)."""
        model.train()

    def training_step(self, model: nn.Module, batch: Any, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        """``(loss, {name: scalar tensor})`` of one micro-batch; the scalars are logged as ``train/<name>`` (mean
        over processes) every ``log_every`` steps. ``step`` counts the optimizer steps done before this one."""
        raise NotImplementedError

    def batch_size_of(self, batch: Any) -> int:
        """Samples in a batch (for samples/s)."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, accelerator: Any, step: int, output_dir: str) -> dict[str, float]:
        """Scores ``model`` (the EMA copy or the unwrapped model, in eval mode); called on every process; returns
        results reduced over processes (logged as ``val/<key>``); may write files on the main process."""
        raise NotImplementedError

    def export(self, model: nn.Module, output_dir: str) -> None:
        """Main process, at the end, with the eval model: e.g. ``model.save_pretrained``."""
        raise NotImplementedError

    def history_extras(self, model: nn.Module, last_batch: Any) -> dict[str, Any]:
        """Further entries of the run's history, computed after training on every process (default: none)."""
        return {}


# ---------------------------------------------------------------------------------------------------- output folder
def lock_output_dir(output_dir: str | os.PathLike, run_name: str) -> Any:
    """Takes the exclusive lock of ``output_dir`` (``fcntl.flock`` on ``output_dir/.lock``, non-blocking) and writes
    who holds it (pid, host, run name, start time) into the file. Returns the open lock file: the lock lasts until it
    is closed (or the process ends).

    Raises:
        ValueError: another process holds the lock (the message names it).
    """
    import fcntl

    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    handle = open(root / LOCK_FILE, "a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "an unknown process"
        handle.close()
        raise ValueError(
            f"`output_dir` {str(root)!r} is in use by another run ({holder}); wait for it to end or choose another "
            "output_dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    info = {"pid": os.getpid(), "host": socket.gethostname(), "run_name": run_name, "started": time.ctime()}
    handle.write(json.dumps(info) + "\n")
    handle.flush()
    return handle


def _claim_output_dir(args: TrainingArguments) -> tuple[Any, bool]:
    """Main process: lock ``output_dir``; refuse it if it holds another run and neither ``resume`` nor
    ``overwrite_output_dir`` is given; with ``overwrite_output_dir``, move the old run's files into
    ``.previous-run/`` (deleted once the new run has written its first complete checkpoint). Returns (lock, moved)."""
    lock = lock_output_dir(args.output_dir, args.run_name)
    try:
        root = Path(args.output_dir)
        used = sorted(c.name for c in root.iterdir() if c.name != LOCK_FILE)
        if not used or args.resume is not None:
            return lock, False
        if not args.overwrite_output_dir:
            shown = ", ".join(used[:5]) + (", ..." if len(used) > 5 else "")
            raise ValueError(
                f"`output_dir` {str(root)!r} already holds a run ({shown}): pass `--resume latest` to continue it, "
                "`--overwrite_output_dir true` to replace it (its files are kept until the new run has written its "
                "first checkpoint), or another output_dir"
            )
        aside = root / PREVIOUS_RUN_DIR / str(time.time_ns())
        aside.mkdir(parents=True)
        for name in used:
            if name != PREVIOUS_RUN_DIR:
                os.replace(root / name, aside / name)
        logger.warning("overwrite_output_dir: the previous run's files are in %s until the first checkpoint", aside)
        return lock, True
    except BaseException:
        lock.close()
        raise


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[dict]:
    """Records SIGTERM / SIGINT in the yielded dict (``{"signal": signum}``) instead of dying; a second signal ends
    the process at once. Handlers can only be installed in the main thread; elsewhere nothing is caught."""
    received: dict = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum, frame):
        if received["signal"] is not None:
            raise SystemExit(128 + signum)
        received["signal"] = signum
        logger.warning("received %s: saving a checkpoint at the end of this step", signal.Signals(signum).name)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# ------------------------------------------------------------------------------------------------------------ loop
def run_training(args: TrainingArguments, task: TrainingTask) -> dict:
    """Trains ``task`` as ``args`` say; returns the history (also written to ``output_dir/final.json``, strict JSON).

    Raises:
        ValueError: bad arguments, a used or locked ``output_dir``, or no good checkpoint to resume from.
        SystemExit: 128 + the signal number (143 for SIGTERM, 130 for SIGINT) after a signal, once the checkpoint of
            the step in progress is saved.
    """
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration

    args.validate()
    logging_dir = os.path.join(args.output_dir, "logs")
    accelerator = Accelerator(
        # without CUDA, several processes (e.g. `accelerate launch --multi_gpu --num_processes 2`) run on CPU with gloo
        cpu=not torch.cuda.is_available(),
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,  # None: ACCELERATE_MIXED_PRECISION (accelerate launch / config) or "no"
        log_with=build_trackers(logging_dir, args.run_name),
        project_config=ProjectConfiguration(project_dir=args.output_dir, logging_dir=logging_dir),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=args.find_unused_parameters)],
        step_scheduler_with_optimizer=False,  # the schedule is per iteration, stepped once per optimizer step
        dataloader_config=DataLoaderConfiguration(non_blocking=args.pin_memory),  # pinned batches copy asynchronously
    )
    lock = None
    try:
        error, moved = None, False
        if accelerator.is_main_process:
            try:
                lock, moved = _claim_output_dir(args)
            except ValueError as err:
                error = str(err)
        if accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            error, moved = broadcast_object_list([error, moved], from_process=0)
        if error is not None:
            raise ValueError(error)
        with _stop_on_signals() as received:
            return _train(args, task, accelerator, received, moved)
    finally:
        # Free the DDP model before the process group. Its C++ Reducer owns a reference to the gloo process group and
        # is freed with the GIL held; freed last, it destroys the group, which joins gloo's worker threads, and a
        # worker still releasing the tensors of a finished collective waits for the GIL: the process hangs at exit
        # (seen in about 1 of 10 two-process CPU runs; pytorch/pytorch#56297). Freed first, only the process group's
        # own destructor joins the threads, and it releases the GIL.
        task.accelerator = None
        accelerator.free_memory()
        gc.collect()  # also a model kept alive only by a reference cycle
        accelerator.end_training()
        if lock is not None:
            lock.close()


def _resume(args, accelerator, model, optimizer, scheduler, ema) -> tuple[str | None, dict]:
    """Loads the newest good checkpoint that ``args.resume`` allows; damaged ones are named and skipped (all
    processes agree). Returns (path or None, trainer_state)."""
    candidates = resume_candidates(args.output_dir, args.resume)
    for i, path in enumerate(candidates):
        error = None
        try:
            loaded = read_checkpoint(path, accelerator.process_index)
        except CheckpointError as err:
            error = str(err)
        num_bad = accelerator.reduce(torch.tensor(float(error is not None), device=accelerator.device), "sum")
        if num_bad.item() > 0:
            if error is not None:
                later = "falling back to the previous checkpoint" if i + 1 < len(candidates) else "no other is left"
                logger.warning("checkpoint %s is not usable: %s; %s", path, error, later)
            continue
        state = apply_checkpoint(loaded, accelerator, model=model, optimizer=optimizer, scheduler=scheduler, ema=ema)
        return path, state
    if candidates:
        raise ValueError(
            f"`resume` {args.resume!r}: no usable checkpoint among {candidates} (each one's problem is logged above)"
        )
    return None, {}


def build_optimizer_and_scheduler(args: TrainingArguments, task: TrainingTask, model: nn.Module, device) -> tuple:
    """The run's AdamW (``task.parameter_groups``; fused on CUDA unless ``fused_optimizer`` says otherwise) and its
    learning-rate schedule. Moves ``model`` to ``device`` first: the optimizer's state follows its parameters."""
    model.to(device)  # build_optimizer's fused=None then means "fused on CUDA"
    optimizer = build_optimizer(
        task.parameter_groups(model), lr=args.learning_rate, weight_decay=args.weight_decay,
        betas=tuple(args.adam_betas), eps=args.adam_epsilon, fused=args.fused_optimizer,
    )  # fmt: skip
    scheduler = build_scheduler(
        optimizer, args.lr_step_size, args.lr_gamma, schedule=args.lr_scheduler, warmup_steps=args.warmup_steps,
        total_steps=args.max_steps, min_lr=args.min_learning_rate,
    )  # fmt: skip
    return optimizer, scheduler


def optimizer_skips_on_device(optimizer, accelerator) -> bool:
    """Whether a step with a non-finite gradient can be skipped on the device (no host sync): a fused Adam / AdamW and
    no fp16 GradScaler (which sets the optimizer's ``found_inf`` itself)."""
    return is_fused_adam(optimizer) and getattr(accelerator, "scaler", None) is None


def train_micro_step(
    args: TrainingArguments, task: TrainingTask, accelerator, model, optimizer, scheduler, batch, step: int
) -> tuple[Tensor, dict[str, Tensor], Tensor | None]:
    """One micro-batch as :func:`run_training` runs it: ``task.training_step``, backward and, when the accumulation
    is complete, the non-finite check (every process skips the step when any sees a non-finite gradient: method
    reference 7.5), clipping, ``optimizer.step()``, ``scheduler.step()`` and ``zero_grad``.

    Returns ``(loss, logs, skipped)``: ``skipped`` is a 0-dim float32 tensor on the device (1.0 = the step was skipped)
    after an optimizer step, None for a micro-batch that only accumulated. With a fused optimizer
    (:func:`optimizer_skips_on_device`) nothing here waits for the device; otherwise the check reads the flag on the
    host (one sync). ``scripts/benchmark.py step`` times this very function.
    """
    with accelerator.accumulate(model):
        loss, logs = task.training_step(model, batch, step)
        accelerator.backward(loss)
        if not accelerator.sync_gradients:
            return loss, logs, None
        if args.nan_grad_step == step + 1 and accelerator.is_main_process:
            next(p for p in model.parameters() if p.grad is not None).grad.fill_(float("nan"))
        # accelerate's reduce knows sum / mean / max only: count the processes with a bad gradient
        skipped = (accelerator.reduce(1.0 - all_grads_finite(model), "sum") > 0).to(torch.float32)
        if optimizer_skips_on_device(optimizer, accelerator):
            if args.max_grad_norm is not None:  # a non-finite gradient gives NaN gradients here: the step is skipped
                accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            skip_step_if(optimizer, skipped)
            try:
                optimizer.step()
            finally:
                skip_step_if(optimizer, None)
        elif skipped.item() == 0:
            if args.max_grad_norm is not None:
                accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return loss, logs, skipped


def _train(args: TrainingArguments, task: TrainingTask, accelerator, received: dict, moved: bool) -> dict:
    from accelerate.utils import gather_object, set_seed
    from tqdm.auto import tqdm

    from ..data import EpochSampler, SeededRows

    output_dir = args.output_dir
    if accelerator.is_main_process and not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO)
    logger.setLevel(logging.INFO if accelerator.is_main_process else logging.WARNING)
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    set_seed(args.seed)
    world = accelerator.num_processes
    per_process, remainder = divmod(args.batch_size, world * args.gradient_accumulation_steps)
    if remainder or per_process < 1:
        raise ValueError(
            f"`batch_size` ({args.batch_size}) must be a multiple of num_processes x gradient_accumulation_steps = "
            f"{world} x {args.gradient_accumulation_steps}"
        )
    task.accelerator, task.args = accelerator, args
    model = task.build_model()
    train_ds = task.train_dataset()
    if len(train_ds) < args.batch_size:
        raise ValueError(f"the training split has too few rows ({len(train_ds)}) for batch_size={args.batch_size}")
    repeats = math.ceil(args.min_batches_per_epoch * args.batch_size / len(train_ds))
    if repeats > 1:
        logger.info("%d training rows: an epoch goes through them %d times", len(train_ds), repeats)
    # each draw carries its own seed, so the views and augmentation of a sample don't depend on the workers or on
    # what was collated before: a resume mid-epoch is exact (see EpochSampler)
    sampler = EpochSampler(len(train_ds), repeats, seed=args.seed)
    train_collator = task.train_collator()
    # the DataLoader draws its workers' base seed when an epoch's iterator starts: from a generator of its own, reseeded
    # per epoch, not from the global one (a resume starts an iterator the uninterrupted run did not, and dropout etc.
    # would then see other random numbers)
    loader_generator = torch.Generator()
    # pinned batches, copied with non_blocking (the Accelerator's dataloader_config): the copy overlaps the step
    train_loader = DataLoader(
        SeededRows(train_ds, seed=args.seed), batch_size=per_process, sampler=sampler, drop_last=True,
        collate_fn=train_collator, num_workers=args.num_workers, persistent_workers=args.num_workers > 0,
        generator=loader_generator, pin_memory=args.pin_memory and accelerator.device.type == "cuda",
    )  # fmt: skip

    if args.sync_batchnorm and world > 1 and accelerator.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if args.torch_compile:
        model = task.compile_model(model, args.torch_compile_mode, args.torch_compile_backend)
    optimizer, scheduler = build_optimizer_and_scheduler(args, task, model, accelerator.device)
    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)
    ema = None
    if args.use_ema:
        ema = EMA(
            accelerator.unwrap_model(model), beta=args.ema_beta, update_every=args.ema_update_every,
            update_after_step=args.ema_update_after_step,
        )  # fmt: skip

    resumed_from, state = _resume(args, accelerator, model, optimizer, scheduler, ema)
    step = int(state.get("step", 0))
    skipped_steps = int(state.get("skipped_steps", 0))
    run_id = state.get("run_id") or uuid.uuid4().hex
    if resumed_from is not None:
        logger.info("resumed from %s at step %d", resumed_from, step)
    accelerator.init_trackers(args.run_name, config={k: str(v) for k, v in dataclasses.asdict(args).items()})
    if accelerator.is_main_process:
        with open(os.path.join(output_dir, "training_args.json"), "w") as f:
            json.dump(dataclasses.asdict(args), f, indent=2)
        n_params = sum(p.numel() for p in accelerator.unwrap_model(model).parameters())
        logger.info(
            "%s: %.2fM parameters, %d processes x %d samples x %d accumulation, %d steps, mixed precision %s",
            args.run_name, n_params / 1e6, world, per_process, args.gradient_accumulation_steps, args.max_steps,
            accelerator.mixed_precision,
        )  # fmt: skip

    def eval_model() -> nn.Module:
        return ema.model if ema is not None else accelerator.unwrap_model(model)

    def validate(at_step: int) -> dict:
        if ema is not None:
            ema.eval()
        else:
            eval_model().eval()
        results = task.evaluate(eval_model(), accelerator, at_step, output_dir)
        task.set_train_mode(model)
        return {f"val/{k}": v for k, v in results.items()}

    def checkpoint(at_step: int) -> None:
        nonlocal moved
        count_skips()
        trainer_state = {"skipped_steps": skipped_steps, "run_id": run_id}
        save_checkpoint(
            accelerator, output_dir, at_step, keep_last=args.keep_last, model=model, optimizer=optimizer,
            scheduler=scheduler, ema=ema, trainer_state=trainer_state, run_id=run_id,
        )  # fmt: skip
        if moved and accelerator.is_main_process:  # the new run has a complete checkpoint: drop the replaced run
            shutil.rmtree(os.path.join(output_dir, PREVIOUS_RUN_DIR), ignore_errors=True)
        moved = False

    history: dict = {}
    if args.eval_at_start and step == 0:
        history["initial"] = validate(step)
        accelerator.log(history["initial"], step=step)
        logger.info("step 0 validation: %s", _fmt(history["initial"]))

    batches_per_step = args.gradient_accumulation_steps
    steps_per_epoch = len(train_loader) // batches_per_step
    epoch, skip_batches = divmod(step, steps_per_epoch)
    skip_batches *= batches_per_step
    progress = tqdm(total=args.max_steps, initial=step, disable=not accelerator.is_main_process, desc=args.run_name)
    window_start, window_samples, window_data_time = time.perf_counter(), 0, 0.0
    last_eval, batch, stop_signal, saved_at = None, None, None, None
    # skipped-step flags stay on the device until a log, checkpoint or the end reads them (no host sync per step)
    pending_skips: list[tuple[int, Tensor]] = []

    def count_skips() -> None:
        nonlocal skipped_steps
        if not pending_skips:
            return
        flags = torch.stack([flag for _, flag in pending_skips]).tolist()
        bad = [at for (at, _), flag in zip(pending_skips, flags) if flag > 0]
        pending_skips.clear()
        for at in bad:
            logger.warning("step %d: non-finite gradient, step skipped", at)
        skipped_steps += len(bad)

    task.set_train_mode(model)
    while step < args.max_steps and stop_signal is None:
        train_loader.set_epoch(epoch)
        loader_generator.manual_seed(args.seed * 1_000_003 + epoch)
        loader = accelerator.skip_first_batches(train_loader, skip_batches) if skip_batches else train_loader
        skip_batches = 0
        fetch_start = time.perf_counter()
        for batch in loader:
            window_data_time += time.perf_counter() - fetch_start  # time spent waiting for the DataLoader
            loss, logs, skipped = train_micro_step(args, task, accelerator, model, optimizer, scheduler, batch, step)
            window_samples += task.batch_size_of(batch)
            if skipped is None:
                fetch_start = time.perf_counter()
                continue
            step += 1
            pending_skips.append((step, skipped))
            progress.update(1)
            if ema is not None:
                ema.update(accelerator.unwrap_model(model))
            if step % args.log_every == 0 or step == args.max_steps:
                count_skips()
                names = sorted(logs)
                values = torch.stack([loss.detach().float(), *(logs[k].detach().float().reshape(()) for k in names)])
                reduced = accelerator.reduce(values, "mean").tolist()
                elapsed = time.perf_counter() - window_start
                steps_in_window = (step - 1) % args.log_every + 1
                record = {"train/loss": reduced[0], **{f"train/{k}": v for k, v in zip(names, reduced[1:])}}
                record.update({
                    "train/lr": scheduler.get_last_lr()[0],
                    "train/samples_per_second": window_samples * world / max(elapsed, 1e-9),
                    "train/step_time": elapsed / steps_in_window,
                    "train/data_time": window_data_time / steps_in_window,
                    "train/skipped_steps": skipped_steps,
                    "train/epoch": epoch,
                })  # fmt: skip
                if accelerator.device.type == "cuda":
                    record["train/peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
                accelerator.log(record, step=step)
                progress.set_postfix(loss=f"{reduced[0]:.4f}")
                window_start, window_samples, window_data_time = time.perf_counter(), 0, 0.0
            paused = time.perf_counter()  # validation and checkpoints are left out of the training speed
            if step % args.eval_every == 0 or step == args.max_steps:
                last_eval = validate(step)
                accelerator.log(last_eval, step=step)
                logger.info("step %d validation: %s", step, _fmt(last_eval))
                key = f"val/{task.best_metric}"
                if key not in last_eval:
                    raise ValueError(
                        f"`best_metric` {task.best_metric!r} is not among evaluate()'s {sorted(last_eval)}"
                    )
                value = last_eval[key]
                if isinstance(value, float) and math.isfinite(value):
                    save_best(accelerator, eval_model(), output_dir, task.best_metric, value, step, task.best_mode)
            if step % args.save_every == 0 or step == args.max_steps:
                checkpoint(step)
                saved_at = step
            # a signal on any process stops every process at this step boundary (one collective when several run)
            stop = received["signal"] is not None
            if world > 1:
                flag = torch.tensor(float(stop), device=accelerator.device)
                stop = accelerator.reduce(flag, "sum").item() > 0
            if stop:
                stop_signal = received["signal"] or signal.SIGTERM
                if saved_at != step:
                    checkpoint(step)
                    saved_at = step
            window_start += time.perf_counter() - paused
            fetch_start = time.perf_counter()
            if step >= args.max_steps or stop_signal is not None:
                break
        epoch += 1
    progress.close()
    count_skips()

    if stop_signal is not None:
        name = signal.Signals(stop_signal).name
        logger.warning(
            "stopped by %s at step %d; checkpoint-%d is saved in %s: continue with `--resume latest` (same "
            "output_dir)", name, step, step, output_dir,
        )  # fmt: skip
        accelerator.wait_for_everyone()
        raise SystemExit(128 + int(stop_signal))

    history.update(task.history_extras(model, batch))
    accelerator.wait_for_everyone()
    # every rank's weights must be identical after DDP training: compare their checksums
    checksums = gather_object([weights_checksum(accelerator.unwrap_model(model))])
    history.update(final=last_eval, step=step, skipped_steps=skipped_steps, weight_checksums=checksums)
    history["skipped_samples"] = [list(s) for s in getattr(train_collator, "skipped", [])]
    if accelerator.is_main_process:
        task.export(eval_model(), output_dir)
        if len(set(checksums)) != 1:
            logger.error("the processes ended with different weights: %s", checksums)
        with open(os.path.join(output_dir, "final.json"), "w") as f:
            json.dump(to_json_value(history), f, indent=2)  # strict JSON: a NaN metric becomes "nan"
    return history


def weights_checksum(model: nn.Module) -> str:
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
