"""Optimiser, learning-rate schedule and gradient check of the paper's training loop (method reference, 7.5)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
from torch import nn

__all__ = [
    "LR_SCHEDULERS", "PAPER_LR_SCHEDULES", "all_grads_finite", "build_optimizer", "build_scheduler", "is_fused_adam",
    "skip_step_if",
]  # fmt: skip

# StepLR (step_size, gamma), stepped every iteration: objects x0.8 every 20k iterations, scenes x0.9 every 10k
PAPER_LR_SCHEDULES: dict[str, tuple[int, float]] = {"object": (20_000, 0.8), "scene": (10_000, 0.9)}


def build_optimizer(
    param_groups: Mapping[str, Iterable[nn.Parameter]],
    lr: float = 1e-4,
    weight_decay: float = 0.01,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-15,
    fused: bool | None = None,
) -> torch.optim.AdamW:
    """AdamW with one named parameter group per entry of ``param_groups`` (the paper: ``point_network``,
    ``fusion_mlps``, ``image_conv``, all at lr 1e-4, weight decay 0.01 on everything, eps 1e-15).

    ``fused``: None (default) takes PyTorch's fused kernel (one launch per step for all parameters) when every
    parameter is on CUDA and the multi-tensor ``foreach`` implementation elsewhere; True forces the fused kernel (CPU
    has one too), False forces ``foreach``. A fused AdamW also skips a step on the device, without a host sync, when
    given ``found_inf`` (:func:`skip_step_if`).

    Parameters with ``requires_grad=False`` are left out, and so is a group left empty; each group dict carries its
    ``"name"``. Raises ValueError if no trainable parameter remains or a parameter appears in two groups.
    """
    groups, seen = [], {}
    for name, params in param_groups.items():
        trainable = []
        for param in params:
            if not isinstance(param, torch.Tensor):
                raise ValueError(f"`param_groups[{name!r}]` must hold parameters, got a {type(param).__name__}")
            if not param.requires_grad:
                continue
            if id(param) in seen:
                if seen[id(param)] == name:
                    continue
                raise ValueError(f"a parameter is in both `param_groups[{seen[id(param)]!r}]` and [{name!r}]")
            seen[id(param)] = name
            trainable.append(param)
        if trainable:
            groups.append({"params": trainable, "name": name})
    if not groups:
        raise ValueError(f"`param_groups` holds no trainable parameter (groups: {list(param_groups)})")
    if fused is None:
        fused = all(p.device.type == "cuda" for g in groups for p in g["params"])
    return torch.optim.AdamW(
        groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=fused, foreach=None if fused else True
    )


def skip_step_if(optimizer: torch.optim.Optimizer, found_inf: torch.Tensor | None) -> None:
    """Makes the next ``optimizer.step()`` of a fused AdamW a no-op on the device where ``found_inf`` (a 0-dim float32
    tensor, 1.0 = skip) is set: weights, moments and step counts stay as they are, and the host never waits for the
    flag (the mechanism ``torch.amp.GradScaler`` uses; ``torch.optim.adam._fused_adam``). ``None`` clears it.

    Raises ValueError for an optimizer that is not a fused Adam / AdamW (the other implementations refuse the flag).
    """
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps the torch one
    if found_inf is not None and not is_fused_adam(inner):
        raise ValueError(f"`optimizer` must be a fused Adam / AdamW to skip a step on the device, got {inner!r}")
    inner.found_inf = found_inf


def is_fused_adam(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` (or the torch optimizer an accelerate ``AcceleratedOptimizer`` wraps) is an Adam / AdamW
    whose every group runs the fused kernel."""
    inner = getattr(optimizer, "optimizer", optimizer)
    return isinstance(inner, torch.optim.Adam | torch.optim.AdamW) and all(g.get("fused") for g in inner.param_groups)


LR_SCHEDULERS = ("step", "cosine", "constant")


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    step_size: int = 20_000,
    gamma: float = 0.8,
    *,
    schedule: str = "step",
    warmup_steps: int = 0,
    total_steps: int | None = None,
    min_lr: float = 0.0,
) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning-rate schedule, stepped once per optimizer step (iteration).

    - ``"step"``: ``StepLR`` multiplying every group's lr by ``gamma`` every ``step_size`` calls (the paper, see
      ``PAPER_LR_SCHEDULES``); ``warmup_steps`` must be 0.
    - ``"cosine"``: linear warm-up, then a half cosine from each group's lr down to ``min_lr``, reached after step
      ``total_steps``.
    - ``"constant"``: linear warm-up, then each group's lr.

    Warm-up: the ``k``-th step (``k`` = 1 .. ``warmup_steps``) uses ``lr * k / warmup_steps``, so the last warm-up step
    reaches the full lr and no step has lr 0. Cosine, for step ``k > warmup_steps``:
    ``min_lr + (lr - min_lr) * (1 + cos(pi * (k - 1 - warmup_steps) / (total_steps - warmup_steps))) / 2``
    (SGDR's annealing, Loshchilov & Hutter 2017, without restarts), so the first step after warm-up has the full lr.

    With Accelerate: a scheduler passed through ``accelerator.prepare`` steps ``num_processes`` times per call (it
    assumes the per-process batch was not split), which would decay the lr ``num_processes`` times too early for a
    per-iteration schedule. Build the Accelerator with ``step_scheduler_with_optimizer=False`` (then one call
    is one step) or keep the scheduler out of ``prepare``."""
    if schedule not in LR_SCHEDULERS:
        raise ValueError(f"`schedule` must be one of {list(LR_SCHEDULERS)}, got {schedule!r}")
    if warmup_steps < 0:
        raise ValueError(f"`warmup_steps` must be >= 0, got {warmup_steps}")
    if schedule == "step":
        if step_size < 1:
            raise ValueError(f"`step_size` must be >= 1, got {step_size}")
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"`gamma` must be in (0, 1], got {gamma}")
        if warmup_steps:
            raise ValueError("`warmup_steps` needs the 'cosine' or 'constant' schedule; 'step' has no warm-up")
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)
    if schedule == "cosine":
        if total_steps is None or total_steps <= warmup_steps:
            raise ValueError(f"`total_steps` must be > warmup_steps ({warmup_steps}) for 'cosine', got {total_steps}")
        if min_lr < 0:
            raise ValueError(f"`min_lr` must be >= 0, got {min_lr}")

    def warmup(index: int) -> float | None:  # index = completed scheduler steps = (1-based step) - 1
        return (index + 1) / warmup_steps if index < warmup_steps else None

    def constant(index: int) -> float:
        factor = warmup(index)
        return 1.0 if factor is None else factor

    def cosine_for(base_lr: float):
        floor = min(min_lr / base_lr, 1.0) if base_lr > 0 else 0.0

        def cosine(index: int) -> float:
            factor = warmup(index)
            if factor is not None:
                return factor
            progress = min((index - warmup_steps) / (total_steps - warmup_steps), 1.0)
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

        return cosine

    lambdas = [constant if schedule == "constant" else cosine_for(g["lr"]) for g in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)


@torch.no_grad()
def all_grads_finite(model_or_params: nn.Module | Iterable[torch.Tensor]) -> torch.Tensor:
    """1.0 if every existing gradient is finite, else 0.0, as a 0-dim float32 tensor on the parameters' device.

    It does not synchronise with the device, and costs one multi-tensor max-abs reduction (``_foreach_norm`` with
    ord inf: NaN and inf propagate into it) plus a stack, whatever the number of parameters.
    ``accelerator.reduce(1 - flag, "sum") > 0`` gives the verdict of all ranks (accelerate's ``reduce`` knows no
    ``"min"``: it silently sums), so that every rank skips the step together (the paper skips the step and zeroes the
    gradients on NaN or Inf).
    """
    params = model_or_params.parameters() if isinstance(model_or_params, nn.Module) else model_or_params
    params = list(params)
    device = params[0].device if params else torch.device("cpu")
    flag = torch.ones((), dtype=torch.float32, device=device)
    grads = [p.grad for p in params if p.grad is not None]
    if grads:
        peaks = torch.stack([m.to(device=device, dtype=torch.float32) for m in torch._foreach_norm(grads, math.inf)])
        flag = flag * torch.isfinite(peaks).all().to(torch.float32)
    return flag
