"""Availability checks for optional packages.

Nothing here imports an optional package: availability is decided with ``importlib.util.find_spec`` and the
installed distribution's metadata, so ``import unipre3d_hf`` stays fast and works on a machine that has none of the
GPU extras. The modules that need a kernel import it inside the function that uses it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from functools import cache

# module name -> (distribution names to look for, pip requirement to suggest)
_OPTIONAL_PACKAGES: dict[str, tuple[tuple[str, ...], str]] = {
    "gsplat": (("gsplat",), "pip install 'unipre3d_hf[gpu]'  (or: pip install gsplat)"),
    "spconv": (
        ("spconv", "spconv-cu126", "spconv-cu124", "spconv-cu121", "spconv-cu120", "spconv-cu118"),
        "pip install 'unipre3d_hf[gpu]'  (or: pip install spconv-cu126)",
    ),
    "mamba_ssm": (("mamba-ssm", "mamba_ssm"), "pip install 'unipre3d_hf[gpu]'  (or: pip install mamba-ssm)"),
    "flash_attn": (("flash-attn", "flash_attn"), "pip install flash-attn --no-build-isolation"),
    "diff_gaussian_rasterization": (
        ("diff-gaussian-rasterization", "diff_gaussian_rasterization"),
        "build it from https://github.com/graphdeco-inria/diff-gaussian-rasterization (non-commercial licence)",
    ),
    "diffusers": (("diffusers",), "pip install diffusers"),
    "lpips": (("lpips",), "pip install lpips"),
}


@cache
def _is_package_available(module_name: str) -> bool:
    try:
        if importlib.util.find_spec(module_name) is None:
            return False
    except (ImportError, ValueError):  # a broken install, or a parent package that fails to import
        return False
    dists = _OPTIONAL_PACKAGES.get(module_name, ((module_name,), ""))[0]
    for dist in dists:
        try:
            importlib.metadata.version(dist)
            return True
        except importlib.metadata.PackageNotFoundError:
            continue
    # A module found on the path without distribution metadata (e.g. a source checkout on PYTHONPATH) still counts.
    return True


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
        hint = _OPTIONAL_PACKAGES.get(module_name, ((module_name,), f"pip install {module_name}"))[1]
        raise ImportError(f"{feature} needs the optional package `{module_name}`, which is not installed: {hint}")
