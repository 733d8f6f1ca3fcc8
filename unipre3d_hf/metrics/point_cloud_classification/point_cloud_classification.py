"""Shape classification: overall accuracy (OA) and mean class accuracy (mAcc), as ScanObjectNN / ModelNet40 report."""

import datasets
import evaluate

from unipre3d_hf.training.metrics import classification_scores

_DESCRIPTION = """Overall accuracy and mean class accuracy (the mean over the classes present in the references of the
fraction of their shapes predicted right) of point-cloud shape classification."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted class index of each shape.
    references (list of int): true class index of each shape.
    num_labels (int): number of classes (default: 1 + the largest index seen).
Returns:
    accuracy (float), mean_class_accuracy (float), acc_per_class (list of float, NaN for a class with no shape),
    confusion_matrix (list of lists; rows: truth, columns: prediction).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PointCloudClassification(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, num_labels=None):
        if num_labels is None:
            num_labels = 1 + max(max(predictions, default=0), max(references, default=0))
        return classification_scores(predictions, references, int(num_labels))
