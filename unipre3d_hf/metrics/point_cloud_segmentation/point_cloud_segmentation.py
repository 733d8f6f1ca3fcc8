"""Point-cloud semantic segmentation: mIoU, mAcc, allAcc and per-class IoU, as Pointcept's SemSegEvaluator."""

import datasets
import evaluate
import torch

from unipre3d_hf.training.metrics import confusion_matrix, segmentation_scores

_DESCRIPTION = """Semantic segmentation scores of point clouds from one confusion matrix over every labelled point:
mean IoU and mean class accuracy over the classes present, overall point accuracy (allAcc), per-class IoU."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of list of int): predicted class of every point of each cloud.
    references (list of list of int): true class of every point, or `ignore_index` for unlabelled points.
    num_labels (int): number of classes.
    ignore_index (int): label of unlabelled points (default -1).
Returns:
    mIoU, mAcc, allAcc (float), iou_per_class, acc_per_class (list of float, NaN for an absent class).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PointCloudSegmentation(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("int64")),
                    "references": datasets.Sequence(datasets.Value("int64")),
                }
            ),
        )

    def _compute(self, predictions, references, num_labels, ignore_index=-1):
        total = torch.zeros(int(num_labels), int(num_labels), dtype=torch.int64)
        for pred, ref in zip(predictions, references):
            total += confusion_matrix(torch.as_tensor(pred), torch.as_tensor(ref), int(num_labels), ignore_index)
        return segmentation_scores(total)
