"""Fine-tuning and downstream evaluation on the shared loop (:mod:`unipre3d_hf.training.loop`).

    python scripts/finetune.py --config configs/finetune/demo_objects_cls.yaml --init outputs/demo_objects

Four tasks, each a :class:`~unipre3d_hf.training.loop.TrainingTask`:

- ``classification``: ``<Backbone>ForPointCloudClassification`` on object rows (``points``, an integer or string
  label column); overall accuracy (OA) and mean class accuracy (mAcc), optionally with test-time voting (Point-BERT's
  ``test_vote``: the logits of ``voting`` passes under random scale-and-translate, averaged).
- ``part_segmentation``: ``<Backbone>ForPointCloudSegmentation`` with the object category one-hot fed to the head
  (``segmentation_num_categories``); the prediction of a shape is restricted to its category's parts; class and
  instance mIoU (absent parts count 1).
- ``semantic_segmentation``: packed scenes (``coords``, ``colors``, ``normals``, ``segment``); Pointcept's mIoU,
  mAcc and allAcc with the ignore index.
- ``instance_segmentation``: ``<Backbone>ForPointCloudInstanceSegmentation`` (PointGroup on Sparse UNet / PTv3) on
  packed scenes with ``instance`` ids; trained on the head's cross-entropy + offset L1 + offset direction cosine
  (logged as separate ``train/`` scalars), scored by ScanNet's AP / AP@50 / AP@25 (per class) of the clustered
  instances and the semantic branch's mIoU; ``best/`` keeps the best AP@50.

Modes: ``full`` (from ``init``), ``linear_probe`` (``init``'s backbone frozen: no gradient, BatchNorm in eval mode,
only the head trains), ``scratch`` (``init``'s architecture, or ``backbone_type``, randomly initialised) and
``scratch_linear_probe`` (a probe of randomly initialised features, the baseline of a linear probe). ``init``
is a backbone folder, a Hub id, or a ``scripts/pretrain.py`` output folder (its ``backbone/`` export); the weights load
strictly, and the missing / unexpected keys are printed (and kept in ``init_report.json``).

Outputs in ``output_dir`` besides the loop's checkpoints and ``best/``: ``metrics.json`` (the last evaluation, with
per-class scores), ``per_class.md`` / ``per_class.csv``, ``confusion_matrix.png`` (classification and semantic
segmentation) and ``model/``, the fine-tuned model as a ``save_pretrained`` folder that the Auto classes load.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .arguments import parse_arguments
from .loop import TrainingArguments, TrainingTask, run_training
from .metrics import (
    confusion_matrix,
    part_segmentation_scores,
    predict_parts,
    segmentation_scores,
    shape_part_iou,
)

__all__ = [
    "ClassificationTask",
    "FinetuneArguments",
    "InstanceSegmentationTask",
    "PartSegmentationTask",
    "SemanticSegmentationTask",
    "backbone_config",
    "build_task",
    "main",
    "reduce_scene_matches",
    "resolve_init",
    "save_confusion_png",
]

logger = logging.getLogger("unipre3d_hf.training")
TASKS = ("classification", "part_segmentation", "semantic_segmentation", "instance_segmentation")
MODES = ("full", "linear_probe", "scratch", "scratch_linear_probe")
LOADING_MODES = ("full", "linear_probe")  # the others keep the random initialisation
FROZEN_MODES = ("linear_probe", "scratch_linear_probe")
MINI_SETS = ("objects-mini", "scenes-mini")
BACKBONE_TYPES = ("pointmlp", "point_transformer", "mamba3d", "pcm", "sparse_unet", "ptv3")


@dataclass
class FinetuneArguments(TrainingArguments):
    """A fine-tuning run: the shared loop's fields plus the task, data, initialisation and evaluation. The YAML presets
    in ``configs/finetune/`` set these fields."""

    task: str = "classification"
    # data: "objects-mini" / "scenes-mini" (built under data_root when missing), a folder or a Hub dataset id
    dataset: str = "objects-mini"
    data_root: str = "data"
    train_split: str = "train"
    val_split: str = "validation"
    # default: "label" (classification; objects-mini: "category"), "parts" (part segmentation), "segment" (scenes)
    label_column: str | None = None
    # initialisation: a backbone folder, a Hub id or a pretrain output folder; None with mode "scratch" only
    init: str | None = None
    init_strict: bool = True
    mode: str = "full"
    backbone_type: str | None = None  # scratch without init: one of BACKBONE_TYPES
    backbone: dict = field(
        default_factory=dict
    )  # backbone config overrides (and head settings: classifier_dropout, ...)
    # object rows
    num_points: int = 1024
    point_sampling: str = "fps"
    normalize: str = "unit_sphere"
    augment: str = "scale_translate"  # objects: none | scale_translate | scale_translate_rotate; scenes: none | other
    # scene rows
    max_scene_points: int | None = None
    # evaluation
    val_batch_size: int = 16
    val_samples: int | None = None
    voting: int = 1  # classification: >1 adds vote_accuracy / vote_mean_class_accuracy (Point-BERT uses 10)
    ignore_index: int = -1
    # instance segmentation: class names (case-insensitive) that never form instances, unless
    # `backbone.segment_ignore_index` lists the class indices itself; `ignore_index` is always one of them
    stuff_classes: list = field(default_factory=lambda: ["wall", "floor"])
    instance_min_region_size: int = 100  # smallest evaluated instance, in points (ScanNet's 100)
    # the shared fields with fine-tuning's defaults
    output_dir: str = "outputs/finetune"
    run_name: str = "finetune"
    max_steps: int = 2000
    learning_rate: float = 5e-4
    weight_decay: float = 0.05
    lr_scheduler: str = "cosine"
    max_grad_norm: float | None = 10.0
    eval_every: int = 200
    save_every: int = 200
    eval_at_start: bool = False

    def validate(self) -> None:
        super().validate()

        def one_of(name: str, allowed: Sequence) -> None:
            if getattr(self, name) not in allowed:
                raise ValueError(f"`{name}` must be one of {list(allowed)}, got {getattr(self, name)!r}")

        one_of("task", TASKS)
        one_of("mode", MODES)
        one_of("point_sampling", ("fps", "random", "first"))
        one_of("normalize", ("unit_sphere", "center", "none"))
        one_of("augment", ("none", "scale_translate", "scale_translate_rotate"))
        if self.backbone_type is not None:
            one_of("backbone_type", BACKBONE_TYPES)
        if self.init is None and self.mode in LOADING_MODES:
            raise ValueError(f"`init` is needed for mode {self.mode!r} (the scratch modes run without it)")
        if self.init is None and self.backbone_type is None:
            raise ValueError(f"mode {self.mode!r} without `init` needs `backbone_type` (one of {list(BACKBONE_TYPES)})")
        for name in ("num_points", "val_batch_size", "voting", "instance_min_region_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be an int >= 1, got {getattr(self, name)!r}")
        for name in ("val_samples", "max_scene_points"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be null or an int >= 1, got {getattr(self, name)!r}")
        if self.voting > 1 and self.task != "classification":
            raise ValueError("`voting` > 1 applies to task 'classification' only")


# ------------------------------------------------------------------------------------------------ initialisation
def resolve_init(init: str) -> str:
    """A model folder (``config.json``), a pretrain output folder (its ``backbone/``), else ``init`` as a Hub id."""
    if os.path.isdir(init):
        for candidate in (init, os.path.join(init, "backbone")):
            if os.path.isfile(os.path.join(candidate, "config.json")):
                return candidate
        raise FileNotFoundError(
            f"`init` {init} holds no config.json and no backbone/config.json (a pretrain run exports backbone/ at "
            "its end)"
        )
    return init


# head settings read from the backbone config (see unipre3d_hf.modeling.heads), accepted as `--backbone.<key>` too
HEAD_KEYS = ("classifier_hidden_sizes", "classifier_dropout", "label_smoothing", "problem_type")


def backbone_config(args: FinetuneArguments):
    """The task model's config: ``init``'s (or ``backbone_type``'s defaults) with the ``backbone`` overrides, each
    key checked against the config class (an unknown key is an error with a close match)."""
    import difflib

    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    from .arguments import config_keys

    if args.init is not None:
        config = AutoConfig.from_pretrained(resolve_init(args.init))
    else:
        config = CONFIG_MAPPING[f"unipre3d_{args.backbone_type}"]()
    from ..modeling.heads import INSTANCE_DEFAULTS

    known = config_keys(type(config)) | set(HEAD_KEYS)
    if args.task == "instance_segmentation":
        known |= set(INSTANCE_DEFAULTS)
    for key, value in args.backbone.items():
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"`backbone.{key}` is no field of {type(config).__name__}{hint}")
        setattr(config, key, value)
    return config


def load_backbone_weights(model, init: str, strict: bool = True) -> dict:
    """Loads the backbone of ``init`` into ``model.backbone``; returns ``{"source", "missing", "unexpected"}`` and
    raises ValueError when ``strict`` and a key is missing or unexpected."""
    from transformers import AutoModel

    source = resolve_init(init)
    state = AutoModel.from_pretrained(source).state_dict()
    missing, unexpected = model.backbone.load_state_dict(state, strict=False)
    report = {"source": source, "loaded": len(state), "missing": list(missing), "unexpected": list(unexpected)}
    logger.info(
        "init from %s: %d tensors; missing keys: %s; unexpected keys: %s", source, len(state),
        report["missing"] or "none", report["unexpected"] or "none",
    )  # fmt: skip
    if strict and (missing or unexpected):
        raise ValueError(
            f"the backbone of {source} does not match the model (init_strict): missing {list(missing)[:10]}, "
            f"unexpected {list(unexpected)[:10]}"
        )
    return report


# ---------------------------------------------------------------------------------------------------------- data
def load_split(args: FinetuneArguments, split: str, columns: Sequence[str]):
    """The split as a ``datasets.Dataset`` holding only ``columns`` (those present)."""
    from ..data.schemas import load_split_dataset

    if args.dataset in MINI_SETS:
        from ..data import load_mini_dataset

        load_mini_dataset(args.dataset, root=args.data_root, split=split)  # builds it when missing
        ds = load_split_dataset(os.path.join(args.data_root, args.dataset), split)
    else:
        ds = load_split_dataset(args.dataset, split)
    return ds.select_columns([c for c in columns if c in ds.column_names])


def _label_names(train, val, column: str) -> tuple[list[str], object, object]:
    """Class names of ``column`` and both splits with it as integers (a string column becomes a ClassLabel of its
    sorted values in the training split)."""
    from datasets import ClassLabel, Value

    if column not in train.column_names:
        raise ValueError(f"`label_column` {column!r} is not a column of the data set ({train.column_names})")
    feature = train.features[column]
    inner = getattr(feature, "feature", feature)  # a List(ClassLabel) column (parts, segment)
    if isinstance(inner, ClassLabel):
        return list(inner.names), train, val
    if isinstance(inner, Value) and inner.dtype in ("string", "large_string"):
        names = sorted(set(train[column]))
        unknown = sorted(set(val[column]) - set(names))
        if unknown:
            raise ValueError(f"validation labels {unknown} of `{column}` never occur in the training split")
        label = ClassLabel(names=names)
        return names, train.cast_column(column, label), val.cast_column(column, label)
    top = max(int(np.max(np.asarray(v))) if np.size(v) else -1 for v in train[column])
    return [str(i) for i in range(top + 1)], train, val


# ---------------------------------------------------------------------------------------------------- the tasks
class _FinetuneTask(TrainingTask):
    best_mode = "max"
    columns: tuple[str, ...] = ()
    default_label_column = "label"

    def __init__(self, args: FinetuneArguments) -> None:
        self.args = args
        self.label_column = args.label_column or self._default_label_column(args)
        self._train = self._val = None
        self.init_report: dict | None = None
        backbone_config(args)  # a bad init or backbone key fails here, before the run starts

    def _default_label_column(self, args) -> str:
        return self.default_label_column

    def train_collator(self):
        return self._collator(train=True)

    def batch_size_of(self, batch):  # object tasks: padded [B, N, 3] batches
        return batch["points"].shape[0]

    def _load_data(self) -> None:
        if self._train is not None:
            return
        from ..data import NumpyRows

        args = self.args
        context = self.accelerator.main_process_first() if self.accelerator is not None else _nullcontext()
        with context:  # the main process builds a missing mini set first
            columns = ["id", *self.columns, self.label_column]
            train = load_split(args, args.train_split, columns)
            val = load_split(args, args.val_split, columns)
        self.names, train, val = _label_names(train, val, self.label_column)
        self._setup_labels(train)
        self._train = NumpyRows(train)
        val_rows = NumpyRows(val)
        num_val = len(val_rows) if args.val_samples is None else min(args.val_samples, len(val_rows))
        self._check_validation(val, num_val)  # on every process, so that all of them stop
        rank, world = (0, 1) if self.accelerator is None else (
            self.accelerator.process_index, self.accelerator.num_processes
        )  # fmt: skip
        self._val = [val_rows[i] for i in range(rank, num_val, world)]

    def _setup_labels(self, train) -> None:
        pass

    def _check_validation(self, val, num_val: int) -> None:
        """Checks the first ``num_val`` rows of the validation split (a ``datasets.Dataset``) before the run."""

    @property
    def num_labels(self) -> int:
        self._load_data()
        return len(self.names)

    # -- model
    def _configure(self, config) -> None:
        pass

    def build_model(self):
        args = self.args
        self._load_data()
        config = backbone_config(args)
        config.num_labels = len(self.names)
        config.id2label = dict(enumerate(self.names))
        config.label2id = {name: i for i, name in enumerate(self.names)}
        self._configure(config)
        model = self.auto_class().from_config(config)
        if args.init is not None and args.mode in LOADING_MODES:
            self.init_report = load_backbone_weights(model, args.init, args.init_strict)
        if args.mode in FROZEN_MODES:
            model.backbone.requires_grad_(False)
        return model

    def auto_class(self):
        from ..modeling.auto import AutoModelForPointCloudClassification, AutoModelForPointCloudSegmentation

        return AutoModelForPointCloudSegmentation if self.args.task != "classification" else (
            AutoModelForPointCloudClassification
        )  # fmt: skip

    def parameter_groups(self, model):
        return {"all": [p for p in model.parameters() if p.requires_grad]}

    def set_train_mode(self, model) -> None:
        model.train()
        if self.args.mode in FROZEN_MODES:  # a frozen backbone keeps its BatchNorm statistics and no dropout
            unwrapped = self.accelerator.unwrap_model(model) if self.accelerator is not None else model
            unwrapped.backbone.eval()

    def train_dataset(self):
        self._load_data()
        return self._train

    def training_step(self, model, batch, step):
        out = model(**batch)
        with torch.no_grad():
            return out.loss, self._train_scalars(out, batch)

    def _train_scalars(self, out, batch) -> dict:
        labels = batch["labels"]
        kept = labels != self.args.ignore_index
        correct = (out.logits.argmax(dim=-1) == labels) & kept
        return {"accuracy": correct.sum().float() / kept.sum().clamp(min=1).float()}

    def history_extras(self, model, last_batch):
        return {"init_report": self.init_report} if self.init_report is not None else {}

    def export(self, model, output_dir):
        path = os.path.join(output_dir, "model")
        model.save_pretrained(path)
        if self.init_report is not None:
            _write_json(os.path.join(output_dir, "init_report.json"), self.init_report)
        logger.info("saved the fine-tuned model to %s", path)

    # -- evaluation
    def evaluate(self, model, accelerator, step, output_dir):
        """Scores ``model`` on this process's validation rows (reduced over processes) and writes the outputs on the
        main process. The global RNG is forked: an evaluation (whose backbone may draw random numbers) leaves the
        training's random stream as it was, so a run that evaluates at a step resumes like one that did not."""
        self._load_data()
        devices = [accelerator.device] if accelerator is not None and accelerator.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            return self._evaluate(model, accelerator, step, output_dir)

    def _val_batches(self, collator):
        for start in range(0, len(self._val), self.args.val_batch_size):
            rows = self._val[start : start + self.args.val_batch_size]
            yield collator(rows)

    def _write_outputs(self, output_dir: str, step: int, results: dict, per_class: list[dict], confusion=None):
        _write_json(
            os.path.join(output_dir, "metrics.json"), {"step": step, "metrics": results, "per_class": per_class}
        )
        keys = list(per_class[0]) if per_class else []
        with open(os.path.join(output_dir, "per_class.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(per_class)
        lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        for row in per_class:
            lines.append("| " + " | ".join(_cell(row[k]) for k in keys) + " |")
        with open(os.path.join(output_dir, "per_class.md"), "w") as f:
            f.write(f"Step {step}: " + ", ".join(f"{k} {_cell(v)}" for k, v in results.items()) + "\n\n")
            f.write("\n".join(lines) + "\n")
        if confusion is not None:
            save_confusion_png(os.path.join(output_dir, "confusion_matrix.png"), confusion, self.names)


def _nullcontext():
    import contextlib

    return contextlib.nullcontext()


def _cell(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _write_json(path: str, value) -> None:
    from .tracking import to_json_value

    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(to_json_value(value), f, indent=2)
    os.replace(tmp, path)


def _reduce_sum(accelerator, tensor: torch.Tensor) -> torch.Tensor:
    if accelerator is None or accelerator.num_processes == 1:
        return tensor
    return accelerator.reduce(tensor.to(accelerator.device), "sum").cpu()


class ClassificationTask(_FinetuneTask):
    """Shape classification: OA / mAcc (and with ``voting`` > 1 their voted values); ``best/`` keeps the best OA."""

    best_metric = "accuracy"
    columns = ("points",)

    def _default_label_column(self, args) -> str:
        return "category" if args.dataset == "objects-mini" else "label"

    def _collator(self, train: bool, augment: str | None = None, seed: int | None = None):
        from ..data.finetune_collators import DataCollatorForPointClouds

        args = self.args
        return DataCollatorForPointClouds(
            num_points=args.num_points, sampling=args.point_sampling if train else _eval_sampling(args),
            normalize=args.normalize, augment=augment or (args.augment if train else "none"),
            label_column=self.label_column, skip_corrupt=args.skip_corrupt if train else False,
            seed=seed if seed is not None else (None if train else args.seed),  # evaluation never draws torch's RNG
        )  # fmt: skip

    def _evaluate(self, model, accelerator, step, output_dir):
        device = next(model.parameters()).device
        c = len(self.names)
        confusion, vote_confusion = torch.zeros(c, c, dtype=torch.long), torch.zeros(c, c, dtype=torch.long)
        loss_sum = torch.zeros(2, dtype=torch.float64)
        voters = [self._collator(False, "scale_translate", seed=self.args.seed + v) for v in range(1, self.args.voting)]
        for start in range(0, len(self._val), self.args.val_batch_size):
            rows = self._val[start : start + self.args.val_batch_size]
            batch = {k: v.to(device) for k, v in self._collator(False)(rows).items()}
            out = model(**batch)
            labels = batch["labels"].cpu()
            confusion += confusion_matrix(out.logits.argmax(-1).cpu(), labels, c, ignore_index=-100)
            loss_sum += torch.tensor([out.loss.item() * len(labels), len(labels)], dtype=torch.float64)
            if voters:  # Point-BERT's test_vote: logits of the augmented passes averaged
                logits = out.logits.float()
                for voter in voters:
                    logits = logits + model(voter(rows)["points"].to(device)).logits.float()
                vote_confusion += confusion_matrix((logits / (1 + len(voters))).argmax(-1).cpu(), labels, c, -100)
        confusion, vote_confusion = _reduce_sum(accelerator, confusion), _reduce_sum(accelerator, vote_confusion)
        loss_sum = _reduce_sum(accelerator, loss_sum)
        scores = segmentation_scores(confusion)
        results = {
            "loss": float(loss_sum[0] / loss_sum[1]) if loss_sum[1] > 0 else math.nan,
            "accuracy": scores["allAcc"],
            "mean_class_accuracy": scores["mAcc"],
        }
        if voters:
            vote = segmentation_scores(vote_confusion)
            results.update(vote_accuracy=vote["allAcc"], vote_mean_class_accuracy=vote["mAcc"])
        if accelerator is None or accelerator.is_main_process:
            per_class = [
                {"class": name, "samples": int(confusion[i].sum()), "accuracy": scores["acc_per_class"][i]}
                for i, name in enumerate(self.names)
            ]
            self._write_outputs(output_dir, step, results, per_class, confusion)
        return results


def _eval_sampling(args) -> str:
    return "fps" if args.point_sampling == "random" else args.point_sampling  # deterministic


class PartSegmentationTask(_FinetuneTask):
    """Part segmentation: class and instance mIoU over shapes (prediction restricted to the category's parts);
    ``best/`` keeps the best class mIoU."""

    best_metric = "class_mIoU"
    columns = ("points", "category")
    default_label_column = "parts"

    def _setup_labels(self, train) -> None:
        from datasets import ClassLabel

        from ..data.downstream import SHAPENET_PART_CATEGORIES, SHAPENET_PART_CATEGORY_PARTS

        feature = train.features["category"]
        self.categories = list(feature.names) if isinstance(feature, ClassLabel) else None
        if self.categories == list(SHAPENET_PART_CATEGORIES):
            self.category_parts = [SHAPENET_PART_CATEGORY_PARTS[c] for c in self.categories]
        else:  # another part set: the parts each category shows in the training split
            categories = np.asarray(train["category"])
            num = int(categories.max()) + 1
            self.categories = self.categories or [str(i) for i in range(num)]
            seen: list[set] = [set() for _ in self.categories]
            for category, parts in zip(categories, train[self.label_column]):
                seen[int(category)].update(int(p) for p in parts)
            self.category_parts = [sorted(s) or list(range(len(self.names))) for s in seen]

    def _configure(self, config) -> None:
        config.segmentation_num_categories = len(self.categories)

    def _collator(self, train: bool):
        from ..data.finetune_collators import DataCollatorForPointClouds

        args = self.args
        return DataCollatorForPointClouds(
            num_points=args.num_points, sampling=args.point_sampling if train else _eval_sampling(args),
            normalize=args.normalize, augment=args.augment if train else "none", part_column=self.label_column,
            skip_corrupt=args.skip_corrupt if train else False, seed=None if train else args.seed,
        )  # fmt: skip

    def _evaluate(self, model, accelerator, step, output_dir):
        from accelerate.utils import gather_object

        device = next(model.parameters()).device
        shapes, loss_sum = [], torch.zeros(2, dtype=torch.float64)
        for batch in self._val_batches(self._collator(False)):
            batch = {k: v.to(device) for k, v in batch.items()}
            out = model(**batch)
            loss_sum += torch.tensor([out.loss.item() * len(batch["category"]), len(batch["category"])])
            for logits, labels, category in zip(out.logits, batch["labels"], batch["category"].tolist()):
                parts = self.category_parts[category]
                shapes.append((shape_part_iou(predict_parts(logits, parts).cpu(), labels.cpu(), parts), category))
        if accelerator is not None and accelerator.num_processes > 1:
            shapes = gather_object(shapes)
        loss_sum = _reduce_sum(accelerator, loss_sum)
        scores = part_segmentation_scores([s[0] for s in shapes], [s[1] for s in shapes], self.categories)
        results = {
            "loss": float(loss_sum[0] / loss_sum[1]) if loss_sum[1] > 0 else math.nan,
            "class_mIoU": scores["class_mIoU"],
            "instance_mIoU": scores["instance_mIoU"],
        }
        if accelerator is None or accelerator.is_main_process:
            counts = {name: sum(1 for _, c in shapes if self.categories[c] == name) for name in self.categories}
            per_class = [
                {"category": name, "shapes": counts[name], "mIoU": scores["iou_per_category"].get(name, math.nan)}
                for name in self.categories
            ]
            self._write_outputs(output_dir, step, results, per_class)
        return results


class SemanticSegmentationTask(_FinetuneTask):
    """Scene semantic segmentation on packed scenes: mIoU, mAcc, allAcc with ``ignore_index``; ``best/`` keeps the
    best mIoU."""

    best_metric = "mIoU"
    columns = ("coords", "colors", "normals")
    default_label_column = "segment"
    instance_column: str | None = None

    def _setup_labels(self, train) -> None:
        if self.args.dataset == "scenes-mini":
            from ..data import SCENE_CLASSES

            self.names = list(SCENE_CLASSES)
            return
        card = _card_class_names(self.args)  # integer `segment` columns (SCENE_FEATURES): the names of the card
        if card is not None and all(str(n).isdigit() for n in self.names) and len(card) >= len(self.names):
            self.names = list(card)

    def _collator(self, train: bool):
        from ..data.finetune_collators import DataCollatorForPackedScenes

        args = self.args
        return DataCollatorForPackedScenes(
            max_points=args.max_scene_points, augment=train and args.augment != "none", label_column=self.label_column,
            skip_corrupt=args.skip_corrupt if train else False, seed=None if train else args.seed,
            instance_column=self.instance_column,
        )  # fmt: skip

    def _configure(self, config) -> None:
        config.segmentation_ignore_index = self.args.ignore_index

    def batch_size_of(self, batch):  # packed scenes: one offset per scene
        return batch["offsets"].numel()

    def _evaluate(self, model, accelerator, step, output_dir):
        device = next(model.parameters()).device
        c = len(self.names)
        confusion, loss_sum = torch.zeros(c, c, dtype=torch.long), torch.zeros(2, dtype=torch.float64)
        for batch in self._val_batches(self._collator(False)):
            batch = {k: v.to(device) for k, v in batch.items()}
            out = model(**batch)
            labels = batch["labels"].cpu()
            confusion += confusion_matrix(out.logits.argmax(-1).cpu(), labels, c, self.args.ignore_index)
            kept = int((labels != self.args.ignore_index).sum())
            loss_sum += torch.tensor([out.loss.item() * kept, kept], dtype=torch.float64)
        confusion, loss_sum = _reduce_sum(accelerator, confusion), _reduce_sum(accelerator, loss_sum)
        scores = segmentation_scores(confusion)
        results = {"loss": float(loss_sum[0] / loss_sum[1]) if loss_sum[1] > 0 else math.nan}
        results.update({k: scores[k] for k in ("mIoU", "mAcc", "allAcc")})
        if accelerator is None or accelerator.is_main_process:
            per_class = [
                {"class": name, "points": int(confusion[i].sum()), "IoU": scores["iou_per_class"][i],
                 "accuracy": scores["acc_per_class"][i]}
                for i, name in enumerate(self.names)
            ]  # fmt: skip
            self._write_outputs(output_dir, step, results, per_class, confusion)
        return results


# scene backbones that carry the PointGroup head (modeling.heads.INSTANCE_SEGMENTATION_MODELS)
INSTANCE_BACKBONES = ("unipre3d_sparse_unet", "unipre3d_ptv3")
INSTANCE_LOSSES = ("semantic_loss", "offset_l1_loss", "offset_cosine_loss")


class InstanceSegmentationTask(SemanticSegmentationTask):
    """Scene instance segmentation with PointGroup (Pointcept's ``PG-v1m1``): the semantic segmentation task's data
    and collator plus the rows' ``instance`` ids; trained on the head's three losses; scored by ScanNet's AP over IoU
    0.50:0.90, AP@50 and AP@25 (per class) of the clustered instances of every validation scene, and the semantic
    branch's mIoU / mAcc / allAcc. ``best/`` keeps the best AP@50, Pointcept's ``InsSegEvaluator`` model-selection
    metric (``current_metric_name = "AP50"``); it is also steadier than the 0.50:0.90 mean on a small validation split.

    The "stuff" classes (no instances: no offset loss, never clustered, not evaluated) are ``ignore_index`` and the
    classes named in ``stuff_classes`` (wall and floor: Pointcept's ScanNet20 ``(-1, 0, 1)``, ScanNet200's
    ``(-1, 0, 2)``, the SweetHome3D rooms' ``(-1, 0, 1)``), or the indices of ``backbone.segment_ignore_index`` when
    given. ``backbone.voxel_size`` (the clustering's unit) follows the backbone's ``grid_size`` unless given.

    Distributed evaluation: each process clusters its own scenes and reduces each scene to its AP records (point
    counts and prediction / ground-truth intersections: :func:`~.instance_metrics.instance_scene_matches`); the records
    of all scenes are gathered to every process (``gather_object``) and the AP is computed once over all of them, which
    equals the AP of one process scoring every scene (AP is not a mean of per-process APs).
    """

    best_metric = "AP50"
    columns = ("coords", "colors", "normals", "instance")
    instance_column = "instance"

    def __init__(self, args: FinetuneArguments) -> None:
        super().__init__(args)
        model_type = backbone_config(args).model_type
        if model_type not in INSTANCE_BACKBONES:
            raise ValueError(
                f"task 'instance_segmentation' needs a scene backbone ({', '.join(INSTANCE_BACKBONES)}), got "
                f"{model_type}"
            )

    def auto_class(self):
        from ..modeling.auto import AutoModelForPointCloudInstanceSegmentation

        return AutoModelForPointCloudInstanceSegmentation

    def _setup_labels(self, train) -> None:
        super()._setup_labels(train)
        if self.instance_column not in train.column_names:
            raise ValueError(f"instance segmentation needs an `{self.instance_column}` column ({train.column_names})")
        self.stuff = self._stuff_indices()

    def _stuff_indices(self) -> list[int]:
        """The ``segment_ignore_index`` of the head and the metric (see the class docstring)."""
        args, num = self.args, len(self.names)
        if "segment_ignore_index" in args.backbone:
            stuff = [int(c) for c in args.backbone["segment_ignore_index"]]
            bad = [c for c in stuff if not (c == args.ignore_index or 0 <= c < num)]
            if bad:
                raise ValueError(
                    f"`backbone.segment_ignore_index` {stuff} must hold class indices in [0, {num}) (the data set has "
                    f"{num} classes: {self.names[:8]}{' ...' if num > 8 else ''}) or `ignore_index` {args.ignore_index}"
                    f"; {bad} do not fit"
                )
            return sorted({args.ignore_index, *stuff})
        wanted = {str(n).lower() for n in args.stuff_classes}
        named = [i for i, n in enumerate(self.names) if str(n).lower() in wanted]
        if not named and wanted and all(str(n).isdigit() for n in self.names):
            raise ValueError(
                f"the classes of `{self.label_column}` have no names, so `stuff_classes` {args.stuff_classes} cannot "
                "be found: give the stuff class indices as `backbone.segment_ignore_index` (ScanNet20: [-1, 0, 1])"
            )
        stuff = sorted({args.ignore_index, *named})
        logger.info("stuff classes (no instances): %s", [self.names[i] if i >= 0 else i for i in stuff])
        return stuff

    def _check_validation(self, val, num_val: int) -> None:
        """Validation scenes whose ``instance`` ids are all -1 although they hold points of a "thing" class: the data
        set carries no instance labels (or lost them), and the AP would be meaningless."""
        from ..data import NumpyRows

        if self.instance_column not in val.column_names:
            raise ValueError(f"the `{self.args.val_split}` split has no `{self.instance_column}` column")
        rows = NumpyRows(
            val.select_columns([c for c in ("id", self.instance_column, self.label_column) if c in val.column_names])
        )
        missing = []
        for i in range(num_val):
            row = rows[i]
            instance = np.asarray(row[self.instance_column]).reshape(-1)
            segment = np.asarray(row[self.label_column]).reshape(-1)
            if (instance == -1).all() and (~np.isin(segment, self.stuff)).any():
                missing.append(str(row.get("id", i)))
        if missing:
            raise ValueError(
                f"`{self.instance_column}` is -1 (no instance) at every point of {len(missing)} validation scene(s) "
                f"with thing-class points ({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}): the "
                f"`{self.args.val_split}` split needs instance ids"
            )

    def _configure(self, config) -> None:
        super()._configure(config)
        config.segment_ignore_index = list(self.stuff)
        if "voxel_size" not in self.args.backbone:
            config.voxel_size = float(config.grid_size)

    def _train_scalars(self, out, batch) -> dict:
        scalars = super()._train_scalars(out, batch)
        scalars.update({name: getattr(out, name).detach() for name in INSTANCE_LOSSES})
        return scalars

    def _evaluate(self, model, accelerator, step, output_dir):
        from .instance_metrics import instance_ap_from_matches, instance_scene_matches

        device = next(model.parameters()).device
        args, c = self.args, len(self.names)
        confusion, sums = torch.zeros(c, c, dtype=torch.long), torch.zeros(5, dtype=torch.float64)
        matches = []
        for batch in self._val_batches(self._collator(False)):
            batch = {k: v.to(device) for k, v in batch.items()}
            out = model(**batch, return_instances=True)
            labels, instance = batch["labels"].cpu(), batch["instance_labels"].cpu()
            confusion += confusion_matrix(out.logits.argmax(-1).cpu(), labels, c, args.ignore_index)
            scenes = batch["offsets"].numel()
            losses = [out.loss, *(getattr(out, name) for name in INSTANCE_LOSSES)]
            sums += torch.tensor([float(x) * scenes for x in losses] + [scenes], dtype=torch.float64)
            bounds = [0, *batch["offsets"].tolist()]
            predictions = [
                {"pred_masks": m.cpu(), "pred_scores": s.cpu(), "pred_classes": k.cpu()}
                for m, s, k in zip(out.pred_masks, out.pred_scores, out.pred_classes)
            ]
            references = [{"segment": labels[a:b], "instance": instance[a:b]} for a, b in zip(bounds[:-1], bounds[1:])]
            matches += instance_scene_matches(predictions, references, c, self.stuff, -1, args.instance_min_region_size)
        matches = reduce_scene_matches(accelerator, matches)
        confusion, sums = _reduce_sum(accelerator, confusion), _reduce_sum(accelerator, sums)
        ap = instance_ap_from_matches(matches, c, self.names, self.stuff, args.instance_min_region_size)
        scores = segmentation_scores(confusion)
        n = float(sums[-1])
        results = {name: float(sums[i] / n) if n else math.nan for i, name in enumerate(("loss", *INSTANCE_LOSSES))}
        results.update(AP=ap["map"], AP50=ap["map50"], AP25=ap["map25"])
        results.update({k: scores[k] for k in ("mIoU", "mAcc", "allAcc")})
        if accelerator is None or accelerator.is_main_process:
            per_class = []
            for i, name in enumerate(self.names):
                row = {"class": name, "points": int(confusion[i].sum()), "IoU": scores["iou_per_class"][i]}
                inst = ap["per_class"].get(str(name), {"ap": math.nan, "ap50": math.nan, "ap25": math.nan})
                row.update(AP=inst["ap"], AP50=inst["ap50"], AP25=inst["ap25"], stuff=i in self.stuff)
                per_class.append(row)
            self._write_outputs(output_dir, step, results, per_class, confusion)
        return results


def _card_class_names(args: FinetuneArguments) -> list[str] | None:
    """``class_names`` of a local data set's card (scenes-mini, sweethome3d-rooms: integer ``segment`` columns)."""
    from ..data.schemas import read_card_class_names

    return read_card_class_names(
        os.path.join(args.data_root, args.dataset) if args.dataset in MINI_SETS else args.dataset
    )


def reduce_scene_matches(accelerator, matches: list) -> list:
    """The per-scene AP records of every process (:func:`~.instance_metrics.instance_scene_matches`), concatenated
    in process order on every process; one process: ``matches`` itself."""
    if accelerator is None or accelerator.num_processes == 1:
        return matches
    from accelerate.utils import gather_object

    return gather_object(matches)


TASK_CLASSES = {
    "classification": ClassificationTask,
    "part_segmentation": PartSegmentationTask,
    "semantic_segmentation": SemanticSegmentationTask,
    "instance_segmentation": InstanceSegmentationTask,
}


def build_task(args: FinetuneArguments) -> _FinetuneTask:
    return TASK_CLASSES[args.task](args)


# --------------------------------------------------------------------------------------------- confusion matrix
def save_confusion_png(path: str, confusion, names: Sequence[str]) -> None:
    """A confusion matrix (rows: truth, columns: prediction) as a PNG drawn with PIL: each cell shaded by its share of
    the row (white 0 .. dark blue 1), class names along the rows when there are at most 40 classes."""
    from PIL import Image, ImageDraw, ImageFont

    confusion = np.asarray(confusion, dtype=np.float64)
    c = confusion.shape[0]
    share = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    cell = int(max(4, min(24, 800 // max(c, 1))))
    font = ImageFont.load_default()
    label_width = 8 + 6 * max((len(str(n)) for n in names), default=0) if c <= 40 else 0
    image = Image.new("RGB", (label_width + c * cell + 1, c * cell + 1), "white")
    draw = ImageDraw.Draw(image)
    for i in range(c):
        if label_width:
            draw.text((2, i * cell + max(0, (cell - 10) // 2)), str(names[i]), fill="black", font=font)
        for j in range(c):
            v = share[i, j]
            color = (int(255 * (1 - v)), int(255 * (1 - 0.8 * v)), 255) if v > 0 else (255, 255, 255)
            x0, y0 = label_width + j * cell, i * cell
            draw.rectangle([x0, y0, x0 + cell, y0 + cell], fill=color, outline=(220, 220, 220))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    image.save(path)


# ------------------------------------------------------------------------------------------------------- script
def parse_finetune_arguments(argv: Sequence[str] | None = None) -> FinetuneArguments:
    """:func:`parse_arguments` for :class:`FinetuneArguments` (the ``--backbone.*`` keys are checked against the
    backbone's config class by :func:`backbone_config` when the task is built)."""
    return parse_arguments(FinetuneArguments, argv)


def main(argv: Sequence[str] | None = None) -> dict:
    """Fine-tunes as ``argv`` says (see :class:`FinetuneArguments`); returns the run's history (also in
    ``final.json``). A bad argument exits with a message naming it, before anything runs."""
    import unipre3d_hf  # noqa: F401  (registers the Auto classes)

    try:
        args = parse_finetune_arguments(sys.argv[1:] if argv is None else argv)
        task = build_task(args)
    except (ValueError, OSError) as err:
        raise SystemExit(f"finetune: error: {err}") from None
    return run_training(args, task)
