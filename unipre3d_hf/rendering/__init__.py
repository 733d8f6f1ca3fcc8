"""Differentiable Gaussian splatting: cameras, a Gaussians container and ``render()`` with several backends."""

from .cameras import Cameras
from .gaussians import Gaussians
from .renderer import BACKENDS, RenderOutput, render
from .sh import eval_sh_colors, sh_basis

__all__ = ["BACKENDS", "Cameras", "Gaussians", "RenderOutput", "eval_sh_colors", "render", "sh_basis"]
