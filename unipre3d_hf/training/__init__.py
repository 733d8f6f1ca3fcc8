"""Losses, metrics (PSNR, SSIM, LPIPS, accuracy, mIoU), EMA and schedules.

Training utilities for ``scripts/pretrain.py``: image and segmentation metrics and the paper's EMA rule. Importing
this package imports no optional package (tensorboard, lpips).
"""

from .ema import EMA, ema_decay
from .metrics import ViewMetricAccumulator, accuracy, confusion_matrix, iou_per_class, mean_iou, psnr, ssim

__all__ = [
    "EMA",
    "ViewMetricAccumulator",
    "accuracy",
    "confusion_matrix",
    "ema_decay",
    "iou_per_class",
    "mean_iou",
    "psnr",
    "ssim",
]
