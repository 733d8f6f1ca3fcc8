"""Downstream scores against hand-computed values: OA / mAcc, Pointcept's mIoU / mAcc / allAcc, ShapeNetPart class
and instance mIoU (absent parts count 1), and the local evaluate modules giving the same numbers offline."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unipre3d_hf.training import (
    classification_scores,
    confusion_matrix,
    part_segmentation_scores,
    predict_parts,
    segmentation_scores,
    shape_part_iou,
)


def test_classification_scores_hand_computed_from_numpy():
    labels = np.array([0, 0, 0, 1, 2, 2])
    pred = np.array([0, 0, 1, 1, 2, 0])
    scores = classification_scores(pred, labels, num_classes=4)  # class 3 has no sample
    assert scores["accuracy"] == pytest.approx(4 / 6)
    assert scores["mean_class_accuracy"] == pytest.approx((2 / 3 + 1 + 1 / 2) / 3)
    assert scores["acc_per_class"][:3] == pytest.approx([2 / 3, 1.0, 0.5]) and math.isnan(scores["acc_per_class"][3])
    assert scores["confusion_matrix"][0] == [2, 1, 0, 0]
    with pytest.raises(ValueError, match="integer class indices"):
        classification_scores(np.array([0.2]), labels[:1], 4)


def test_segmentation_scores_hand_computed_with_ignore_index():
    labels = torch.tensor([0, 0, 1, 1, 2, -1, -1])
    pred = torch.tensor([0, 1, 1, 1, 0, 2, 0])
    scores = segmentation_scores(confusion_matrix(pred, labels, num_classes=3))
    # IoU: class 0: tp 1 / (2 + 2 - 1); class 1: 2 / (2 + 3 - 2); class 2: 0 / (1 + 0)
    assert scores["iou_per_class"] == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert scores["mIoU"] == pytest.approx(1 / 3)
    assert scores["acc_per_class"] == pytest.approx([0.5, 1.0, 0.0]) and scores["mAcc"] == pytest.approx(0.5)
    assert scores["allAcc"] == pytest.approx(3 / 5)
    empty = segmentation_scores(torch.zeros(2, 2, dtype=torch.long))
    assert math.isnan(empty["mIoU"]) and math.isnan(empty["allAcc"])


def test_part_iou_counts_absent_parts_as_one_and_averages_shapes_and_categories():
    # category A has parts 0, 1, 2; category B has parts 3, 4
    iou_a = shape_part_iou([0, 0, 1, 1], [0, 1, 1, 1], parts=[0, 1, 2])  # 1/2, 2/3, part 2 absent: 1
    assert iou_a == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)
    iou_b1 = shape_part_iou([3, 3, 4], [3, 3, 4], parts=[3, 4])
    iou_b2 = shape_part_iou([3, 3, 3], [4, 4, 4], parts=[3, 4])
    assert (iou_b1, iou_b2) == (1.0, 0.0)
    scores = part_segmentation_scores([iou_a, iou_b1, iou_b2], [0, 1, 1], category_names=["A", "B"])
    assert scores["instance_mIoU"] == pytest.approx((iou_a + 1.0 + 0.0) / 3)
    assert scores["class_mIoU"] == pytest.approx((iou_a + 0.5) / 2)
    assert scores["iou_per_category"] == pytest.approx({"A": iou_a, "B": 0.5})
    with pytest.raises(ValueError, match="one entry per shape"):
        part_segmentation_scores([0.5], [0, 1])


def test_predict_parts_takes_the_argmax_over_the_category_parts_only():
    logits = torch.tensor([[9.0, 1.0, 2.0, 0.0], [9.0, 0.0, 1.0, 3.0]])
    assert predict_parts(logits, [1, 2, 3]).tolist() == [2, 3]
    with pytest.raises(ValueError, match=r"`parts` must be non-empty indices in \[0, 4\)"):
        predict_parts(logits, [4])


def test_local_evaluate_modules_load_offline_and_agree(monkeypatch, tmp_path):
    evaluate = pytest.importorskip("evaluate")
    from unipre3d_hf.metrics import metric_path

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = str(tmp_path)
    cls = evaluate.load(metric_path("point_cloud_classification"), cache_dir=cache)
    out = cls.compute(predictions=[0, 0, 1, 1, 2, 0], references=[0, 0, 0, 1, 2, 2], num_labels=3)
    assert out["accuracy"] == pytest.approx(4 / 6) and out["mean_class_accuracy"] == pytest.approx(13 / 18)

    seg = evaluate.load(metric_path("point_cloud_segmentation"), cache_dir=cache)
    seg.add_batch(predictions=[[0, 1, 1], [1, 0, 2, 0]], references=[[0, 0, 1], [1, 2, -1, -1]])
    out = seg.compute(num_labels=3, ignore_index=-1)
    assert out["iou_per_class"] == pytest.approx([1 / 3, 2 / 3, 0.0]) and out["allAcc"] == pytest.approx(3 / 5)

    part = evaluate.load(metric_path("part_segmentation"), cache_dir=cache)
    out = part.compute(
        predictions=[[0, 0, 1, 1], [3, 3, 4], [3, 3, 3]], references=[[0, 1, 1, 1], [3, 3, 4], [4, 4, 4]],
        categories=[0, 1, 1], category_parts=[[0, 1, 2], [3, 4]],
    )  # fmt: skip
    iou_a = (0.5 + 2 / 3 + 1.0) / 3
    assert out["class_mIoU"] == pytest.approx((iou_a + 0.5) / 2)
    assert out["instance_mIoU"] == pytest.approx((iou_a + 1.0) / 3)
    with pytest.raises(ValueError, match="must be one of"):
        metric_path("bleu")
