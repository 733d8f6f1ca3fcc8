"""Synthetic checkpoints in the original UniPre3D layout: random tensors with the keys and shapes recorded from the
original modules (``original_checkpoint_layout.json``, a copy of ``shared/reference``)."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import torch

LAYOUT_NAMES = {
    "pointmlp": "pointmlp",
    "point_transformer": "transformer",
    "mamba3d": "mamba3d",
    "pcm": "pcm",
    "sparse_unet": "sparseunet",
    "ptv3": "ptv3",
}


@lru_cache
def layout() -> dict:
    return json.loads((Path(__file__).parent / "original_checkpoint_layout.json").read_text())


def _tensor(shape, g):
    if not shape:  # num_batches_tracked
        return torch.tensor(7)
    return torch.randn(shape, generator=g)


def synthetic_checkpoint(backbone: str, seed: int = 0, ddp: bool = True, layout_name: str | None = None) -> dict:
    """The ``model_state_dict`` of an original checkpoint: backbone, Gaussian head, image_conv, fusion, a few VAE keys
    and the two constant buffers, every key under ``module.`` when ``ddp``."""
    g = torch.Generator().manual_seed(seed)
    entry = layout()[layout_name or LAYOUT_NAMES[backbone]]
    sd = {f"point_network.encoder.{k}": _tensor(v, g) for k, v in entry["backbone_state_dict"].items()}
    for part, prefix in (
        ("final", "point_network.final."),
        ("image_conv", "image_conv."),
        ("fusion_mlps", "fusion_mlps."),
    ):
        for k, v in entry.get("pretraining_heads", {}).get(part, {}).items():
            sd[prefix + k] = _tensor(v, g)
    sd["image_network.encoder.conv_in.weight"] = torch.randn(128, 3, 3, 3, generator=g)
    sd["sh_to_v_transform"] = torch.randn(1, 3, 3, generator=g)
    sd["v_to_sh_transform"] = torch.randn(1, 3, 3, generator=g)
    return {("module." if ddp else "") + k: v for k, v in sd.items()}
