"""Losses, metrics (PSNR, SSIM, LPIPS, accuracy, mIoU), EMA and schedules.

Training utilities for ``scripts/pretrain.py``: image and segmentation metrics, the paper's EMA rule, AdamW and StepLR
builders, crash-safe Accelerate checkpoints, a JSON-lines tracker and render grids. Importing this package imports
torch and accelerate only; no optional package (tensorboard, lpips) is imported until it is used.
"""

from .checkpointing import (
    checkpoint_info,
    latest_checkpoint,
    list_checkpoints,
    read_best,
    resolve_resume,
    save_best,
    save_checkpoint,
)
from .ema import EMA, ema_decay
from .losses import RECONSTRUCTION_LOSSES, LPIPSLoss, foreground_mask, reconstruction_loss
from .metrics import (
    ViewMetricAccumulator,
    accuracy,
    classification_scores,
    confusion_matrix,
    iou_per_class,
    mean_iou,
    part_segmentation_scores,
    predict_parts,
    psnr,
    segmentation_scores,
    shape_part_iou,
    ssim,
)
from .optim import PAPER_LR_SCHEDULES, all_grads_finite, build_optimizer, build_scheduler
from .tracking import JSONLinesTracker, build_trackers, to_json_value
from .visualization import save_render_grid

__all__ = [
    "EMA",
    "JSONLinesTracker",
    "LPIPSLoss",
    "PAPER_LR_SCHEDULES",
    "RECONSTRUCTION_LOSSES",
    "ViewMetricAccumulator",
    "accuracy",
    "all_grads_finite",
    "build_optimizer",
    "build_scheduler",
    "build_trackers",
    "checkpoint_info",
    "classification_scores",
    "confusion_matrix",
    "part_segmentation_scores",
    "predict_parts",
    "segmentation_scores",
    "shape_part_iou",
    "ema_decay",
    "foreground_mask",
    "iou_per_class",
    "latest_checkpoint",
    "list_checkpoints",
    "mean_iou",
    "psnr",
    "read_best",
    "reconstruction_loss",
    "resolve_resume",
    "save_best",
    "save_checkpoint",
    "save_render_grid",
    "ssim",
    "to_json_value",
]
