"""Collators for fine-tuning, usable with transformers' ``Trainer`` and with :mod:`unipre3d_hf.training.finetune`.

    >>> from transformers import Trainer, TrainingArguments
    >>> collator = DataCollatorForPointClouds(num_points=1024, sampling="fps")
    >>> Trainer(model, TrainingArguments("out", remove_unused_columns=False), train_dataset=ds,
    ...         data_collator=collator, compute_metrics=build_compute_metrics("classification", num_labels=15))

``remove_unused_columns=False`` keeps the columns the collator reads (``points``, ``parts``, ...) that the model's
``forward`` does not name. Rows are dicts as ``datasets`` gives them (lists or NumPy arrays).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .collators import CorruptSampleError, _BaseCollator
from .transforms import farthest_point_order, normalize_color

__all__ = ["DataCollatorForPackedScenes", "DataCollatorForPointClouds", "build_compute_metrics"]

SAMPLINGS = ("fps", "random", "first")
NORMALIZATIONS = ("unit_sphere", "center", "none")
AUGMENTATIONS = ("none", "scale_translate", "scale_translate_rotate")


def _xyz(row: dict, key: str, sid: str) -> np.ndarray:
    if key not in row:
        raise CorruptSampleError(sid, f"the row has no `{key}` column")
    array = np.asarray(row[key], dtype=np.float32)
    if array.ndim != 2 or array.shape[1] != 3 or len(array) == 0:
        raise CorruptSampleError(sid, f"`{key}` must have shape [N, 3] with N > 0, got {list(array.shape)}")
    if not np.isfinite(array).all():
        raise CorruptSampleError(sid, f"`{key}` holds non-finite values")
    return array


class DataCollatorForPointClouds(_BaseCollator):
    """Object rows -> a fixed-size batch for shape classification or part segmentation.

    Per row: pick ``num_points`` points (``"fps"``: farthest point sampling from point 0 as Point-BERT's
    ``misc.fps``; ``"random"``: a random subset; ``"first"``: the first ones, as Point-BERT's ModelNet loader; a cloud
    with fewer points repeats random points to fill up), normalise (``"unit_sphere"``: centre and scale into the unit
    ball, PointNet++'s ``pc_normalize``; ``"center"``; ``"none"``), augment when ``augment`` is set (Point-BERT's
    ``PointcloudScaleAndTranslate``: per-axis scale in [2/3, 3/2] and shift in [-0.2, 0.2]; ``..._rotate`` adds a
    random rotation about the vertical axis z).

    Returns ``points [B, num_points, 3]`` float32 and ``labels``: ``[B]`` int64 from ``label_column`` (classification)
    or, when ``part_column`` is set, ``[B, num_points]`` int64 part labels and ``category [B]`` int64.

    Random choices use the row's own seed when it comes from :class:`~unipre3d_hf.data.SeededRows` (so a resumed run
    draws the same points), else ``seed``. A row that can't be used raises, or with ``skip_corrupt`` is left out of
    the batch and listed in ``self.skipped`` with its id and reason.
    """

    def __init__(
        self,
        num_points: int = 1024,
        sampling: str = "fps",
        normalize: str = "unit_sphere",
        augment: str = "none",
        label_column: str = "label",
        part_column: str | None = None,
        category_column: str = "category",
        skip_corrupt: bool = False,
        seed: int | None = None,
    ):
        super().__init__(skip_corrupt, seed)
        if num_points < 1:
            raise ValueError(f"`num_points` must be >= 1, got {num_points}")
        for name, value, allowed in (
            ("sampling", sampling, SAMPLINGS),
            ("normalize", normalize, NORMALIZATIONS),
            ("augment", augment, AUGMENTATIONS),
        ):
            if value not in allowed:
                raise ValueError(f"`{name}` must be one of {allowed}, got {value!r}")
        self.num_points, self.sampling, self.normalize, self.augment = num_points, sampling, normalize, augment
        self.label_column, self.part_column, self.category_column = label_column, part_column, category_column

    def _select(self, points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n, k = len(points), min(self.num_points, len(points))
        if self.sampling == "fps":
            idx = farthest_point_order(points, k, start=0)
        elif self.sampling == "first":
            idx = np.arange(k)
        else:
            idx = np.sort(rng.choice(n, size=k, replace=False))
        if k < self.num_points:  # small clouds repeat points
            idx = np.concatenate([idx, rng.choice(n, size=self.num_points - k)])
        return idx

    def _normalize(self, points: np.ndarray) -> np.ndarray:
        if self.normalize == "none":
            return points
        points = points - points.mean(axis=0)
        if self.normalize == "unit_sphere":
            radius = float(np.sqrt((points**2).sum(axis=1)).max())
            points = points / max(radius, 1e-12)
        return points

    def _augment(self, points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.augment == "none":
            return points
        if self.augment == "scale_translate_rotate":
            angle = rng.uniform(0, 2 * np.pi)
            c, s = np.cos(angle), np.sin(angle)
            points = points @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], np.float32).T
        scale = rng.uniform(2 / 3, 3 / 2, size=3)
        shift = rng.uniform(-0.2, 0.2, size=3)
        return points * scale + shift

    def _prepare(self, row: dict, sid: str, rng: np.random.Generator) -> dict:
        xyz = _xyz(row, "points", sid)
        idx = self._select(xyz, rng)
        sample = {"points": self._augment(self._normalize(xyz[idx]), rng).astype(np.float32)}
        if self.part_column is not None:
            if self.part_column not in row or self.category_column not in row:
                raise CorruptSampleError(sid, f"the row needs `{self.part_column}` and `{self.category_column}`")
            parts = np.asarray(row[self.part_column]).reshape(-1)
            if len(parts) != len(xyz):
                raise CorruptSampleError(sid, f"`{self.part_column}` has {len(parts)} labels for {len(xyz)} points")
            sample["labels"] = parts[idx].astype(np.int64)
            sample["category"] = int(np.asarray(row[self.category_column]).reshape(()))
        else:
            if self.label_column not in row:
                raise CorruptSampleError(sid, f"the row has no `{self.label_column}` column")
            sample["labels"] = int(np.asarray(row[self.label_column]).reshape(()))
        return sample

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        samples = self._prepare_all(rows)
        batch = {
            "points": torch.from_numpy(np.stack([s["points"] for s in samples])),
            "labels": torch.as_tensor(np.asarray([s["labels"] for s in samples]), dtype=torch.long),
        }
        if self.part_column is not None:
            batch["category"] = torch.tensor([s["category"] for s in samples], dtype=torch.long)
        return batch


class DataCollatorForPackedScenes(_BaseCollator):
    """Scene rows (``coords``, ``colors``, ``normals``, ``segment``) -> a packed Pointcept-style batch for the scene
    segmentation heads: ``coords [P, 3]`` (centred per scene), ``features [P, 6]`` (normal, colour / 127.5 - 1, as
    the pre-training collator; missing normals are zeros), ``offsets [B]`` cumulative counts, ``labels [P]`` int64
    (-1 unlabelled). ``max_points`` caps each scene (a random subset, ``"random"``, or ``"fps"``); ``augment`` applies
    a random rotation about z, a scale in [0.9, 1.1] and a flip of x (a subset of Pointcept's training transforms).
    With ``instance_column`` (instance segmentation: ``"instance"``), the batch also has ``instance_labels [P]``
    int64, the row's per-point instance ids (local to the scene, -1 for none) taken through the same subset as the
    points; the instance heads compute the instance centres from them and the collated ``coords`` (so the centres
    follow the augmentation), and the backbone voxelises the points itself (every point keeps its own id).
    Seeds and ``skip_corrupt`` as :class:`DataCollatorForPointClouds`.
    """

    def __init__(
        self,
        max_points: int | None = None,
        max_points_method: str = "random",
        augment: bool = False,
        label_column: str = "segment",
        skip_corrupt: bool = False,
        seed: int | None = None,
        instance_column: str | None = None,
    ):
        super().__init__(skip_corrupt, seed)
        if max_points is not None and max_points < 1:
            raise ValueError(f"`max_points` must be >= 1 or None, got {max_points}")
        if max_points_method not in ("random", "fps"):
            raise ValueError(f"`max_points_method` must be 'random' or 'fps', got {max_points_method!r}")
        self.max_points, self.max_points_method, self.augment = max_points, max_points_method, augment
        self.label_column, self.instance_column = label_column, instance_column

    def _prepare(self, row: dict, sid: str, rng: np.random.Generator) -> dict:
        coords = _xyz(row, "coords", sid)
        n = len(coords)
        colors = np.asarray(row.get("colors", np.zeros((0, 3))), dtype=np.float32).reshape(-1, 3)
        normals = np.asarray(row.get("normals", np.zeros((0, 3))), dtype=np.float32).reshape(-1, 3)
        colors = colors if len(colors) else np.zeros((n, 3), np.float32)
        normals = normals if len(normals) else np.zeros((n, 3), np.float32)
        if self.label_column not in row:
            raise CorruptSampleError(sid, f"the row has no `{self.label_column}` column")
        labels = np.asarray(row[self.label_column], dtype=np.int64).reshape(-1)
        checked = [("colors", colors), ("normals", normals), (self.label_column, labels)]
        instance = None
        if self.instance_column is not None:
            if self.instance_column not in row:
                raise CorruptSampleError(sid, f"the row has no `{self.instance_column}` column")
            instance = np.asarray(row[self.instance_column], dtype=np.int64).reshape(-1)
            checked.append((self.instance_column, instance))
        for key, arr in checked:
            if len(arr) != n:
                raise CorruptSampleError(sid, f"`{key}` has {len(arr)} rows for {n} coords")
        if self.max_points is not None and n > self.max_points:
            if self.max_points_method == "fps":
                keep = farthest_point_order(coords, self.max_points)
            else:
                keep = np.sort(rng.choice(n, size=self.max_points, replace=False))
            coords, colors, normals, labels = coords[keep], colors[keep], normals[keep], labels[keep]
            instance = instance[keep] if instance is not None else None
        coords = coords - coords.mean(axis=0)
        if self.augment:
            angle = rng.uniform(0, 2 * np.pi)
            c, s = np.cos(angle), np.sin(angle)
            rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], np.float32)
            if rng.random() < 0.5:
                rot = rot @ np.diag([-1.0, 1.0, 1.0]).astype(np.float32)
            coords = coords @ rot.T * rng.uniform(0.9, 1.1)
            normals = normals @ rot.T
        features = np.concatenate([normals, normalize_color(colors)], axis=1)
        sample = {"coords": coords.astype(np.float32), "features": features.astype(np.float32), "labels": labels}
        if instance is not None:
            sample["instance_labels"] = instance
        return sample

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        samples = self._prepare_all(rows)
        batch = {
            "coords": torch.from_numpy(np.concatenate([s["coords"] for s in samples])),
            "features": torch.from_numpy(np.concatenate([s["features"] for s in samples])),
            "offsets": torch.from_numpy(np.cumsum([len(s["coords"]) for s in samples]).astype(np.int64)),
            "labels": torch.from_numpy(np.concatenate([s["labels"] for s in samples])),
        }
        if self.instance_column is not None:
            batch["instance_labels"] = torch.from_numpy(np.concatenate([s["instance_labels"] for s in samples]))
        return batch


def build_compute_metrics(task: str, num_labels: int, ignore_index: int = -1) -> Callable[[object], dict]:
    """A ``compute_metrics`` for transformers' ``Trainer``.

    ``task="classification"``: ``{"accuracy", "mean_class_accuracy"}`` from logits ``[N, C]`` and labels ``[N]``.
    ``task="segmentation"``: ``{"mIoU", "mAcc", "allAcc"}`` from logits ``[..., C]`` and labels ``[...]``
    (``ignore_index`` and the Trainer's padding value -100 are left out).
    """
    from ..training.metrics import classification_scores, confusion_matrix, segmentation_scores

    if task not in ("classification", "segmentation"):
        raise ValueError(f"`task` must be 'classification' or 'segmentation', got {task!r}")

    def compute_metrics(eval_pred) -> dict[str, float]:
        logits, labels = eval_pred.predictions, eval_pred.label_ids
        logits = logits[0] if isinstance(logits, tuple) else logits
        pred = torch.as_tensor(np.asarray(logits)).argmax(dim=-1)
        labels = torch.as_tensor(np.asarray(labels)).long()
        if task == "classification":
            scores = classification_scores(pred.reshape(-1), labels.reshape(-1), num_labels)
            return {k: scores[k] for k in ("accuracy", "mean_class_accuracy")}
        labels = torch.where(labels == -100, torch.full_like(labels, ignore_index), labels)
        scores = segmentation_scores(confusion_matrix(pred, labels, num_labels, ignore_index))
        return {k: scores[k] for k in ("mIoU", "mAcc", "allAcc")}

    return compute_metrics
