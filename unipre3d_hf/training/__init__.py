"""Losses, metrics (PSNR, SSIM, LPIPS, accuracy, mIoU), EMA and schedules.

Training utilities for ``scripts/pretrain.py``: image and segmentation metrics, the paper's EMA rule, AdamW and StepLR
builders and render grids. Importing this package imports
torch and accelerate only; no optional package (tensorboard, lpips) is imported until it is used.
"""

from .ema import EMA, ema_decay
from .metrics import ViewMetricAccumulator, accuracy, confusion_matrix, iou_per_class, mean_iou, psnr, ssim
from .optim import PAPER_LR_SCHEDULES, all_grads_finite, build_optimizer, build_scheduler
from .visualization import save_render_grid

__all__ = [
    "EMA",
    "PAPER_LR_SCHEDULES",
    "ViewMetricAccumulator",
    "accuracy",
    "all_grads_finite",
    "build_optimizer",
    "build_scheduler",
    "confusion_matrix",
    "ema_decay",
    "iou_per_class",
    "mean_iou",
    "psnr",
    "save_render_grid",
    "ssim",
]
