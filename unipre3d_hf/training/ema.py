"""Exponential moving average of a model's weights, with the warm-up schedule the paper uses.

The paper builds ``ema_pytorch.EMA(model, beta=0.9999, update_every=10, update_after_step=100)`` (method reference,
section 7.4). This module re-implements that rule (lucidrains/ema-pytorch, ``EMA.update`` and ``get_current_decay``;
the warm-up is @crowsonkb's ``1 - (1 + t / inv_gamma) ** -power``):

- a step counter starts at 0 and every :meth:`EMA.update` call first reads it (``s``) and then increments it;
- nothing else happens unless ``s % update_every == 0``;
- if ``s <= update_after_step`` the online weights are copied into the EMA copy;
- otherwise ``ema <- ema - (1 - d) * (ema - online)`` with
  ``d = clamp(1 - (1 + (step - update_after_step - 1) / inv_gamma) ** -power, min_value, beta)``, where ``step`` is
  the counter after the increment (``s + 1``), and ``d = 0`` while that epoch is <= 0;
- the first averaging call copies the weights just before averaging (ema-pytorch's ``initted`` flag), so with the
  defaults the average effectively starts from the weights of call 110.

With the defaults, ``d`` is 0.99783 at 10k iterations, 0.99926 at 50k and 0.99954 at 100k: 0.9999 is never reached.

Buffers: floating-point buffers (BatchNorm running mean and variance) are averaged with the same decay as the
parameters, as ema-pytorch does; integer buffers (``num_batches_tracked``) are copied.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["EMA", "ema_decay"]


def ema_decay(
    step: int,
    beta: float = 0.9999,
    update_after_step: int = 100,
    inv_gamma: float = 1.0,
    power: float = 2 / 3,
    min_value: float = 0.0,
) -> float:
    """The EMA decay ``d`` at step counter ``step`` (the value after the update's increment); see the module doc."""
    epoch = max(step - update_after_step - 1, 0)
    if epoch <= 0:
        return 0.0
    value = 1.0 - (1.0 + epoch / inv_gamma) ** -power
    return min(max(value, min_value), beta)


class EMA:
    """EMA copy of a module.

    Pass the unwrapped module (``accelerator.unwrap_model(model)``), both here and to every :meth:`update`. The EMA
    keeps its own deep copy in ``ema.model`` (eval mode, ``requires_grad=False``), except for the parameters and
    buffers whose names start with one of ``exclude_prefixes``: those (for instance a frozen image encoder, prefix
    ``"image_encoder."``) are shared with the online module rather than copied, never averaged, and left out of
    :meth:`state_dict`. A submodule whose whole subtree is excluded is shared as one object, and its train/eval mode is
    left to the online module.

    ``accelerator.register_for_checkpointing(ema)`` saves and restores it with the training state.

    Args:
        model: the module to track.
        beta: the largest decay.
        update_every: average (or copy) on every ``update_every``-th call of :meth:`update` only.
        update_after_step: up to this step the weights are copied instead of averaged.
        inv_gamma, power, min_value: warm-up schedule of the decay (see :func:`ema_decay`).
        exclude_prefixes: name prefixes of parameters and buffers to share instead of tracking.
    """

    def __init__(
        self,
        model: nn.Module,
        beta: float = 0.9999,
        update_every: int = 10,
        update_after_step: int = 100,
        inv_gamma: float = 1.0,
        power: float = 2 / 3,
        min_value: float = 0.0,
        exclude_prefixes: Sequence[str] = (),
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"`model` must be an nn.Module, got {type(model).__name__}")
        if type(model).__name__ == "DistributedDataParallel" or hasattr(model, "_orig_mod"):
            raise ValueError("`model` must be the unwrapped module: pass `accelerator.unwrap_model(model)`")
        if update_every < 1:
            raise ValueError(f"`update_every` must be >= 1, got {update_every}")
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"`beta` must be in [0, 1], got {beta}")
        if isinstance(exclude_prefixes, str):
            exclude_prefixes = (exclude_prefixes,)
        self.beta = beta
        self.update_every = update_every
        self.update_after_step = update_after_step
        self.inv_gamma = inv_gamma
        self.power = power
        self.min_value = min_value
        self.exclude_prefixes = tuple(exclude_prefixes)
        self.step = 0
        self.initted = False

        # deepcopy's memo maps id(original) -> copy; mapping an object to itself makes the copy share it
        memo: dict[int, Any] = {}
        for name, module in model.named_modules():
            if name and self._excluded(name + "."):
                memo[id(module)] = module
        self._shared_modules = set(memo)
        for _name, tensor in self._named_tensors(model, tracked=False):
            memo[id(tensor)] = tensor
        self.model = copy.deepcopy(model, memo)
        for name, param in self.model.named_parameters():
            if not self._excluded(name):
                param.requires_grad_(False)
        self.eval()

    # ----------------------------------------------------------------------------------------------------------------
    def _excluded(self, name: str) -> bool:
        return any(name.startswith(prefix) for prefix in self.exclude_prefixes)

    def _named_tensors(self, model: nn.Module, tracked: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
        """Parameters and buffers of ``model`` that are tracked (``tracked=True``) or excluded (``tracked=False``)."""
        for name, param in model.named_parameters():
            if self._excluded(name) != tracked:
                yield name, param
        for name, buf in model.named_buffers():
            if self._excluded(name) != tracked:
                yield name, buf

    def eval(self) -> EMA:
        """Puts the EMA copy in eval mode (shared submodules keep the online module's mode)."""

        def visit(module: nn.Module) -> None:
            if id(module) in self._shared_modules:
                return
            module.training = False
            for child in module.children():
                visit(child)

        visit(self.model)
        return self

    def to(self, *args: Any, **kwargs: Any) -> EMA:
        """Moves the EMA copy (``nn.Module.to`` arguments)."""
        self.model.to(*args, **kwargs)
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    # ----------------------------------------------------------------------------------------------------------------
    def current_decay(self) -> float:
        """The decay an average taken now would use (a function of the step counter)."""
        return ema_decay(self.step, self.beta, self.update_after_step, self.inv_gamma, self.power, self.min_value)

    def _pairs(self, model: nn.Module) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
        online = dict(self._named_tensors(model))
        pairs = []
        for name, ema_tensor in self._named_tensors(self.model):
            if name not in online:
                raise ValueError(f"`model` has no parameter or buffer {name!r}: is it the module the EMA was built on?")
            pairs.append((name, ema_tensor, online[name]))
        return pairs

    @torch.no_grad()
    def copy_from(self, model: nn.Module) -> None:
        """Copies every tracked parameter and buffer of ``model`` into the EMA copy."""
        for _, ema_tensor, online_tensor in self._pairs(model):
            ema_tensor.copy_(online_tensor)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Call once per optimiser step with the unwrapped online module (see the module doc for the rule)."""
        step = self.step
        self.step += 1
        if step % self.update_every != 0:
            return
        if step <= self.update_after_step:
            self.copy_from(model)
            return
        if not self.initted:
            self.copy_from(model)
            self.initted = True
        decay = self.current_decay()
        for _, ema_tensor, online_tensor in self._pairs(model):
            if ema_tensor.is_floating_point() or ema_tensor.is_complex():
                # ema <- ema - (1 - d) (ema - online)
                ema_tensor.lerp_(online_tensor.to(ema_tensor.dtype), 1.0 - decay)
            else:
                ema_tensor.copy_(online_tensor)

    # ----------------------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """``{"step": int, "initted": bool, "model": {name: tensor}}`` without the excluded names."""
        model_state = {k: v for k, v in self.model.state_dict().items() if not self._excluded(k)}
        return {"step": self.step, "initted": self.initted, "model": model_state}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restores what :meth:`state_dict` returned (tensors are copied in place, keeping the EMA copy's device)."""
        missing = {"step", "model"} - set(state_dict)
        if missing:
            raise ValueError(f"`state_dict` must hold the keys 'step' and 'model'; missing {sorted(missing)}")
        tracked = {k for k in self.model.state_dict() if not self._excluded(k)}
        given = set(state_dict["model"])
        if given != tracked:
            raise ValueError(
                "`state_dict['model']` does not match the EMA copy: "
                f"missing {sorted(tracked - given)[:5]}, unexpected {sorted(given - tracked)[:5]}"
            )
        self.model.load_state_dict(state_dict["model"], strict=False)
        self.step = int(state_dict["step"])
        self.initted = bool(state_dict.get("initted", self.step > self.update_after_step))
