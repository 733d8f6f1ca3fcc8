"""ShapeNetPart part segmentation: class mIoU and instance mIoU, as the PointNet++ / Point-BERT evaluation."""

import datasets
import evaluate

from unipre3d_hf.training.metrics import part_segmentation_scores, shape_part_iou

_DESCRIPTION = """Per shape, the mean IoU over the parts of its category (a part absent from both the prediction and
the truth counts IoU 1); instance mIoU averages the shapes, class mIoU averages the per-category means."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of list of int): predicted part index of every point of each shape (restricted to the
        category's parts, see unipre3d_hf.training.metrics.predict_parts).
    references (list of list of int): true part index of every point.
    categories (list of int): category index of each shape.
    category_parts (list of list of int): the part indices of every category (ShapeNetPart: 16 lists, 50 parts).
    category_names (list of str, optional): names to key iou_per_category by.
Returns:
    instance_mIoU, class_mIoU (float), iou_per_category (dict).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PartSegmentation(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("int64")),
                    "references": datasets.Sequence(datasets.Value("int64")),
                    "categories": datasets.Value("int64"),
                }
            ),
        )

    def _compute(self, predictions, references, categories, category_parts, category_names=None):
        if any(not 0 <= c < len(category_parts) for c in categories):
            raise ValueError(f"`categories` must lie in [0, {len(category_parts)}) (an entry of `category_parts`)")
        ious = [shape_part_iou(p, r, category_parts[c]) for p, r, c in zip(predictions, references, categories)]
        return part_segmentation_scores(ious, categories, category_names)
