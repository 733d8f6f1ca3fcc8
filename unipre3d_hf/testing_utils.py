"""Test decorators in the style of ``transformers.testing_utils``: skip a test when what it needs is missing."""

from __future__ import annotations

import unittest

from .utils import import_utils


def write_report(row: dict) -> dict:
    """Print a measured-difference record and, when ``UNIPRE3D_REPORT`` names a file, append it there as a JSON
    line (the GPU parity tests' output)."""
    import json
    import os

    path = os.environ.get("UNIPRE3D_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
    print(json.dumps(row))
    return row


def load_script(name: str):
    """``scripts/<name>.py`` of the source checkout imported as the module ``<name>_script`` (registered in
    ``sys.modules``, which dataclasses and pickling by reference need), for tests of the scripts' own code."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    if not path.is_file():
        raise FileNotFoundError(f"load_script: no script {path} (the scripts live in the source checkout only)")
    spec = importlib.util.spec_from_file_location(f"{name}_script", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def require_cuda(test_case):
    """Skip unless a CUDA device is visible."""
    return unittest.skipUnless(_cuda_available(), "test needs a CUDA device")(test_case)


def require_gsplat(test_case):
    """Skip unless gsplat is installed and a CUDA device is visible (gsplat has no CPU kernels)."""
    ok = import_utils.is_gsplat_available() and _cuda_available()
    return unittest.skipUnless(ok, "test needs gsplat and a CUDA device")(test_case)


def require_spconv(test_case):
    return unittest.skipUnless(import_utils.is_spconv_available(), "test needs spconv")(test_case)


def is_spconv_cpu_build() -> bool:
    """True when the installed spconv is the CPU build (distribution ``spconv``); the CUDA builds
    (``spconv-cu12x``) refuse CPU tensors."""
    from importlib.metadata import PackageNotFoundError, version

    if not import_utils.is_spconv_available():
        return False
    try:
        version("spconv")
    except PackageNotFoundError:
        return False
    return True


def require_spconv_cpu(test_case):
    return unittest.skipUnless(is_spconv_cpu_build(), "test needs spconv's CPU build")(test_case)


def require_mamba_ssm(test_case):
    ok = import_utils.is_mamba_ssm_available() and _cuda_available()
    return unittest.skipUnless(ok, "test needs mamba-ssm and a CUDA device")(test_case)


def require_flash_attn(test_case):
    ok = import_utils.is_flash_attn_available() and _cuda_available()
    return unittest.skipUnless(ok, "test needs flash-attn and a CUDA device")(test_case)


def require_diff_gaussian_rasterization(test_case):
    ok = import_utils.is_diff_gaussian_rasterization_available() and _cuda_available()
    return unittest.skipUnless(ok, "test needs diff-gaussian-rasterization and a CUDA device")(test_case)


def require_diffusers(test_case):
    return unittest.skipUnless(import_utils.is_diffusers_available(), "test needs diffusers")(test_case)


def require_lpips(test_case):
    return unittest.skipUnless(import_utils.is_lpips_available(), "test needs lpips")(test_case)
