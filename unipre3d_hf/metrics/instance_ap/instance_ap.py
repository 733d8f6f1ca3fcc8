"""ScanNet instance segmentation AP as a local ``evaluate`` metric.

    >>> import evaluate, unipre3d_hf, pathlib
    >>> metric = evaluate.load(str(pathlib.Path(unipre3d_hf.__file__).parent / "metrics" / "instance_ap"))
    >>> metric.add(pred_masks=masks, pred_scores=scores, pred_classes=classes, segment=segment, instance=instance)
    >>> metric.compute(num_classes=20, class_names=names)  # {"map", "map50", "map25", "per_class"}

One ``add`` per scene. The numbers are those of :func:`unipre3d_hf.training.instance_metrics.instance_average_precision`
(the rules of ScanNet's ``evaluate_semantic_instance.py``, described there).
"""

import datasets
import evaluate
import numpy as np

from unipre3d_hf.training.instance_metrics import instance_average_precision

_DESCRIPTION = """ScanNet-style 3D instance segmentation average precision: AP over IoU 0.50:0.05:0.90, AP@50, AP@25,
per class and averaged over the classes with ground truth. Predictions are per-scene binary masks with a confidence
and a class; references are per-point semantic and instance ids."""

_KWARGS_DESCRIPTION = """
Args (one scene per `add`):
    pred_masks: [K, N] booleans, one row per predicted instance.
    pred_scores: [K] confidences.
    pred_classes: [K] class ids.
    segment: [N] semantic class id of every point.
    instance: [N] instance id of every point (instance_ignore_index for none).
compute() keyword arguments: num_classes (required), class_names, segment_ignore_index (default (-1, 0, 1): ScanNet20's
    unlabelled, wall, floor), instance_ignore_index (-1), min_region_size (100).
Returns:
    {"map": float, "map50": float, "map25": float, "per_class": {name: {"ap", "ap50", "ap25"}}}
"""

_CITATION = """@inproceedings{dai2017scannet,
  title={ScanNet: Richly-annotated 3D Reconstructions of Indoor Scenes},
  author={Dai, Angela and Chang, Angel X. and Savva, Manolis and Halber, Maciej and Funkhouser, Thomas and
          Nie{\\ss}ner, Matthias},
  booktitle={CVPR},
  year={2017}
}"""


class InstanceAP(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "pred_masks": datasets.Sequence(datasets.Sequence(datasets.Value("bool"))),
                    "pred_scores": datasets.Sequence(datasets.Value("float64")),
                    "pred_classes": datasets.Sequence(datasets.Value("int64")),
                    "segment": datasets.Sequence(datasets.Value("int64")),
                    "instance": datasets.Sequence(datasets.Value("int64")),
                }
            ),
            reference_urls=["https://github.com/ScanNet/ScanNet/tree/master/BenchmarkScripts/3d_evaluation"],
        )

    def _compute(
        self,
        pred_masks,
        pred_scores,
        pred_classes,
        segment,
        instance,
        num_classes,
        class_names=None,
        segment_ignore_index=(-1, 0, 1),
        instance_ignore_index=-1,
        min_region_size=100,
    ):
        predictions, references = [], []
        for masks, scores, classes, seg, inst in zip(pred_masks, pred_scores, pred_classes, segment, instance):
            n = len(seg)
            masks = np.asarray(masks, dtype=bool).reshape(len(masks), n) if len(masks) else np.zeros((0, n), bool)
            predictions.append({"pred_masks": masks, "pred_scores": np.asarray(scores, dtype=np.float64),
                                "pred_classes": np.asarray(classes, dtype=np.int64)})  # fmt: skip
            references.append(
                {"segment": np.asarray(seg, dtype=np.int64), "instance": np.asarray(inst, dtype=np.int64)}
            )
        return instance_average_precision(
            predictions, references, num_classes, class_names, segment_ignore_index, instance_ignore_index,
            min_region_size,
        )  # fmt: skip
