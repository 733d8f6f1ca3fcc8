"""ScanNet instance AP on hand-built scenes: perfect, IoU just above / below 0.5 and 0.25, split and merged instances,
confident false positives (the official integration), void and small regions, absent classes; tensors and NumPy
agree; the local `evaluate` module gives the same numbers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from unipre3d_hf.training.instance_metrics import OVERLAPS, instance_average_precision

NAMES = ["wall", "floor", "chair", "table"]  # 0 and 1 are "stuff" (segment_ignore_index -1, 0, 1)


class Scene:
    """Points laid out block by block: ``add(label, instance, n)`` returns the slice of the new block."""

    def __init__(self):
        self.segment, self.instance = [], []

    def add(self, label: int, instance: int, n: int) -> slice:
        start = len(self.segment)
        self.segment += [label] * n
        self.instance += [instance] * n
        return slice(start, start + n)

    def reference(self) -> dict:
        return {"segment": np.array(self.segment), "instance": np.array(self.instance)}

    def mask(self, *parts) -> np.ndarray:
        m = np.zeros(len(self.segment), dtype=bool)
        for part in parts:
            m[part] = True
        return m


def predict(*instances) -> dict:
    """``(mask, score, class)`` triples -> a prediction dict."""
    masks = np.stack([m for m, _, _ in instances]) if instances else np.zeros((0, 0), dtype=bool)
    return {
        "pred_masks": masks,
        "pred_scores": np.array([s for _, s, _ in instances], dtype=float),
        "pred_classes": np.array([c for _, _, c in instances], dtype=int),
    }


def ap(scene: Scene, *instances, **kwargs) -> dict:
    return instance_average_precision([predict(*instances)], [scene.reference()], 4, NAMES, **kwargs)


def test_thresholds_are_the_official_ones():
    np.testing.assert_allclose(OVERLAPS, [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.25])


def test_a_perfect_prediction_scores_one_and_stuff_is_not_evaluated():
    s = Scene()
    s.add(0, -1, 300)  # wall, no instance
    s.add(1, 5, 300)  # floor with an instance id: stuff, never evaluated
    chair_a, chair_b, table = s.add(2, 1, 200), s.add(2, 2, 150), s.add(3, 3, 300)
    out = ap(s, (s.mask(chair_a), 0.9, 2), (s.mask(chair_b), 0.3, 2), (s.mask(table), 0.8, 3))
    assert out["map"] == out["map50"] == out["map25"] == 1.0
    assert out["per_class"] == {
        "chair": {"ap": 1.0, "ap50": 1.0, "ap25": 1.0},
        "table": {"ap": 1.0, "ap50": 1.0, "ap25": 1.0},
    }
    # a prediction of a stuff class is dropped, not a false positive
    assert ap(s, (s.mask(chair_a), 0.9, 2), (s.mask(chair_b), 0.3, 2), (s.mask(table), 0.8, 3),
              (s.mask(slice(0, 300)), 1.0, 0))["map"] == 1.0  # fmt: skip


@pytest.mark.parametrize(
    "overlap, ap50, ap25",
    [(134, 1.0, 1.0), (133, 0.0, 1.0), (81, 0.0, 1.0), (80, 0.0, 0.0)],
)
def test_iou_just_above_or_below_a_threshold(overlap, ap50, ap25):
    # a 200-point chair; the prediction has 200 points, `overlap` of them on the chair and the rest on a table
    # (not void, so an unmatched prediction is a false positive): IoU = overlap / (400 - overlap)
    s = Scene()
    chair, table = s.add(2, 1, 200), s.add(3, 2, 400)
    m = s.mask(slice(chair.start, chair.start + overlap), slice(table.start, table.start + 200 - overlap))
    out = ap(s, (m, 0.9, 2))
    iou = overlap / (400 - overlap)
    assert (iou > 0.5) == (ap50 == 1.0) and (iou > 0.25) == (ap25 == 1.0)
    assert out["per_class"]["chair"]["ap50"] == ap50 and out["per_class"]["chair"]["ap25"] == ap25
    # IoU 0.504 clears 0.50 only: 1 of the 9 thresholds of the mean AP
    assert out["per_class"]["chair"]["ap"] == pytest.approx(ap50 / 9)
    assert out["per_class"]["table"]["ap"] == 0.0  # a table without prediction


def test_a_confident_false_positive_costs_what_the_official_integration_says():
    s = Scene()
    chair, table = s.add(2, 1, 200), s.add(3, 2, 300)
    stray = s.mask(table)  # a "chair" on the table: a chair false positive
    # low score: precision is 1 until recall 1, AP 1
    assert ap(s, (s.mask(chair), 0.9, 2), (stray, 0.1, 2))["per_class"]["chair"]["ap50"] == 1.0
    # higher score than the true positive: points (p, r) = (0.5, 1), (0, 0), (1, 0) with step widths 0.5, 0.5, 0
    # (half the recall gap on each side) -> 0.5 * 0.5 = 0.25
    assert ap(s, (s.mask(chair), 0.5, 2), (stray, 0.9, 2))["per_class"]["chair"]["ap50"] == 0.25


def test_split_and_merged_instances():
    s = Scene()
    chair = s.add(2, 1, 200)
    first, second = slice(chair.start, chair.start + 100), slice(chair.start + 100, chair.stop)
    # split in halves: IoU 0.5 each (not > 0.5): no match at 0.5 and above; at 0.25 the first half matches and the
    # second, lower-scored, is a duplicate false positive -> AP25 1 (a low-scored false positive costs nothing)
    out = ap(s, (s.mask(first), 0.8, 2), (s.mask(second), 0.7, 2))
    assert out["per_class"]["chair"] == {"ap": 0.0, "ap50": 0.0, "ap25": 1.0}
    # duplicate with the higher score: the higher one is kept as the match, the lower one is the false positive
    out = ap(s, (s.mask(first), 0.7, 2), (s.mask(second), 0.8, 2))
    assert out["per_class"]["chair"]["ap25"] == 1.0
    # two 150-point chairs merged into one prediction: IoU 0.5 with each; at 0.25 one chair is found and the other
    # is missed (recall 0.5 at precision 1): AP25 = 1 * 0.25 + 1 * 0.25 = 0.5
    s = Scene()
    a, b = s.add(2, 1, 150), s.add(2, 2, 150)
    out = ap(s, (s.mask(a, b), 0.9, 2))
    assert out["per_class"]["chair"] == {"ap": 0.0, "ap50": 0.0, "ap25": 0.5}


def test_void_and_small_regions_are_not_false_positives():
    s = Scene()
    wall, chair, small = s.add(0, -1, 400), s.add(2, 1, 200), s.add(2, 2, 60)
    perfect = (s.mask(chair), 0.5, 2)
    # a confident chair mostly on the wall (void): 160 of 200 points void > threshold -> ignored at 0.25 ... 0.75
    on_wall = s.mask(slice(wall.start, wall.start + 160), slice(chair.start, chair.start + 40))
    out = ap(s, perfect, (on_wall, 0.9, 2))
    assert out["per_class"]["chair"]["ap50"] == 1.0 and out["per_class"]["chair"]["ap25"] == 1.0
    # at 0.8 and above 160 / 200 = 0.8 is not more than the threshold: a false positive, and a confident one
    assert out["per_class"]["chair"]["ap"] == pytest.approx((6 * 1.0 + 3 * 0.25) / 9)
    # a prediction on a ground-truth instance smaller than min_region_size (60 < 100) is not a false positive ...
    small_pred = s.mask(small, slice(chair.start, chair.start + 40))  # 100 points, 60 of them on the small one
    assert ap(s, perfect, (small_pred, 0.9, 2))["per_class"]["chair"]["ap50"] == 1.0
    # ... nor a false negative when missed, and predictions under min_region_size are dropped
    assert ap(s, perfect, (s.mask(small), 0.9, 2))["map"] == 1.0
    assert ap(s, perfect, (s.mask(small), 0.9, 2), min_region_size=50)["per_class"]["chair"]["ap50"] == 1.0
    assert ap(s, perfect, min_region_size=50)["per_class"]["chair"]["ap50"] == pytest.approx(0.5 * 0.5 + 0.5 * 0.5)


def test_absent_classes_and_several_scenes():
    s = Scene()
    chair = s.add(2, 1, 200)
    s.add(0, -1, 200)
    # no table anywhere: NaN, left out of the means; a table predicted without ground truth changes nothing
    out = ap(s, (s.mask(chair), 0.9, 2), (s.mask(chair), 0.2, 3))
    assert math.isnan(out["per_class"]["table"]["ap"]) and out["map"] == out["map25"] == 1.0
    # ground truth but no prediction at all: 0
    assert ap(s)["map"] == 0.0 and ap(s)["per_class"]["chair"]["ap25"] == 0.0
    # no ground truth and no prediction: every mean is NaN
    empty = Scene()
    empty.add(0, -1, 10)
    assert math.isnan(ap(empty)["map"])
    # two scenes pooled: one perfect, one missed chair -> recall 0.5 at precision 1 -> 0.5
    out = instance_average_precision(
        [predict((s.mask(chair), 0.9, 2)), predict()], [s.reference(), s.reference()], 4, NAMES
    )
    assert out["per_class"]["chair"]["ap50"] == 0.5


def test_tensors_and_numpy_agree_and_bad_input_is_named():
    s = Scene()
    chair, table = s.add(2, 1, 200), s.add(3, 2, 300)
    pred = predict((s.mask(chair), 0.9, 2), (s.mask(table, slice(chair.start, chair.start + 150)), 0.6, 3))
    expected = instance_average_precision([pred], [s.reference()], 4, NAMES)
    as_tensors = {k: torch.as_tensor(v) for k, v in pred.items()}
    ref = {k: torch.as_tensor(v) for k, v in s.reference().items()}
    assert instance_average_precision([as_tensors], [ref], 4, NAMES) == expected
    # the table prediction has IoU 300 / 450 = 0.67: a match at 0.50, 0.55, 0.60, 0.65 (4 of 9 thresholds)
    assert expected["per_class"]["table"]["ap50"] == 1.0 and expected["per_class"]["table"]["ap"] == 4 / 9
    with pytest.raises(ValueError, match=r"`pred_masks` must have shape \[K, 500\]"):
        instance_average_precision([{**pred, "pred_masks": pred["pred_masks"][:, :10]}], [s.reference()], 4)
    with pytest.raises(ValueError, match=r"`pred_classes` must lie in \[0, 4\)"):
        instance_average_precision([{**pred, "pred_classes": np.array([2, 7])}], [s.reference()], 4)
    with pytest.raises(ValueError, match="must describe the same K predicted instances"):
        instance_average_precision([{**pred, "pred_scores": np.array([0.5])}], [s.reference()], 4)
    with pytest.raises(ValueError, match="`segment` must hold integers"):
        instance_average_precision([pred], [{**s.reference(), "segment": np.zeros(500)}], 4)


def test_the_local_evaluate_module_matches_the_function():
    evaluate = pytest.importorskip("evaluate")
    import unipre3d_hf

    path = Path(unipre3d_hf.__file__).parent / "metrics" / "instance_ap"
    metric = evaluate.load(str(path))
    s = Scene()
    chair, table = s.add(2, 1, 200), s.add(3, 2, 300)
    scenes = [
        predict((s.mask(chair), 0.9, 2), (s.mask(table), 0.4, 2)),
        predict((s.mask(slice(chair.start, chair.start + 120), table), 0.7, 3)),
    ]
    for pred in scenes:
        metric.add(**pred, **s.reference())
    got = metric.compute(num_classes=4, class_names=NAMES)
    assert got == instance_average_precision(scenes, [s.reference()] * 2, 4, NAMES)
