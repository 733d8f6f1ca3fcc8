"""Task heads on the six backbones: shape classification (object backbones) and per-point semantic segmentation (all
six), as transformers models that load a (pre-trained) backbone through ``base_model_prefix``.

    >>> from unipre3d_hf import AutoModelForPointCloudClassification
    >>> model = AutoModelForPointCloudClassification.from_pretrained("outputs/demo_objects/backbone", num_labels=12)

loads the backbone saved by ``scripts/pretrain.py`` and adds a freshly initialised classifier (transformers lists the
head's weights as newly initialised). The heads follow the fine-tuning code each backbone is evaluated with (method
reference section 9):

- **Classification.** The global feature is ``[CLS token, max over patch tokens]`` for the backbones with a CLS token
  (point Transformer, Mamba3D: Point-BERT / Point-MAE / Mamba3D's ``cls_head_finetune``) and the max over points for
  PointMLP and PCM (openpoints' ``ClsHead`` on a max-pooled encoder); then an MLP of ``Linear + BatchNorm1d + ReLU +
  Dropout`` per hidden size (256, 256 after a CLS token, as Point-BERT; 512, 256 otherwise, as openpoints) and a final
  ``Linear`` to ``num_labels``.
- **Segmentation.** Scene backbones (Pointcept's ``DefaultSegmentor``): one ``Linear`` from the voxel feature to
  ``num_labels``; every input point takes the logits of its voxel. Object backbones with one token per point
  (PointMLP, PCM): a per-point MLP on the point features. Object backbones with one token per patch (point
  Transformer, Mamba3D): the patch features are interpolated to every point from the 3 nearest patch centres
  (inverse squared distance, PointNet++ feature propagation, as Point-MAE's segmentation model) and concatenated with
  the global feature before the per-point MLP.

Head settings are read from the backbone config when present (transformers' configs keep unknown keyword arguments):
``classifier_hidden_sizes``, ``classifier_dropout`` (0.5), ``label_smoothing`` (0.0) and ``segmentation_ignore_index``
(-1, the datasets' "unlabelled"), ``segmentation_num_categories`` (0; ShapeNetPart: 16, the object category one-hot
that part segmentation feeds to the head, as Point-MAE's ``label_conv``: ``Conv1d(16, 64) + BN + LeakyReLU(0.2)``,
concatenated to every point's feature). ``num_labels`` / ``id2label`` / ``label2id`` are transformers' own fields.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..ops.sampling import three_nn_interpolate
from .mamba3d import Mamba3DModel, Mamba3DPreTrainedModel
from .outputs import PointBackboneOutput, PointCloudClassifierOutput, PointCloudSegmenterOutput
from .pcm import PCMModel, PCMPreTrainedModel
from .point_transformer import PointTransformerModel, PointTransformerPreTrainedModel
from .pointmlp import PointMLPModel, PointMLPPreTrainedModel
from .ptv3 import PTv3Model, PTv3PreTrainedModel
from .sparse_unet import SparseUNetModel, SparseUNetPreTrainedModel

# backbones whose pooler_output is a CLS token (the others max-pool their per-point features)
_CLS_TOKEN_MODELS = ("unipre3d_point_transformer", "unipre3d_mamba3d")


def head_settings(config) -> dict:
    """The head fields of a backbone config, with their defaults (see the module docstring)."""
    has_cls = config.model_type in _CLS_TOKEN_MODELS
    hidden = getattr(config, "classifier_hidden_sizes", None)
    settings = {
        "classifier_hidden_sizes": list(hidden) if hidden is not None else ([256, 256] if has_cls else [512, 256]),
        "classifier_dropout": float(getattr(config, "classifier_dropout", 0.5)),
        "label_smoothing": float(getattr(config, "label_smoothing", 0.0)),
        "segmentation_ignore_index": int(getattr(config, "segmentation_ignore_index", -1)),
        "segmentation_num_categories": int(getattr(config, "segmentation_num_categories", 0)),
    }
    if settings["segmentation_num_categories"] < 0:
        raise ValueError(f"`segmentation_num_categories` must be >= 0, got {settings['segmentation_num_categories']}")
    if not 0.0 <= settings["classifier_dropout"] < 1.0:
        raise ValueError(f"`classifier_dropout` must be in [0, 1), got {settings['classifier_dropout']}")
    if any(int(h) < 1 for h in settings["classifier_hidden_sizes"]):
        raise ValueError(f"`classifier_hidden_sizes` must be positive, got {settings['classifier_hidden_sizes']}")
    if config.num_labels < 1:
        raise ValueError(f"`num_labels` must be >= 1, got {config.num_labels}")
    return settings


class MLPHead(nn.Module):
    """``[N, in_channels]`` -> ``[N, num_labels]``: ``Linear + BatchNorm1d + ReLU + Dropout`` per hidden size, then a
    ``Linear``. BatchNorm normalises over all N rows (samples, or points of every sample)."""

    def __init__(self, in_channels: int, hidden_sizes: list[int], num_labels: int, dropout: float):
        super().__init__()
        layers: list[nn.Module] = []
        for width in hidden_sizes:
            layers += [nn.Linear(in_channels, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Dropout(dropout)]
            in_channels = width
        layers.append(nn.Linear(in_channels, num_labels))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def _global_feature(config, out: PointBackboneOutput) -> torch.Tensor:
    """``[B, H]`` (max-pooling backbones) or ``[B, 2H]`` ([CLS, max over tokens])."""
    if config.model_type in _CLS_TOKEN_MODELS:
        return torch.cat([out.pooler_output, out.last_hidden_state.amax(dim=1)], dim=-1)
    return out.pooler_output


def _global_width(config) -> int:
    return 2 * config.hidden_size if config.model_type in _CLS_TOKEN_MODELS else config.hidden_size


def _cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float, ignore_index: int | None = None
) -> torch.Tensor:
    """Cross-entropy of ``logits [..., num_labels]`` against ``labels [...]`` (class indices, or ``ignore_index``
    for items left out), after checking the labels' shape, dtype and range. When every label is ignored the loss is
    0 with a zero gradient (``F.cross_entropy`` would give 0 / 0 = NaN), as transformers' losses do."""
    shape, num_labels = tuple(logits.shape[:-1]), logits.shape[-1]
    if labels.shape != shape or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(
            f"`labels` must be integer class indices of shape {list(shape)}, got {labels.dtype} {list(labels.shape)}"
        )
    labels = labels.to(logits.device).long()
    kept = labels != ignore_index if ignore_index is not None else torch.ones_like(labels, dtype=torch.bool)
    if (kept & ((labels < 0) | (labels >= num_labels))).any():
        allowed = f"[0, {num_labels})" + (f" or be {ignore_index} (ignored)" if ignore_index is not None else "")
        raise ValueError(f"`labels` must lie in {allowed}, got {labels.unique().tolist()}")
    if not kept.any():
        return logits.float().sum() * 0.0
    return F.cross_entropy(
        logits.flatten(0, -2).float(), labels.flatten(), ignore_index=-100 if ignore_index is None else ignore_index,
        label_smoothing=label_smoothing,
    )  # fmt: skip


PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression")


def classification_loss(config, logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """The loss of ``config.problem_type``, inferred on first use as transformers' ``...ForImageClassification``
    does (``num_labels == 1``: regression; integer labels: single label; else multi label) and stored in the config.

    - ``single_label_classification``: ``labels [B]`` integer class indices; cross-entropy (with label smoothing).
    - ``multi_label_classification``: ``labels [B, num_labels]`` 0/1 (float or int); ``BCEWithLogitsLoss``.
    - ``regression``: ``labels [B]`` (``num_labels == 1``) or ``[B, num_labels]`` floats; ``MSELoss``.
    """
    if config.problem_type is None:
        if config.num_labels == 1:
            config.problem_type = "regression"
        elif not labels.dtype.is_floating_point and labels.dtype != torch.bool and labels.dim() == 1:
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    if config.problem_type not in PROBLEM_TYPES:
        raise ValueError(f"`problem_type` must be one of {PROBLEM_TYPES} or None, got {config.problem_type!r}")
    if config.problem_type == "single_label_classification":
        return _cross_entropy(logits, labels, label_smoothing)
    labels = labels.to(logits.device)
    if config.problem_type == "regression":
        if config.num_labels == 1 and labels.shape == logits.shape[:1]:
            labels = labels[:, None]
        if labels.shape != logits.shape:
            raise ValueError(f"regression `labels` must have shape {list(logits.shape)}, got {list(labels.shape)}")
        return F.mse_loss(logits.float(), labels.float())
    if labels.shape != logits.shape:
        raise ValueError(
            f"multi-label `labels` must have shape {list(logits.shape)} (one 0/1 per class), got {list(labels.shape)}"
        )
    labels = labels.float()
    if ((labels < 0) | (labels > 1)).any():
        raise ValueError("multi-label `labels` must lie in [0, 1]")
    return F.binary_cross_entropy_with_logits(logits.float(), labels)


class _TaskModel:
    """A backbone under its ``base_model_prefix`` (so that a backbone checkpoint loads into it) plus a head. The
    concrete classes set ``backbone_class`` and inherit the backbone's ``PreTrainedModel`` (config class, prefix,
    weight initialisation, which the head gets too); the task classes below add ``build_head``."""

    backbone_class: type

    def __init__(self, config):
        super().__init__(config)
        self.head_config = head_settings(config)
        setattr(self, self.base_model_prefix, self.backbone_class(config))
        self.build_head(config)
        self.post_init()

    @property
    def backbone(self) -> nn.Module:
        return getattr(self, self.base_model_prefix)


class _PointCloudClassification(_TaskModel):
    """Shape classification on an object backbone."""

    def build_head(self, config) -> None:
        self.classifier = MLPHead(
            _global_width(config), self.head_config["classifier_hidden_sizes"], config.num_labels,
            self.head_config["classifier_dropout"],
        )  # fmt: skip

    def forward(
        self,
        points: torch.Tensor,
        features: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> PointCloudClassifierOutput | tuple:
        r"""
        Args:
            points: ``[B, N, 3]`` xyz; features: optional ``[B, N, C]`` (as the backbone takes them).
            labels: optional; by ``config.problem_type`` (see :func:`classification_loss`): ``[B]`` class indices
                in ``[0, num_labels)`` (cross-entropy with ``label_smoothing``), ``[B, num_labels]`` 0/1 targets
                (multi-label, BCE with logits) or float targets (regression, MSE).
        Returns:
            ``PointCloudClassifierOutput(loss, logits [B, num_labels], hidden_states)``.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        out = self.backbone(points, features=features, output_hidden_states=output_hidden_states, return_dict=True)
        logits = self.classifier(_global_feature(self.config, out))
        loss = None
        if labels is not None:
            loss = classification_loss(self.config, logits, labels, self.head_config["label_smoothing"])
        output = PointCloudClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)
        return output if return_dict else output.to_tuple()


class _PointCloudSegmentation(_TaskModel):
    """Per-point semantic segmentation on any backbone."""

    def build_head(self, config) -> None:
        self.is_scene = config.fusion_point == "early"  # the scene backbones voxelize packed clouds
        self.num_categories = 0 if self.is_scene else self.head_config["segmentation_num_categories"]
        self.per_patch = config.model_type in _CLS_TOKEN_MODELS  # one token per patch: interpolate to the points
        if self.is_scene:
            self.segmenter = nn.Linear(config.hidden_size, config.num_labels)  # Pointcept's seg_head
        else:
            width = config.hidden_size + (_global_width(config) if self.per_patch else 0)
            if self.num_categories:
                self.category_embed = nn.Sequential(
                    nn.Linear(self.num_categories, 64, bias=False), nn.BatchNorm1d(64), nn.LeakyReLU(0.2)
                )
                width += 64
            self.segmenter = MLPHead(
                width, self.head_config["classifier_hidden_sizes"][-1:], config.num_labels,
                self.head_config["classifier_dropout"],
            )  # fmt: skip

    def _category_feature(self, category: torch.Tensor | None, per_point: torch.Tensor) -> torch.Tensor:
        """``[B, N, 64]``: the embedded one-hot object category, repeated for every point."""
        b, n = per_point.shape[:2]
        if category is None:
            raise ValueError(f"`category` [B] is required: the head was built with {self.num_categories} categories")
        category = torch.as_tensor(category, device=per_point.device)
        if category.shape != (b,) or category.is_floating_point() or (category < 0).any():
            raise ValueError(f"`category` must be [{b}] integer indices, got {category.dtype} {list(category.shape)}")
        if (category >= self.num_categories).any():
            raise ValueError(f"`category` must lie in [0, {self.num_categories}), got {category.tolist()}")
        one_hot = F.one_hot(category.long(), self.num_categories).to(per_point.dtype)
        return self.category_embed(one_hot)[:, None].expand(b, n, -1)

    def forward(
        self,
        points: torch.Tensor | None = None,
        features: torch.Tensor | None = None,
        offsets: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        coords: torch.Tensor | None = None,
        category: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> PointCloudSegmenterOutput | tuple:
        r"""
        Args:
            points: object backbones, ``[B, N, 3]`` xyz (and optional ``features [B, N, C]``).
            coords, features, offsets: scene backbones, packed ``[P, 3]`` metres, ``[P, C]``, ``[B]`` cumulative
                counts (``points`` is accepted as a synonym of ``coords``).
            labels: optional per-point class indices, ``[B, N]`` (objects) or ``[P]`` (scenes), with
                ``segmentation_ignore_index`` (-1) for unlabelled points; cross-entropy over the labelled points.
            category: ``[B]`` object category indices, required when ``segmentation_num_categories > 0`` (part
                segmentation).
        Returns:
            ``PointCloudSegmenterOutput(loss, logits, hidden_states)``, logits ``[B, N, num_labels]`` (objects) or
            ``[P, num_labels]`` (scenes, every point the logits of its voxel).
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if self.is_scene:
            coords = coords if coords is not None else points
            if coords is None or features is None or offsets is None:
                raise ValueError("a scene backbone needs packed `coords` [P, 3], `features` [P, C] and `offsets` [B]")
            out = self.backbone(coords, features, offsets, output_hidden_states=output_hidden_states, return_dict=True)
            logits = self.segmenter(out.last_hidden_state)[out.point_to_token]  # [P, num_labels]
        else:
            if points is None:
                raise ValueError("an object backbone needs `points` [B, N, 3]")
            out = self.backbone(points, features=features, output_hidden_states=output_hidden_states, return_dict=True)
            per_point = out.last_hidden_state
            if self.per_patch:
                per_point = three_nn_interpolate(points, out.anchor_points, out.last_hidden_state)
                global_feature = _global_feature(self.config, out)[:, None].expand(-1, points.shape[1], -1)
                per_point = torch.cat([per_point, global_feature], dim=-1)
            if self.num_categories:
                per_point = torch.cat([per_point, self._category_feature(category, per_point)], dim=-1)
            logits = self.segmenter(per_point.flatten(0, 1)).unflatten(0, per_point.shape[:2])  # [B, N, num_labels]
        loss = None
        if labels is not None:
            loss = _cross_entropy(
                logits, labels, self.head_config["label_smoothing"], self.head_config["segmentation_ignore_index"]
            )
        output = PointCloudSegmenterOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)
        return output if return_dict else output.to_tuple()


class PointMLPForPointCloudClassification(_PointCloudClassification, PointMLPPreTrainedModel):
    backbone_class = PointMLPModel


class PointTransformerForPointCloudClassification(_PointCloudClassification, PointTransformerPreTrainedModel):
    backbone_class = PointTransformerModel


class Mamba3DForPointCloudClassification(_PointCloudClassification, Mamba3DPreTrainedModel):
    backbone_class = Mamba3DModel


class PCMForPointCloudClassification(_PointCloudClassification, PCMPreTrainedModel):
    backbone_class = PCMModel


class PointMLPForPointCloudSegmentation(_PointCloudSegmentation, PointMLPPreTrainedModel):
    backbone_class = PointMLPModel


class PointTransformerForPointCloudSegmentation(_PointCloudSegmentation, PointTransformerPreTrainedModel):
    backbone_class = PointTransformerModel


class Mamba3DForPointCloudSegmentation(_PointCloudSegmentation, Mamba3DPreTrainedModel):
    backbone_class = Mamba3DModel


class PCMForPointCloudSegmentation(_PointCloudSegmentation, PCMPreTrainedModel):
    backbone_class = PCMModel


class SparseUNetForPointCloudSegmentation(_PointCloudSegmentation, SparseUNetPreTrainedModel):
    backbone_class = SparseUNetModel
    main_input_name = "points"  # forward's first argument (the packed coords; `coords=` is accepted too)


class PTv3ForPointCloudSegmentation(_PointCloudSegmentation, PTv3PreTrainedModel):
    backbone_class = PTv3Model
    main_input_name = "points"  # forward's first argument (the packed coords; `coords=` is accepted too)


CLASSIFICATION_MODELS = (
    PointMLPForPointCloudClassification,
    PointTransformerForPointCloudClassification,
    Mamba3DForPointCloudClassification,
    PCMForPointCloudClassification,
)
SEGMENTATION_MODELS = (
    PointMLPForPointCloudSegmentation,
    PointTransformerForPointCloudSegmentation,
    Mamba3DForPointCloudSegmentation,
    PCMForPointCloudSegmentation,
    SparseUNetForPointCloudSegmentation,
    PTv3ForPointCloudSegmentation,
)

__all__ = [
    "CLASSIFICATION_MODELS",
    "MLPHead",
    "Mamba3DForPointCloudClassification",
    "Mamba3DForPointCloudSegmentation",
    "PCMForPointCloudClassification",
    "PCMForPointCloudSegmentation",
    "PTv3ForPointCloudSegmentation",
    "PointMLPForPointCloudClassification",
    "PointMLPForPointCloudSegmentation",
    "PointTransformerForPointCloudClassification",
    "PointTransformerForPointCloudSegmentation",
    "SEGMENTATION_MODELS",
    "SparseUNetForPointCloudSegmentation",
    "PROBLEM_TYPES",
    "classification_loss",
    "head_settings",
]
