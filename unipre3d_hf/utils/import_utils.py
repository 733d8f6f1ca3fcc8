"""Availability checks for optional packages.

Nothing here imports an optional package: availability is decided with ``importlib.util.find_spec``, so
``import unipre3d_hf`` stays fast and works on a machine that has none of the GPU extras.
The modules that need a kernel import it inside the function that uses it.
"""

from __future__ import annotations

import importlib.util
from functools import cache

# module name -> how to install it
_INSTALL_HINTS: dict[str, str] = {
    "gsplat": "pip install 'unipre3d_hf[gpu]'  (or: pip install gsplat)",
    "spconv": "pip install 'unipre3d_hf[gpu]'  (or: pip install spconv-cu126)",
    "mamba_ssm": "pip install 'unipre3d_hf[gpu]'  (or: pip install mamba-ssm)",
    "flash_attn": "pip install flash-attn --no-build-isolation",
    "diff_gaussian_rasterization": (
        "build it from https://github.com/graphdeco-inria/diff-gaussian-rasterization (non-commercial licence)"
    ),
    "diffusers": "pip install diffusers",
    "lpips": "pip install lpips",
}


@cache
def _is_package_available(module_name: str) -> bool:
    try:
        return importlib.util.find_spec(module_name) is not None
    except (ImportError, ValueError):  # a broken install, or a parent package that fails to import
        return False


def is_gsplat_available() -> bool:
    return _is_package_available("gsplat")


def is_spconv_available() -> bool:
    return _is_package_available("spconv")


def is_mamba_ssm_available() -> bool:
    return _is_package_available("mamba_ssm")


def is_flash_attn_available() -> bool:
    return _is_package_available("flash_attn")


def is_diff_gaussian_rasterization_available() -> bool:
    return _is_package_available("diff_gaussian_rasterization")


def is_diffusers_available() -> bool:
    return _is_package_available("diffusers")


def is_lpips_available() -> bool:
    return _is_package_available("lpips")


def require_package(module_name: str, feature: str) -> None:
    """Raise an ``ImportError`` naming how to install ``module_name`` when it is missing.

    Args:
        module_name: the importable module, e.g. ``"gsplat"``.
        feature: what the caller wanted, used in the message (e.g. ``'render(backend="gsplat")'``).
    """
    if not _is_package_available(module_name):
        hint = _INSTALL_HINTS.get(module_name, f"pip install {module_name}")
        raise ImportError(f"{feature} needs the optional package `{module_name}`, which is not installed: {hint}")
