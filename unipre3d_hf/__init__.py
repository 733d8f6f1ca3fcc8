"""unipre3d_hf: UniPre3D (CVPR 2025) for the Hugging Face ecosystem.

Importing the package is light: it imports neither torch nor any optional kernel until a public name that needs it
is first used (``unipre3d_hf.render``, ``unipre3d_hf.Cameras``, ...).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0.dev0"

# public name -> submodule that defines it
_LAZY_NAMES = {
    "Cameras": "rendering",
    "Gaussians": "rendering",
    "RenderOutput": "rendering",
    "render": "rendering",
    "is_gsplat_available": "utils",
    "is_spconv_available": "utils",
    "is_mamba_ssm_available": "utils",
    "is_flash_attn_available": "utils",
    "is_diff_gaussian_rasterization_available": "utils",
    "is_diffusers_available": "utils",
    "is_lpips_available": "utils",
}

__all__ = ["__version__", *_LAZY_NAMES]

if TYPE_CHECKING:
    from .rendering import Cameras, Gaussians, RenderOutput, render  # noqa: F401
    from .utils import (  # noqa: F401
        is_diff_gaussian_rasterization_available,
        is_diffusers_available,
        is_flash_attn_available,
        is_gsplat_available,
        is_lpips_available,
        is_mamba_ssm_available,
        is_spconv_available,
    )


def __getattr__(name: str):
    if name in _LAZY_NAMES:
        value = getattr(importlib.import_module(f".{_LAZY_NAMES[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY_NAMES))
