"""Small building blocks shared by several backbones."""

from __future__ import annotations

import torch
from torch import nn


def drop_path(x: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth per sample (Huang et al. 2016): zero a whole residual branch with probability ``drop_prob``
    and rescale the survivors by ``1 / (1 - drop_prob)``. The first dimension of ``x`` indexes the samples."""
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


def check_point_batch(points: torch.Tensor, features: torch.Tensor | None, *, min_points: int = 1) -> None:
    """Validate the inputs of an object backbone: ``points [B, N, 3]`` finite, ``features [B, N, C]`` if given."""
    if not isinstance(points, torch.Tensor) or points.ndim != 3 or points.shape[-1] != 3:
        shape = tuple(points.shape) if isinstance(points, torch.Tensor) else type(points).__name__
        raise ValueError(f"`points` must be a float tensor of shape [B, N, 3] (xyz), got {shape}")
    if not points.is_floating_point():
        raise ValueError(f"`points` must be a floating-point tensor, got dtype {points.dtype}")
    if points.shape[1] < min_points:
        raise ValueError(f"`points` has {points.shape[1]} points per sample, this model needs at least {min_points}")
    if not torch.isfinite(points).all():
        raise ValueError("`points` contains NaN or infinite values")
    if features is not None:
        if features.ndim != 3 or features.shape[:2] != points.shape[:2]:
            raise ValueError(
                f"`features` must have shape [B, N, C] = [{points.shape[0]}, {points.shape[1]}, C], "
                f"got {tuple(features.shape)}"
            )
        if not torch.isfinite(features).all():
            raise ValueError("`features` contains NaN or infinite values")
