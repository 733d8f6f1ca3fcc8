"""Image grids of renders for quick inspection."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

__all__ = ["save_render_grid"]


def save_render_grid(
    path: str | os.PathLike,
    rows: Sequence[Sequence[torch.Tensor]],
    separator: int = 2,
) -> str:
    """Tiles images into one PNG: one row per sample (e.g. reference view, render, ground truth), written atomically.

    Images are clamped to [0, 1] and quantised to 8 bits (``round(255 * x)``); cells are separated by ``separator``
    white pixels, and a row shorter than the longest one is padded with white.

    Args:
        path: the PNG to write (parent folders are created).
        rows: list of samples, each a list of ``[3, H, W]`` float images, all of the same ``H`` and ``W``.
        separator: width in pixels of the white lines between cells.

    Returns:
        ``str(path)``.
    """
    from PIL import Image

    if len(rows) == 0 or any(len(row) == 0 for row in rows):
        raise ValueError("`rows` must be a non-empty list of non-empty lists of [3, H, W] images")
    shape = None
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3:
                got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
                raise ValueError(f"`rows[{r}][{c}]` must be a [3, H, W] tensor, got {got}")
            if shape is None:
                shape = tuple(image.shape)
            elif tuple(image.shape) != shape:
                raise ValueError(f"`rows[{r}][{c}]` has shape {tuple(image.shape)}; every image must be {shape}")
    if separator < 0:
        raise ValueError(f"`separator` must be >= 0, got {separator}")
    _, h, w = shape
    n_rows, n_cols = len(rows), max(len(row) for row in rows)
    grid = torch.ones(3, n_rows * h + (n_rows - 1) * separator, n_cols * w + (n_cols - 1) * separator)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            top, left = r * (h + separator), c * (w + separator)
            grid[:, top : top + h, left : left + w] = image.detach().float().cpu().clamp(0, 1)
    pixels = (grid * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(pixels, mode="RGB").save(f, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return str(path)
