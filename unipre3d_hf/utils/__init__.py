"""Small utilities shared across the package (import gating)."""

from .import_utils import (
    is_diff_gaussian_rasterization_available,
    is_diffusers_available,
    is_flash_attn_available,
    is_gsplat_available,
    is_lpips_available,
    is_mamba_ssm_available,
    is_spconv_available,
    require_package,
)

__all__ = [
    "is_diff_gaussian_rasterization_available",
    "is_diffusers_available",
    "is_flash_attn_available",
    "is_gsplat_available",
    "is_lpips_available",
    "is_mamba_ssm_available",
    "is_spconv_available",
    "require_package",
]
