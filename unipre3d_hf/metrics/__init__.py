"""Local ``evaluate`` modules for the downstream tasks, shipped inside the package so that they load offline.

    >>> import evaluate
    >>> from unipre3d_hf.metrics import metric_path
    >>> accuracy = evaluate.load(metric_path("point_cloud_classification"))
    >>> accuracy.compute(predictions=[0, 1, 1], references=[0, 1, 0], num_labels=2)
    {'accuracy': 0.666..., 'mean_class_accuracy': 0.75, ...}

Each module is a folder holding a same-named script that defines an ``evaluate.Metric`` (evaluate's rule for local
modules) and computes its scores with the plain functions of :mod:`unipre3d_hf.training.metrics`:

- ``point_cloud_classification``: overall accuracy and mean class accuracy (one class index per shape);
- ``point_cloud_segmentation``: mIoU, mAcc, allAcc and per-class IoU with an ignore index (one label list per cloud);
- ``part_segmentation``: ShapeNetPart class and instance mIoU (one part list per shape, its category, and the part
  indices of every category).
"""

from __future__ import annotations

import os

METRICS = ("point_cloud_classification", "point_cloud_segmentation", "part_segmentation")


def metric_path(name: str) -> str:
    """The folder of the local ``evaluate`` module ``name`` (one of :data:`METRICS`), for ``evaluate.load``."""
    if name not in METRICS:
        raise ValueError(f"`name` must be one of {METRICS}, got {name!r}")
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), name)


__all__ = ["METRICS", "metric_path"]
