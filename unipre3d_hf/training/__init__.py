"""The shared training loop, its arguments, losses, metrics (PSNR, SSIM, LPIPS, accuracy, mIoU), EMA and schedules.

``run_training(args, task)`` (``loop.py``) trains any ``TrainingTask``; ``parse_arguments`` (``arguments.py``) builds
and checks its arguments; ``pretrain.py`` holds the pre-training task behind ``scripts/pretrain.py`` (import it as
``unipre3d_hf.training.pretrain``). Also here: image and segmentation metrics, the paper's EMA rule, AdamW and
learning-rate schedules, crash-safe checkpoints that load without running code, a JSON-lines tracker and render grids.
Importing this package imports torch and accelerate only; no optional package (tensorboard, lpips) is imported until
it is used.
"""

from .arguments import parse_arguments
from .checkpointing import (
    CheckpointError,
    apply_checkpoint,
    checkpoint_info,
    latest_checkpoint,
    list_checkpoints,
    read_best,
    read_checkpoint,
    resolve_resume,
    resume_candidates,
    save_best,
    save_checkpoint,
    verify_checkpoint,
)
from .ema import EMA, ema_decay
from .loop import TrainingArguments, TrainingTask, lock_output_dir, run_training, weights_checksum
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
from .optim import (
    LR_SCHEDULERS,
    PAPER_LR_SCHEDULES,
    all_grads_finite,
    build_optimizer,
    build_scheduler,
    skip_step_if,
)
from .tracking import JSONLinesTracker, build_trackers, to_json_value
from .visualization import save_render_grid

__all__ = [
    "CheckpointError",
    "EMA",
    "JSONLinesTracker",
    "LPIPSLoss",
    "LR_SCHEDULERS",
    "PAPER_LR_SCHEDULES",
    "RECONSTRUCTION_LOSSES",
    "TrainingArguments",
    "TrainingTask",
    "ViewMetricAccumulator",
    "accuracy",
    "all_grads_finite",
    "skip_step_if",
    "apply_checkpoint",
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
    "lock_output_dir",
    "mean_iou",
    "parse_arguments",
    "psnr",
    "read_best",
    "read_checkpoint",
    "reconstruction_loss",
    "resolve_resume",
    "resume_candidates",
    "run_training",
    "save_best",
    "save_checkpoint",
    "save_render_grid",
    "ssim",
    "to_json_value",
    "verify_checkpoint",
    "weights_checksum",
]
