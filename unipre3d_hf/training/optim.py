"""Optimiser, learning-rate schedule and gradient check of the paper's training loop (method reference, 7.5)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

__all__ = ["PAPER_LR_SCHEDULES", "all_grads_finite", "build_optimizer", "build_scheduler"]

# StepLR (step_size, gamma), stepped every iteration: objects x0.8 every 20k iterations, scenes x0.9 every 10k
PAPER_LR_SCHEDULES: dict[str, tuple[int, float]] = {"object": (20_000, 0.8), "scene": (10_000, 0.9)}


def build_optimizer(
    param_groups: Mapping[str, Iterable[nn.Parameter]],
    lr: float = 1e-4,
    weight_decay: float = 0.01,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-15,
) -> torch.optim.AdamW:
    """AdamW with one named parameter group per entry of ``param_groups`` (the paper: ``point_network``,
    ``fusion_mlps``, ``image_conv``, all at lr 1e-4, weight decay 0.01 on everything, eps 1e-15).

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
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, step_size: int, gamma: float) -> torch.optim.lr_scheduler.StepLR:
    """``StepLR`` multiplying every group's lr by ``gamma`` every ``step_size`` calls of ``scheduler.step()``; call
    it once per iteration (see ``PAPER_LR_SCHEDULES``).

    With Accelerate: a scheduler passed through ``accelerator.prepare`` steps ``num_processes`` times per call (it
    assumes the per-process batch was not split), which would decay the lr ``num_processes`` times too early for the
    paper's per-iteration schedule. Build the Accelerator with ``step_scheduler_with_optimizer=False`` (then one call
    is one step) or keep the scheduler out of ``prepare``."""
    if step_size < 1:
        raise ValueError(f"`step_size` must be >= 1, got {step_size}")
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"`gamma` must be in (0, 1], got {gamma}")
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)


@torch.no_grad()
def all_grads_finite(model_or_params: nn.Module | Iterable[torch.Tensor]) -> torch.Tensor:
    """1.0 if every existing gradient is finite, else 0.0, as a 0-dim float32 tensor on the parameters' device.

    It does not synchronise with the device. ``accelerator.reduce(1 - flag, "sum") > 0`` gives the verdict of all
    ranks (accelerate's ``reduce`` knows no ``"min"``: it silently sums),
    so that every rank skips the step together (the paper skips the step and zeroes the gradients on NaN or Inf).
    """
    params = model_or_params.parameters() if isinstance(model_or_params, nn.Module) else model_or_params
    params = list(params)
    device = params[0].device if params else torch.device("cpu")
    flag = torch.ones((), dtype=torch.float32, device=device)
    grads = [p.grad for p in params if p.grad is not None]
    if grads:
        finite = torch.stack([torch.isfinite(g).all().to(device) for g in grads]).all()
        flag = flag * finite.to(torch.float32)
    return flag
