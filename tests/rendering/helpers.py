"""Random but well-conditioned Gaussians and cameras shared by the rendering tests and the GPU parity tests."""

from __future__ import annotations

import math

import torch

from unipre3d_hf.rendering import Cameras, Gaussians


def look_at(eye: torch.Tensor, target: torch.Tensor, up=(0.0, 0.0, 1.0)) -> torch.Tensor:
    """Camera-to-world [..., 4, 4] in OpenCV axes (x right, y down, z forward) looking from `eye` at `target`."""
    up = torch.tensor(up, dtype=eye.dtype).expand_as(eye)
    forward = torch.nn.functional.normalize(target - eye, dim=-1)
    right = torch.nn.functional.normalize(torch.cross(forward, up, dim=-1), dim=-1)
    down = torch.cross(forward, right, dim=-1)
    c2w = torch.zeros(*eye.shape[:-1], 4, 4, dtype=eye.dtype)
    c2w[..., :3, 0], c2w[..., :3, 1], c2w[..., :3, 2], c2w[..., :3, 3] = right, down, forward, eye
    c2w[..., 3, 3] = 1
    return c2w


def orbit_cameras(batch: int, views: int, radius: float, width: int, height: int, fov_x_deg: float, seed: int = 0,
                  dtype=torch.float32, near: float = 0.01) -> Cameras:
    g = torch.Generator().manual_seed(seed)
    az = torch.rand(batch, views, generator=g, dtype=dtype) * 2 * math.pi
    el = (torch.rand(batch, views, generator=g, dtype=dtype) - 0.5) * 1.2
    eye = radius * torch.stack([torch.cos(el) * torch.cos(az), torch.cos(el) * torch.sin(az), torch.sin(el)], -1)
    c2w = look_at(eye, torch.zeros_like(eye))
    return Cameras.from_fov(c2w, math.radians(fov_x_deg), width, height, near=near)


def random_gaussians(batch: int, num: int, extent: float, scale_range: tuple[float, float], sh_degree: int = 1,
                     seed: int = 0, dtype=torch.float32) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(batch, num, 3, generator=g, dtype=dtype) - 0.5) * 2 * extent
    quats = torch.randn(batch, num, 4, generator=g, dtype=dtype)
    lo, hi = math.log(scale_range[0]), math.log(scale_range[1])
    scales = torch.exp(lo + (hi - lo) * torch.rand(batch, num, 3, generator=g, dtype=dtype))
    opacities = torch.rand(batch, num, generator=g, dtype=dtype) * 0.9 + 0.05
    sh = torch.randn(batch, num, (sh_degree + 1) ** 2, 3, generator=g, dtype=dtype) * 0.3
    return Gaussians(means, quats, scales, opacities, sh)


def object_workload(batch=32, views=4, num=1024, size=128, seed=0):
    """The paper's object level: unit-size objects seen from 1.75 m at FoV 49.13 deg, 128x128."""
    gauss = random_gaussians(batch, num, extent=0.4, scale_range=(0.005, 0.03), sh_degree=1, seed=seed)
    cams = orbit_cameras(batch, views, radius=1.75, width=size, height=size, fov_x_deg=49.13434264120263, seed=seed)
    return gauss, cams


def scene_workload(num=150_000, views=8, width=160, height=120, seed=0):
    """The paper's scene level: a room of 2 cm Gaussians seen from inside, ScanNet intrinsics at 160x120."""
    g = torch.Generator().manual_seed(seed)
    gauss = random_gaussians(1, num, extent=3.0, scale_range=(0.01, 0.04), sh_degree=1, seed=seed)
    eye = (torch.rand(1, views, 3, generator=g) - 0.5) * 1.0
    target = (torch.rand(1, views, 3, generator=g) - 0.5) * 4.0
    c2w = look_at(eye, target)
    fx = 577.870605 / 4
    intr = torch.tensor([fx, fx, 79.5, 59.5]).expand(1, views, 4).clone()
    return gauss, Cameras.from_camera_to_world(c2w, intr, width, height, near=0.2, far=10.0)
