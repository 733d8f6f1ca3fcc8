"""ScanNet-style instance segmentation AP: AP averaged over IoU 0.50:0.05:0.90, AP@50 and AP@25, per class and mean.

Follows ScanNet's official ``BenchmarkScripts/3d_evaluation/evaluate_semantic_instance.py`` as Pointcept ports it
(``pointcept/engines/hooks/evaluator.py``, ``InsSegEvaluator.associate_instances`` / ``evaluate_matches``), rule for
rule:

- **Thresholds.** ``np.append(np.arange(0.5, 0.95, 0.05), 0.25)``: the "0.50:0.95" AP of the official script averages
  the nine thresholds 0.50 ... 0.90 (``arange`` stops before 0.95); a match needs IoU strictly above the threshold.
- **Ground truth.** One instance per instance id of a scene (``instance_ignore_index`` excluded); its class is the
  semantic label of its first point; instances of the ``segment_ignore_index`` classes (Pointcept's ScanNet20:
  unlabelled, wall, floor) are not evaluated. Instances with fewer than ``min_region_size`` (100) points are left out
  of the evaluation: never a false negative, and predictions on them are not false positives.
- **Predictions.** Predictions of an ignored class, or with fewer than ``min_region_size`` points, are dropped.
  Predictions are matched greedily, ground truth by ground truth, in prediction order: a prediction matches a ground
  truth instance of its class when IoU > threshold and it is not already matched; when a second prediction matches
  the same instance, the lower-scored of the two becomes a false positive (so the matching keeps the most confident
  one). An unmatched prediction is a false positive unless more than ``threshold`` of its points are void (points of
  the ignored classes) or belong to the left-out small instances.
- **AP.** Per class, over all scenes: precision / recall at every distinct score, the official step integration
  (``np.convolve(recall, [-0.5, 0, 0.5])``) with a first artificial point (precision 1, recall 0). A class with
  ground truth but no prediction has AP 0; a class without ground truth has AP NaN and is left out of the means.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# IoU thresholds of the official script: 0.50, 0.55, ..., 0.90, then 0.25
OVERLAPS = np.append(np.arange(0.5, 0.95, 0.05), 0.25)


def _array(x, name: str, ndim: int) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim != ndim:
        raise ValueError(f"`{name}` must have {ndim} dimension(s), got shape {list(x.shape)}")
    return x


def _integers(x, name: str, ndim: int) -> np.ndarray:
    x = _array(x, name, ndim)
    if x.size and not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"`{name}` must hold integers (class or instance ids), got dtype {x.dtype}")
    return x.astype(np.int64)


def _associate(prediction: dict, reference: dict, num_classes: int, ignored: set, instance_ignore: int, min_size: int):
    """One scene: ground truth and prediction records, with their intersections (Pointcept's
    ``associate_instances``). Returns ``(gts, preds)``: lists of dicts per class."""
    segment = _integers(reference["segment"], "segment", 1)
    instance = _integers(reference["instance"], "instance", 1)
    if segment.shape != instance.shape:
        raise ValueError(
            f"`segment` {list(segment.shape)} and `instance` {list(instance.shape)} must have one entry per point"
        )
    n = segment.shape[0]
    masks = _array(prediction["pred_masks"], "pred_masks", 2)
    if masks.shape[0] == 0:
        masks = np.zeros((0, n), dtype=bool)
    elif masks.shape[1] != n:
        raise ValueError(
            f"`pred_masks` must have shape [K, {n}] (one row per predicted instance), got {list(masks.shape)}"
        )
    masks = masks != 0
    scores = _array(prediction["pred_scores"], "pred_scores", 1).astype(np.float64)
    classes = _integers(prediction["pred_classes"], "pred_classes", 1)
    if not masks.shape[0] == scores.shape[0] == classes.shape[0]:
        raise ValueError(
            f"`pred_masks` {list(masks.shape)}, `pred_scores` {list(scores.shape)} and `pred_classes` "
            f"{list(classes.shape)} must describe the same K predicted instances"
        )
    if ((classes < 0) | (classes >= num_classes)).any():
        raise ValueError(f"`pred_classes` must lie in [0, {num_classes}), got {np.unique(classes).tolist()}")
    void = np.isin(segment, list(ignored))
    ids, first, counts = np.unique(instance, return_index=True, return_counts=True)
    gt_rows = np.searchsorted(ids, instance)  # column of each point's instance in the intersection table
    gts = {c: [] for c in range(num_classes) if c not in ignored}
    gt_of_id = {}
    for i, (inst, label, count) in enumerate(zip(ids.tolist(), segment[first].tolist(), counts.tolist())):
        if inst == instance_ignore or label in ignored:
            continue
        if not 0 <= label < num_classes:
            raise ValueError(f"`segment` must lie in [0, {num_classes}) or be ignored, got {label}")
        record = {"column": i, "label": label, "count": count, "matched": []}
        gts[label].append(record)
        gt_of_id[i] = record
    preds = {c: [] for c in gts}
    for k in range(masks.shape[0]):
        label = int(classes[k])
        if label in ignored:
            continue
        count = int(masks[k].sum())
        if count < min_size:
            continue
        inter = np.bincount(gt_rows[masks[k]], minlength=ids.shape[0])
        pred = {"score": float(scores[k]), "count": count, "void": int((void & masks[k]).sum()), "matched": []}
        for gt in gts[label]:
            if inter[gt["column"]] > 0:
                pred["matched"].append((gt, int(inter[gt["column"]])))
                gt["matched"].append((pred, int(inter[gt["column"]])))
        preds[label].append(pred)
    return gts, preds


def _average_precision(y_true: np.ndarray, y_score: np.ndarray, hard_false_negatives: int) -> float:
    """The official script's precision-recall integration."""
    order = np.argsort(y_score, kind="stable")
    y_score, y_true = y_score[order], y_true[order]
    cumsum = np.cumsum(y_true)
    _, unique_indices = np.unique(y_score, return_index=True)
    num_examples = len(y_score)
    num_true = cumsum[-1] if len(cumsum) else 0  # ScanNet PR 26: every prediction may be ignored
    precision, recall = np.zeros(len(unique_indices) + 1), np.zeros(len(unique_indices) + 1)
    cumsum = np.append(cumsum, 0)  # cumsum[-1] is the count below the lowest score
    for i, idx in enumerate(unique_indices):
        below = cumsum[idx - 1]
        tp = num_true - below
        fp = num_examples - idx - tp
        precision[i] = tp / (tp + fp)
        recall[i] = tp / (tp + below + hard_false_negatives)
    precision[-1], recall[-1] = 1.0, 0.0  # the first point of the curve is artificial
    steps = np.convolve(np.concatenate([recall[:1], recall, [0.0]]), [-0.5, 0, 0.5], "valid")
    return float(np.dot(precision, steps))


def instance_scene_matches(
    predictions: Sequence[dict],
    references: Sequence[dict],
    num_classes: int,
    segment_ignore_index: Sequence[int] = (-1, 0, 1),
    instance_ignore_index: int = -1,
    min_region_size: int = 100,
) -> list[tuple[dict, dict]]:
    """The per-scene ground truth / prediction records that the AP needs (point counts, void counts, the intersection
    of every prediction with every ground truth instance of its class), one ``(gts, preds)`` pair per scene. They are
    small, picklable and independent across scenes: a distributed evaluation gathers them from every process and
    :func:`instance_ap_from_matches` of the concatenation equals the AP of all scenes on one process (in any scene
    order). Arguments: as :func:`instance_average_precision`."""
    if len(predictions) != len(references):
        raise ValueError(f"`predictions` ({len(predictions)} scenes) and `references` ({len(references)}) differ")
    if num_classes < 1:
        raise ValueError(f"`num_classes` must be >= 1, got {num_classes}")
    ignored = {int(c) for c in segment_ignore_index}
    return [
        _associate(p, r, num_classes, ignored, instance_ignore_index, min_region_size)
        for p, r in zip(predictions, references)
    ]


def instance_average_precision(
    predictions: Sequence[dict],
    references: Sequence[dict],
    num_classes: int,
    class_names: Sequence[str] | None = None,
    segment_ignore_index: Sequence[int] = (-1, 0, 1),
    instance_ignore_index: int = -1,
    min_region_size: int = 100,
) -> dict:
    """ScanNet instance segmentation AP over a set of scenes (rules: see the module docstring).

    Args:
        predictions: one dict per scene: ``pred_masks [K, N]`` (bool or 0/1, one row per predicted instance),
            ``pred_scores [K]`` (confidence), ``pred_classes [K]`` (class ids). NumPy arrays, tensors or lists.
        references: one dict per scene: ``segment [N]`` semantic class ids, ``instance [N]`` instance ids
            (``instance_ignore_index`` for points of no instance).
        num_classes: number of semantic classes (ignored classes included).
        class_names: ``num_classes`` names for the per-class table (default: ``"0"``, ``"1"``, ...).
        segment_ignore_index: classes that are not evaluated and count as void (Pointcept's ScanNet20 setting:
            unlabelled -1, wall 0, floor 1).
        instance_ignore_index: instance id of points in no instance.
        min_region_size: smallest evaluated instance, in points (the official 100).
    Returns:
        ``{"map": AP@[.5:.9], "map50": AP@50, "map25": AP@25, "per_class": {name: {"ap", "ap50", "ap25"}}}``,
        plain floats (NaN for a class without ground truth; the means skip NaN).
    """
    scenes = instance_scene_matches(
        predictions, references, num_classes, segment_ignore_index, instance_ignore_index, min_region_size
    )
    return instance_ap_from_matches(scenes, num_classes, class_names, segment_ignore_index, min_region_size)


def instance_ap_from_matches(
    scenes: Sequence[tuple[dict, dict]],
    num_classes: int,
    class_names: Sequence[str] | None = None,
    segment_ignore_index: Sequence[int] = (-1, 0, 1),
    min_region_size: int = 100,
) -> dict:
    """The AP of :func:`instance_average_precision` from the records of :func:`instance_scene_matches` (the same
    ``num_classes``, ``segment_ignore_index`` and ``min_region_size``)."""
    names = [str(c) for c in range(num_classes)] if class_names is None else [str(c) for c in class_names]
    if len(names) != num_classes:
        raise ValueError(f"`class_names` must have {num_classes} entries, got {len(names)}")
    ignored = {int(c) for c in segment_ignore_index}
    valid = [c for c in range(num_classes) if c not in ignored]
    table = np.full((len(valid), len(OVERLAPS)), np.nan)
    for oi, threshold in enumerate(OVERLAPS):
        visited = set()  # predictions already matched at this threshold (by identity; Pointcept's pred_visited)
        for ci, label in enumerate(valid):
            y_true, y_score, hard_false_negatives, has_gt, has_pred = [], [], 0, False, False
            for gts, preds in scenes:
                kept = [gt for gt in gts[label] if gt["count"] >= min_region_size]
                has_gt |= bool(kept)
                has_pred |= bool(preds[label])
                true, score, match = [1.0] * len(kept), [-np.inf] * len(kept), [False] * len(kept)
                for gi, gt in enumerate(kept):
                    found = False
                    for pred, inter in gt["matched"]:
                        if id(pred) in visited:
                            continue
                        if inter / (gt["count"] + pred["count"] - inter) > threshold:
                            if match[gi]:  # a second match: the lower score is a false positive
                                true.append(0.0)
                                score.append(min(score[gi], pred["score"]))
                                match.append(True)
                                score[gi] = max(score[gi], pred["score"])
                            else:
                                found, match[gi], score[gi] = True, True, pred["score"]
                                visited.add(id(pred))
                    hard_false_negatives += not found
                y_true += [t for t, m in zip(true, match) if m]
                y_score += [s for s, m in zip(score, match) if m]
                for pred in preds[label]:
                    if any(inter / (gt["count"] + pred["count"] - inter) > threshold for gt, inter in pred["matched"]):
                        continue
                    ignored_points = pred["void"] + sum(
                        inter for gt, inter in pred["matched"] if gt["count"] < min_region_size
                    )
                    if ignored_points / pred["count"] <= threshold:
                        y_true.append(0.0)
                        y_score.append(pred["score"])
            if has_gt and has_pred:
                table[ci, oi] = _average_precision(np.array(y_true), np.array(y_score), hard_false_negatives)
            elif has_gt:
                table[ci, oi] = 0.0
    at50, at25 = np.isclose(OVERLAPS, 0.5), np.isclose(OVERLAPS, 0.25)

    def mean(values: np.ndarray) -> float:
        return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")

    return {
        "map": mean(table[:, ~at25]),
        "map50": mean(table[:, at50]),
        "map25": mean(table[:, at25]),
        "per_class": {
            names[label]: {
                "ap": float(np.mean(table[ci, ~at25])),
                "ap50": float(table[ci, at50][0]),
                "ap25": float(table[ci, at25][0]),
            }
            for ci, label in enumerate(valid)
        },
    }


__all__ = ["OVERLAPS", "instance_ap_from_matches", "instance_average_precision", "instance_scene_matches"]
