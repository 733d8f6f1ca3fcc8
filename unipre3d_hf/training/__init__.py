"""Losses, metrics (PSNR, SSIM, LPIPS, accuracy, mIoU), EMA and schedules.

Training utilities for ``scripts/pretrain.py``: image and segmentation metrics. Importing
this package imports no optional package (tensorboard, lpips).
"""

from .metrics import ViewMetricAccumulator, accuracy, confusion_matrix, iou_per_class, mean_iou, psnr, ssim

__all__ = [
    "ViewMetricAccumulator",
    "accuracy",
    "confusion_matrix",
    "iou_per_class",
    "mean_iou",
    "psnr",
    "ssim",
]
