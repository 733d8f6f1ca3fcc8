"""Image losses of UniPre3D's pre-training (method reference 7.1 and 7.2): L2, L1, focal L2 and LPIPS."""

from __future__ import annotations

import functools

import torch
from torch import nn

from ..modeling.layers import FrozenNetwork
from ..utils.import_utils import require_package

RECONSTRUCTION_LOSSES = ("l2", "l1", "focal_l2")


def _check_images(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.dim() < 3 or pred.shape[-3] != 3:
        raise ValueError(f"`pred` must be images of shape [..., 3, H, W], got {tuple(pred.shape)}")
    if pred.shape != target.shape:
        raise ValueError(f"`target` must have the shape of `pred` {tuple(pred.shape)}, got {tuple(target.shape)}")


def foreground_mask(target: torch.Tensor, background: torch.Tensor, atol: float = 1e-6) -> torch.Tensor:
    """``[..., H, W]`` bool: pixels of ``target`` ``[B, ..., 3, H, W]`` that differ from their sample's background
    ``[B, 3]`` in any channel by more than ``atol`` (the paper's test: background = all three channels within 1e-6)."""
    if background.dim() != 2 or background.shape != (target.shape[0], 3):
        raise ValueError(f"`background` must have shape [B={target.shape[0]}, 3], got {tuple(background.shape)}")
    shape = (target.shape[0],) + (1,) * (target.dim() - 4) + (3, 1, 1)
    return ((target - background.view(shape).to(target.dtype)).abs() > atol).any(dim=-3)


def reconstruction_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    loss_type: str = "l2",
    background: torch.Tensor | None = None,
    foreground_rate: float = 4.0,
    background_rate: float = 1.0,
) -> torch.Tensor:
    """Mean image loss between renders and ground truth.

    Args:
        pred, target: ``[B, V, 3, H, W]`` (any leading dims after B) images.
        loss_type: ``"l2"`` (mean squared error), ``"l1"`` (mean absolute error) or ``"focal_l2"``: squared error
            weighted per pixel by ``w_fg = 2 r_fg / (r_fg + r_bg)`` on foreground and ``w_bg = 2 r_bg / (r_fg + r_bg)``
            on background pixels (1.6 and 0.4 for the paper's rates 4 and 1, so the weights average to 1), where a
            pixel is background when its ground truth equals the sample's background colour (UniPre3D's
            ``focal_l2_loss``, method reference 7.1).
        background: ``[B, 3]`` background colours (needed by ``"focal_l2"``).
    Returns:
        a scalar tensor.
    """
    _check_images(pred, target)
    if loss_type == "l2":
        return (pred - target).square().mean()
    if loss_type == "l1":
        return (pred - target).abs().mean()
    if loss_type != "focal_l2":
        raise ValueError(f"`loss_type` must be one of {RECONSTRUCTION_LOSSES}, got {loss_type!r}")
    if background is None:
        raise ValueError('`background` [B, 3] is needed by loss_type="focal_l2"')
    total = foreground_rate + background_rate
    fg = foreground_mask(target, background).unsqueeze(-3)
    weight = torch.where(fg, 2.0 * foreground_rate / total, 2.0 * background_rate / total).to(pred.dtype)
    return (weight * (pred - target).square()).mean()


def _build_lpips(net: str) -> nn.Module:
    require_package("lpips", "the LPIPS loss (lambda_lpips > 0)")
    import lpips

    try:
        return lpips.LPIPS(net=net, verbose=False)
    except Exception as err:  # torchvision missing, or its ImageNet weights not downloadable / not in the cache
        raise RuntimeError(
            f"could not build LPIPS(net={net!r}): {type(err).__name__}: {err}. LPIPS needs torchvision and the "
            f"ImageNet weights of {net} (downloaded by torchvision on first use, into $TORCH_HOME). Install/download "
            "them, or set `lambda_lpips=0` (or a `lpips_start_step` beyond the run) to train without LPIPS."
        ) from err


class LPIPSLoss(nn.Module):
    """LPIPS (Zhang et al. 2018) through the ``lpips`` package, on images in [0, 1] (mapped to [-1, 1] as the paper
    does). The network is frozen and built on first use; its weights are never part of the model's state dict.

    Raises ``ImportError`` / ``RuntimeError`` saying what is missing when the package or its weights are not
    available: the loss is never silently zero.
    """

    def __init__(self, net: str = "vgg"):
        super().__init__()
        self.net = net
        self.network = FrozenNetwork(functools.partial(_build_lpips, net), f"lpips.LPIPS(net={net!r})")

    def per_image(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """LPIPS of every image pair: ``[..., 3, H, W]`` in [0, 1] -> ``[N]``, N the number of images (the form
        `ViewMetricAccumulator` takes as ``lpips_fn``)."""
        _check_images(pred, target)
        network = self.network.load(pred.device)
        flat_pred = pred.reshape(-1, *pred.shape[-3:]) * 2 - 1
        flat_target = target.reshape(-1, *target.shape[-3:]) * 2 - 1
        return network(flat_pred, flat_target).reshape(-1)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean LPIPS over images ``[..., 3, H, W]`` in [0, 1]; a scalar."""
        return self.per_image(pred, target).mean()


__all__ = ["LPIPSLoss", "RECONSTRUCTION_LOSSES", "foreground_mask", "reconstruction_loss"]
