#!/usr/bin/env python
"""Render a few hundred Gaussians to a PNG: the package's renderer end to end, with nothing to download.

    python scripts/render_demo.py                      # writes outputs/render_demo.png
    python scripts/render_demo.py --gaussians 800 --views 8 --size 192 --backend torch

The Gaussians trace a trefoil knot, coloured along its length, and are seen by cameras orbiting it at the paper's
object-level distance (1.75 m) and field of view (49.13 deg). Each view is rendered in one batched ``render()`` call;
the grid shows colour (top) and depth (bottom, near = bright) per view.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from unipre3d_hf.rendering import Cameras, Gaussians, render
from unipre3d_hf.rendering.cameras import look_at
from unipre3d_hf.rendering.sh import SH_C0
from unipre3d_hf.rendering.synthetic import SHAPENET_FOV_DEG


def trefoil_gaussians(num: int) -> Gaussians:
    t = torch.linspace(0, 2 * math.pi, num + 1)[:-1]
    # trefoil knot, scaled to fit a unit box
    curve = torch.stack(
        [torch.sin(t) + 2 * torch.sin(2 * t), torch.cos(t) - 2 * torch.cos(2 * t), -torch.sin(3 * t)], 1
    )
    means = curve * 0.16
    tangent = torch.roll(means, -1, 0) - torch.roll(means, 1, 0)
    # stretch each Gaussian along the curve: rotate its x axis onto the tangent (quaternion from two vectors)
    x_axis = torch.tensor([1.0, 0.0, 0.0]).expand_as(tangent)
    unit = torch.nn.functional.normalize(tangent, dim=-1)
    quats = torch.nn.functional.normalize(torch.cat([1 + (x_axis * unit).sum(-1, keepdim=True),
                                                     torch.cross(x_axis, unit, dim=-1)], -1), dim=-1)  # fmt: skip
    spacing = tangent.norm(dim=-1, keepdim=True) / 2
    scales = torch.cat([spacing * 0.8, torch.full_like(spacing, 0.025), torch.full_like(spacing, 0.025)], -1)
    hue = t / (2 * math.pi)
    rgb = 0.5 + 0.45 * torch.stack([torch.cos(2 * math.pi * (hue + k / 3)) for k in range(3)], -1)
    sh = ((rgb - 0.5) / SH_C0)[:, None, :]
    return Gaussians(means[None], quats[None], scales[None], torch.full((1, num), 0.9), sh[None])


def orbit(views: int, size: int) -> Cameras:
    az = torch.linspace(0, 2 * math.pi, views + 1)[:-1]
    el = torch.full_like(az, 0.45)
    eye = 1.75 * torch.stack([torch.cos(el) * torch.cos(az), torch.cos(el) * torch.sin(az), torch.sin(el)], -1)
    return Cameras.from_fov(look_at(eye[None], torch.zeros(1, views, 3)), math.radians(SHAPENET_FOV_DEG), size, size)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gaussians", type=int, default=400)
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--backend", default="auto", choices=["auto", "torch", "gsplat", "inria"])
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--output", default="outputs/render_demo.png")
    args = parser.parse_args(argv)
    if args.gaussians < 3 or args.views < 1 or args.size < 8:
        parser.error("need --gaussians >= 3, --views >= 1 and --size >= 8")

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gauss = trefoil_gaussians(args.gaussians)
    gauss = Gaussians(*(getattr(gauss, k).to(device) for k in ("means", "quats", "scales", "opacities", "sh")))
    cams = orbit(args.views, args.size).to(device)
    start = time.perf_counter()
    out = render(gauss, cams, background=[1.0, 1.0, 1.0], backend=args.backend)
    elapsed = time.perf_counter() - start

    colors = out.colors[0].clamp(0, 1).cpu()  # [V, H, W, 3]
    depth = out.depths[0].cpu()
    drawn = out.alphas[0].cpu() > 0.5
    lo, hi = depth[drawn].min(), depth[drawn].max()
    shade = torch.where(drawn, 1 - (depth - lo) / (hi - lo + 1e-6) * 0.8, torch.zeros_like(depth))
    top = torch.cat(list(colors), dim=1)
    bottom = torch.cat(list(shade[..., None].expand(-1, -1, -1, 3)), dim=1)
    grid = (torch.cat([top, bottom], 0).numpy() * 255).round().astype(np.uint8)
    path = Path(args.output)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    print(
        f"rendered {args.gaussians} Gaussians into {args.views} views of {args.size}x{args.size} with the "
        f"{out.backend} backend on {device} in {elapsed * 1e3:.0f} ms; wrote {path} ({grid.shape[1]}x{grid.shape[0]})"
    )


if __name__ == "__main__":
    main()
