"""Synthetic Gaussians and cameras with the paper's geometry, for demos, tests and benchmarks.

- object level: unit-size objects seen from 1.75 m at the paper's FoV of 49.13 deg (fx = 140 px at 128x128);
- scene level: a 6 m room of 1-4 cm Gaussians seen from inside with ScanNet's intrinsics scaled to 160x120.
"""

from __future__ import annotations

import math

import torch

from .cameras import Cameras, look_at
from .gaussians import Gaussians

SHAPENET_FOV_DEG = 49.13434264120263
SCANNET_FX_160 = 577.870605 / 4


def random_gaussians(
    batch: int,
    num: int,
    extent: float,
    scale_range: tuple[float, float],
    sh_degree: int = 1,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Gaussians:
    """``num`` Gaussians per sample, uniform in a cube of half-size ``extent``, log-uniform scales, random
    rotations, opacities in [0.05, 0.95] and SH coefficients ~ N(0, 0.3^2)."""
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(batch, num, 3, generator=g, dtype=dtype) - 0.5) * 2 * extent
    quats = torch.randn(batch, num, 4, generator=g, dtype=dtype)
    lo, hi = math.log(scale_range[0]), math.log(scale_range[1])
    scales = torch.exp(lo + (hi - lo) * torch.rand(batch, num, 3, generator=g, dtype=dtype))
    opacities = torch.rand(batch, num, generator=g, dtype=dtype) * 0.9 + 0.05
    sh = torch.randn(batch, num, (sh_degree + 1) ** 2, 3, generator=g, dtype=dtype) * 0.3
    return Gaussians(means, quats, scales, opacities, sh)


def orbit_cameras(
    batch: int,
    views: int,
    radius: float,
    width: int,
    height: int,
    fov_x_deg: float,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    near: float = 0.01,
) -> Cameras:
    """Cameras at random azimuths and elevations (within +-34 deg) on a sphere, looking at the origin."""
    g = torch.Generator().manual_seed(seed)
    az = torch.rand(batch, views, generator=g, dtype=dtype) * 2 * math.pi
    el = (torch.rand(batch, views, generator=g, dtype=dtype) - 0.5) * 1.2
    eye = radius * torch.stack([torch.cos(el) * torch.cos(az), torch.cos(el) * torch.sin(az), torch.sin(el)], -1)
    return Cameras.from_fov(look_at(eye, torch.zeros_like(eye)), math.radians(fov_x_deg), width, height, near=near)


def object_workload(batch: int = 32, views: int = 4, num: int = 1024, size: int = 128, seed: int = 0):
    """The object-level render of one pre-training step: ``(Gaussians [batch, num], Cameras [batch, views])``."""
    gauss = random_gaussians(batch, num, extent=0.4, scale_range=(0.005, 0.03), sh_degree=1, seed=seed)
    cams = orbit_cameras(batch, views, radius=1.75, width=size, height=size, fov_x_deg=SHAPENET_FOV_DEG, seed=seed)
    return gauss, cams


def scene_workload(num: int = 150_000, views: int = 8, width: int = 160, height: int = 120, seed: int = 0):
    """The scene-level render of one pre-training step: ``(Gaussians [1, num], Cameras [1, views])``."""
    g = torch.Generator().manual_seed(seed)
    gauss = random_gaussians(1, num, extent=3.0, scale_range=(0.01, 0.04), sh_degree=1, seed=seed)
    eye = (torch.rand(1, views, 3, generator=g) - 0.5) * 1.0
    target = (torch.rand(1, views, 3, generator=g) - 0.5) * 4.0
    intrinsics = torch.tensor([SCANNET_FX_160, SCANNET_FX_160, width / 2, height / 2]).expand(1, views, 4).clone()
    cams = Cameras.from_camera_to_world(look_at(eye, target), intrinsics, width, height, near=0.2, far=10.0)
    return gauss, cams
