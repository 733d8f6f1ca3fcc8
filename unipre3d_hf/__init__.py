"""unipre3d_hf: UniPre3D (CVPR 2025) for the Hugging Face ecosystem.

Importing the package registers every config and model with transformers' Auto classes (so
``AutoModel.from_pretrained`` works right after ``import unipre3d_hf``); that imports torch and transformers, but never
an optional kernel (gsplat, spconv, mamba-ssm, flash-attn, diffusers, lpips): those load only when a backend that needs
them is asked for.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0.dev0"

# public name -> submodule that defines it
_LAZY_NAMES = {
    "PCMConfig": "configuration.pcm",
    "PCMModel": "modeling.pcm",
    "PointBackboneOutput": "modeling.outputs",
    "PointMLPConfig": "configuration.pointmlp",
    "PointMLPModel": "modeling.pointmlp",
    "Mamba3DConfig": "configuration.mamba3d",
    "Mamba3DModel": "modeling.mamba3d",
    "PointTransformerConfig": "configuration.point_transformer",
    "PointTransformerModel": "modeling.point_transformer",
    "Cameras": "rendering",
    "Gaussians": "rendering",
    "RenderOutput": "rendering",
    "render": "rendering",
    "SparseUNetConfig": "configuration.sparse_unet",
    "SparseUNetModel": "modeling.sparse_unet",
    "PTv3Config": "configuration.ptv3",
    "PTv3Model": "modeling.ptv3",
    "SparseVoxels": "ops.sparse_conv",
    "UniPre3DConfig": "configuration.unipre3d",
    "UniPre3DForGaussianPretraining": "modeling.pretraining",
    "GaussianPretrainingOutput": "modeling.outputs",
    "PointCloudClassifierOutput": "modeling.outputs",
    "PointCloudSegmenterOutput": "modeling.outputs",
    "AutoModelForPointCloudClassification": "modeling.auto",
    "AutoModelForPointCloudSegmentation": "modeling.auto",
    "AutoModelForPointCloudInstanceSegmentation": "modeling.auto",
    "SparseUNetForPointCloudInstanceSegmentation": "modeling.heads",
    "PTv3ForPointCloudInstanceSegmentation": "modeling.heads",
    "PointCloudInstanceSegmenterOutput": "modeling.outputs",
    "PointMLPForPointCloudClassification": "modeling.heads",
    "PointTransformerForPointCloudClassification": "modeling.heads",
    "Mamba3DForPointCloudClassification": "modeling.heads",
    "PCMForPointCloudClassification": "modeling.heads",
    "PointMLPForPointCloudSegmentation": "modeling.heads",
    "PointTransformerForPointCloudSegmentation": "modeling.heads",
    "Mamba3DForPointCloudSegmentation": "modeling.heads",
    "PCMForPointCloudSegmentation": "modeling.heads",
    "SparseUNetForPointCloudSegmentation": "modeling.heads",
    "PTv3ForPointCloudSegmentation": "modeling.heads",
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
    from .configuration.mamba3d import Mamba3DConfig  # noqa: F401
    from .configuration.pcm import PCMConfig  # noqa: F401
    from .configuration.point_transformer import PointTransformerConfig  # noqa: F401
    from .configuration.pointmlp import PointMLPConfig  # noqa: F401
    from .configuration.ptv3 import PTv3Config  # noqa: F401
    from .configuration.sparse_unet import SparseUNetConfig  # noqa: F401
    from .configuration.unipre3d import UniPre3DConfig  # noqa: F401
    from .modeling.auto import AutoModelForPointCloudClassification, AutoModelForPointCloudSegmentation  # noqa: F401
    from .modeling.heads import (  # noqa: F401
        Mamba3DForPointCloudClassification,
        Mamba3DForPointCloudSegmentation,
        PCMForPointCloudClassification,
        PCMForPointCloudSegmentation,
        PointMLPForPointCloudClassification,
        PointMLPForPointCloudSegmentation,
        PointTransformerForPointCloudClassification,
        PointTransformerForPointCloudSegmentation,
        PTv3ForPointCloudSegmentation,
        SparseUNetForPointCloudSegmentation,
    )
    from .modeling.mamba3d import Mamba3DModel  # noqa: F401
    from .modeling.outputs import (  # noqa: F401
        GaussianPretrainingOutput,
        PointBackboneOutput,
        PointCloudClassifierOutput,
        PointCloudSegmenterOutput,
    )
    from .modeling.pcm import PCMModel  # noqa: F401
    from .modeling.point_transformer import PointTransformerModel  # noqa: F401
    from .modeling.pointmlp import PointMLPModel  # noqa: F401
    from .modeling.pretraining import UniPre3DForGaussianPretraining  # noqa: F401
    from .modeling.ptv3 import PTv3Model  # noqa: F401
    from .modeling.sparse_unet import SparseUNetModel  # noqa: F401
    from .ops.sparse_conv import SparseVoxels  # noqa: F401
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

if TYPE_CHECKING:  # instance segmentation (PointGroup)
    from .modeling.auto import AutoModelForPointCloudInstanceSegmentation  # noqa: F401
    from .modeling.heads import (  # noqa: F401
        PTv3ForPointCloudInstanceSegmentation,
        SparseUNetForPointCloudInstanceSegmentation,
    )
    from .modeling.outputs import PointCloudInstanceSegmenterOutput  # noqa: F401


# (configuration module, config class, modeling module, model class) registered with AutoConfig / AutoModel
_AUTO_MODELS: list[tuple[str, str, str, str]] = [
    ("pointmlp", "PointMLPConfig", "pointmlp", "PointMLPModel"),
    ("point_transformer", "PointTransformerConfig", "point_transformer", "PointTransformerModel"),
    ("mamba3d", "Mamba3DConfig", "mamba3d", "Mamba3DModel"),
    ("pcm", "PCMConfig", "pcm", "PCMModel"),
    ("sparse_unet", "SparseUNetConfig", "sparse_unet", "SparseUNetModel"),
    ("ptv3", "PTv3Config", "ptv3", "PTv3Model"),
]


def _register_with_auto_classes() -> None:
    from transformers import AutoConfig, AutoModel

    for config_module, config_name, model_module, model_name in _AUTO_MODELS:
        config_cls = getattr(importlib.import_module(f".configuration.{config_module}", __name__), config_name)
        model_cls = getattr(importlib.import_module(f".modeling.{model_module}", __name__), model_name)
        AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
        AutoModel.register(config_cls, model_cls, exist_ok=True)
    # the task models (all on top of the backbone modules imported above)
    from .modeling.auto import AutoModelForPointCloudClassification, AutoModelForPointCloudSegmentation
    from .modeling.heads import CLASSIFICATION_MODELS, SEGMENTATION_MODELS

    for auto_class, task_models in (
        (AutoModelForPointCloudClassification, CLASSIFICATION_MODELS),
        (AutoModelForPointCloudSegmentation, SEGMENTATION_MODELS),
    ):
        for model_cls in task_models:
            auto_class.register(model_cls.config_class, model_cls, exist_ok=True)
    from .modeling.auto import AutoModelForPointCloudInstanceSegmentation
    from .modeling.heads import INSTANCE_SEGMENTATION_MODELS

    for model_cls in INSTANCE_SEGMENTATION_MODELS:
        AutoModelForPointCloudInstanceSegmentation.register(model_cls.config_class, model_cls, exist_ok=True)
    # the pre-training composite's config (its model class, which imports the data and rendering code, loads lazily)
    from .configuration.unipre3d import UniPre3DConfig

    AutoConfig.register(UniPre3DConfig.model_type, UniPre3DConfig, exist_ok=True)


_register_with_auto_classes()


def __getattr__(name: str):
    if name in _LAZY_NAMES:
        value = getattr(importlib.import_module(f".{_LAZY_NAMES[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY_NAMES))
