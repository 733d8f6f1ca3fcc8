import subprocess
import sys
import textwrap

BLOCKED = ["gsplat", "spconv", "mamba_ssm", "flash_attn", "diff_gaussian_rasterization", "diffusers", "lpips", "timm"]


def run_python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_import_imports_no_optional_kernel():
    out = run_python(
        f"""
        import sys
        import unipre3d_hf
        print([m for m in {BLOCKED!r} if m in sys.modules])
        """
    )
    assert out.strip() == "[]"


def test_cpu_render_works_with_every_optional_package_blocked():
    out = run_python(
        f"""
        import sys
        for name in {BLOCKED!r}:
            sys.modules[name] = None  # what Python reports for a package that is not installed
        import torch, unipre3d_hf
        from unipre3d_hf import Cameras, Gaussians, render
        assert not unipre3d_hf.is_gsplat_available() and not unipre3d_hf.is_spconv_available()
        cams = Cameras(torch.eye(4)[None, None], torch.tensor([[[50.0, 50.0, 8.0, 8.0]]]), 16, 16)
        g = Gaussians(torch.tensor([[[0.0, 0.0, 2.0]]]), torch.tensor([[[1.0, 0, 0, 0]]]), torch.full((1, 1, 3), 0.1),
                      torch.tensor([[0.9]]), torch.zeros(1, 1, 1, 3))
        out = render(g, cams, backend="auto")
        print(out.backend, tuple(out.colors.shape))
        """
    )
    assert out.strip() == "torch (1, 1, 16, 16, 3)"


def test_missing_kernel_raises_import_error_naming_the_extra():
    out = run_python(
        """
        from unipre3d_hf.utils import require_package
        from unipre3d_hf.utils.import_utils import _is_package_available
        _is_package_available.cache_clear()
        import importlib.util
        importlib.util.find_spec = lambda name, *a, **k: None  # nothing optional is installed
        try:
            require_package("gsplat", 'render(backend="gsplat")')
        except ImportError as e:
            print(e)
        """
    )
    assert "gsplat" in out and "unipre3d_hf[gpu]" in out
