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


def _attention_kwargs(backbone: torch.nn.Module, output_attentions: bool | None) -> dict:
    """``output_attentions`` for the backbone call: passed to a backbone with attention (its forward takes it), an error
    naming the argument for the others (their blocks compute no attention weights)."""
    if not output_attentions:
        return {}
    import inspect

    if "output_attentions" not in inspect.signature(backbone.forward).parameters:
        raise ValueError(f"`output_attentions`: {type(backbone).__name__} has no attention weights to return")
    return {"output_attentions": True}


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
        output_attentions: bool | None = None,
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
        out = self.backbone(
            points, features=features, output_hidden_states=output_hidden_states, return_dict=True,
            **_attention_kwargs(self.backbone, output_attentions),
        )  # fmt: skip
        logits = self.classifier(_global_feature(self.config, out))
        loss = None
        if labels is not None:
            loss = classification_loss(self.config, logits, labels, self.head_config["label_smoothing"])
        output = PointCloudClassifierOutput(
            loss=loss, logits=logits, hidden_states=out.hidden_states, attentions=out.attentions
        )
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
        output_attentions: bool | None = None,
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
            out = self.backbone(
                coords, features, offsets, output_hidden_states=output_hidden_states, return_dict=True,
                **_attention_kwargs(self.backbone, output_attentions),
            )  # fmt: skip
            logits = self.segmenter(out.last_hidden_state)[out.point_to_token]  # [P, num_labels]
        else:
            if points is None:
                raise ValueError("an object backbone needs `points` [B, N, 3]")
            out = self.backbone(
                points, features=features, output_hidden_states=output_hidden_states, return_dict=True,
                **_attention_kwargs(self.backbone, output_attentions),
            )  # fmt: skip
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
        output = PointCloudSegmenterOutput(
            loss=loss, logits=logits, hidden_states=out.hidden_states, attentions=out.attentions
        )
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


# ======================================================================================================================
# Instance segmentation (issue 18): PointGroup on the scene backbones. Appended as one section; its imports are here.
# ======================================================================================================================

from ..ops.clustering import radius_clusters  # noqa: E402
from ..ops.voxelize import offsets_to_batch_index, segment_mean  # noqa: E402
from .outputs import PointCloudInstanceSegmenterOutput  # noqa: E402

# Pointcept's PointGroup for ScanNet20 (configs/scannet/insseg-pointgroup-v1m1-0-spunet-base.py and the defaults of
# pointcept/models/point_group/point_group_v1m1_base.py), field for field
INSTANCE_DEFAULTS = {
    "segment_ignore_index": [-1, 0, 1],  # classes that never form instances: unlabelled, wall, floor
    "instance_ignore_index": -1,
    "cluster_thresh": 1.5,  # ball-query radius, in voxels of the shifted coordinates (1.5 x 0.02 m = 3 cm)
    "cluster_closed_points": 300,  # Pointcept's meanActive (neighbour buffer per point): memory only
    "cluster_propose_points": 100,  # a proposal needs more than this many voxels
    "cluster_min_points": 50,  # a BFS cluster needs at least this many voxels
    "voxel_size": 0.02,  # coordinates are divided by it before clustering
    "cluster_spaces": ["shifted"],  # Pointcept: the shifted space only; PointGroup's paper: ["original", "shifted"]
}
_CLUSTER_SPACES = ("original", "shifted")


def instance_settings(config) -> dict:
    """The PointGroup fields of a scene backbone config, with Pointcept's ScanNet defaults (``INSTANCE_DEFAULTS``).

    - ``segment_ignore_index`` ([-1, 0, 1]): classes without instances ("stuff": ScanNet20's wall and floor, and the
      unlabelled -1). Their points get no offset loss, are never clustered, and predictions of them are dropped.
    - ``instance_ignore_index`` (-1): instance id of points in no instance (no offset loss).
    - ``cluster_thresh`` (1.5), ``voxel_size`` (0.02): two points are neighbours when their coordinates divided by
      ``voxel_size`` are closer than ``cluster_thresh`` (3 cm).
    - ``cluster_min_points`` (50): a connected component of one class is a cluster from this many voxels on;
      ``cluster_propose_points`` (100): a cluster becomes a prediction with more voxels than this.
    - ``cluster_closed_points`` (300): Pointcept's ``meanActive`` neighbour buffer; here it sizes the chunks of the
      radius search (``ops.clustering``) and never changes the result.
    - ``cluster_spaces`` (["shifted"]): the coordinate spaces clustered: ``"shifted"`` (voxel centre + predicted
      offset, as Pointcept's PG-v1m1) and/or ``"original"`` (the voxel centres; PointGroup's dual set, Jiang et al.
      2020, which then rescores with its ScoreNet and NMS: not part of Pointcept's model nor of this one, so the two
      sets' duplicates stay separate predictions).
    """
    s = {key: getattr(config, key, default) for key, default in INSTANCE_DEFAULTS.items()}
    s["segment_ignore_index"] = [int(c) for c in s["segment_ignore_index"]]
    s["cluster_spaces"] = list(s["cluster_spaces"])
    for key in ("cluster_thresh", "voxel_size"):
        if not float(s[key]) > 0:
            raise ValueError(f"`{key}` must be > 0, got {s[key]}")
    for key in ("cluster_closed_points", "cluster_min_points"):
        if int(s[key]) < 1:
            raise ValueError(f"`{key}` must be >= 1, got {s[key]}")
    if int(s["cluster_propose_points"]) < 0:
        raise ValueError(f"`cluster_propose_points` must be >= 0, got {s['cluster_propose_points']}")
    if not s["cluster_spaces"] or any(space not in _CLUSTER_SPACES for space in s["cluster_spaces"]):
        raise ValueError(f"`cluster_spaces` must be a non-empty list of {_CLUSTER_SPACES}, got {s['cluster_spaces']}")
    if all(c in s["segment_ignore_index"] for c in range(config.num_labels)):
        raise ValueError(f"`segment_ignore_index` {s['segment_ignore_index']} leaves no class to form instances")
    return s


def instance_centroids(
    coords: torch.Tensor, instance_labels: torch.Tensor, offsets: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """``[P, 3]`` mean position of the instance of each point (per scene: instance ids are local to a scene), for the
    points where ``valid [P]``; the other rows are 0 (Pointcept's ``InstanceParser`` centroid)."""
    scene = offsets_to_batch_index(offsets, coords.shape[0])
    key = scene * (int(instance_labels.max()) + 2 if instance_labels.numel() else 1) + instance_labels + 1
    key = torch.where(valid, key, torch.full_like(key, -1))
    uniq, inverse = torch.unique(key, return_inverse=True)
    centres = segment_mean(coords.float(), inverse, uniq.numel())
    return torch.where(valid[:, None], centres[inverse], torch.zeros_like(coords, dtype=centres.dtype))


class _PointCloudInstanceSegmentation(_TaskModel):
    """PointGroup (Pointcept's ``PG-v1m1``) on a scene backbone: a semantic head and an offset head per voxel; the
    points of each "thing" class are clustered by their shifted positions into instances."""

    def build_head(self, config) -> None:
        if config.fusion_point != "early":
            raise ValueError(f"instance segmentation needs a scene backbone, got {config.model_type}")
        self.instance_config = instance_settings(config)
        width = config.hidden_size
        self.segmenter = nn.Linear(width, config.num_labels)  # Pointcept's seg_head
        self.bias_head = nn.Sequential(  # Pointcept's bias_head (BatchNorm eps 1e-3, momentum 0.01 as its norm_fn)
            nn.Linear(width, width), nn.BatchNorm1d(width, eps=1e-3, momentum=0.01), nn.ReLU(), nn.Linear(width, 3)
        )

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The backbone's initialisation, plus fresh BatchNorm statistics: ``from_pretrained`` of a backbone
        checkpoint creates the head's buffers empty, and the scene backbones' rule only sets BatchNorm's affine
        weights (without this, the offset head's running variance was uninitialised memory)."""
        super()._init_weights(module)
        if isinstance(module, nn.BatchNorm1d):
            module.reset_running_stats()

    def instance_losses(
        self,
        coords: torch.Tensor,
        offsets: torch.Tensor,
        logits: torch.Tensor,
        offset_vectors: torch.Tensor,
        labels: torch.Tensor,
        instance_labels: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pointcept's three terms: ``(cross-entropy, offset L1, offset direction cosine)``; each is 0 (not NaN) when
        no point counts for it."""
        settings = self.instance_config
        ignore = self.head_config["segmentation_ignore_index"]
        if instance_labels.shape != labels.shape or instance_labels.dtype.is_floating_point:
            raise ValueError(
                f"`instance_labels` must be integer instance ids of shape {list(labels.shape)}, got "
                f"{instance_labels.dtype} {list(instance_labels.shape)}"
            )
        semantic = _cross_entropy(logits, labels, self.head_config["label_smoothing"], ignore)
        labels, instance_labels = labels.to(logits.device).long(), instance_labels.to(logits.device).long()
        if not (labels != ignore).any():  # cross-entropy over no point is NaN
            semantic = logits.sum() * 0.0
        # points of an instance: a valid instance id on a class that has instances (Pointcept's InstanceParser)
        stuff = torch.tensor(settings["segment_ignore_index"], device=labels.device)
        mask = (instance_labels != settings["instance_ignore_index"]) & ~torch.isin(labels, stuff)
        target = instance_centroids(coords, instance_labels, offsets, mask) - coords.float()
        pred = offset_vectors.float()
        weight = mask.float()
        denominator = weight.sum() + 1e-8
        l1 = ((pred - target).abs().sum(-1) * weight).sum() / denominator
        pred_dir = pred / (pred.norm(dim=1, keepdim=True) + 1e-8)
        target_dir = target / (target.norm(dim=1, keepdim=True) + 1e-8)
        cosine = (-(pred_dir * target_dir).sum(-1) * weight).sum() / denominator
        return semantic, l1, cosine

    @torch.no_grad()
    def cluster_instances(self, backbone_out, voxel_logits: torch.Tensor, voxel_offsets: torch.Tensor, offsets):
        """PointGroup's inference on the voxels: the voxels of each predicted "thing" class, in each scene, are
        grouped by radius-graph components in every ``cluster_spaces`` space; a component of
        ``>= cluster_min_points`` voxels with ``> cluster_propose_points`` voxels is an instance, scored by the mean
        probability of its class over its voxels. Returns per-scene ``(masks [K_b, N_b], scores [K_b], classes [K_b])``
        with point masks (every point in the instance of its voxel)."""
        settings = self.instance_config
        num_scenes = offsets.numel()
        probs = voxel_logits.float().softmax(dim=-1)
        classes = probs.argmax(dim=-1)
        stuff = torch.tensor(settings["segment_ignore_index"], device=classes.device)
        things = (~torch.isin(classes, stuff)).nonzero().flatten()
        batch_index = backbone_out.batch_index
        groups = batch_index[things] * self.config.num_labels + classes[things]
        voxel_cluster, cluster_scene, cluster_class, cluster_score = [], [], [], []
        spaces = {"original": backbone_out.anchor_points, "shifted": backbone_out.anchor_points + voxel_offsets}
        for space in settings["cluster_spaces"]:
            position = spaces[space][things].float() / settings["voxel_size"]
            cluster = radius_clusters(
                position, settings["cluster_thresh"], groups, settings["cluster_min_points"],
                settings["cluster_closed_points"],
            )  # fmt: skip
            members = cluster >= 0
            num = int(cluster.max()) + 1 if members.any() else 0
            size = torch.bincount(cluster[members], minlength=num)
            kept = size > settings["cluster_propose_points"]
            rename = torch.cumsum(kept.long(), 0) - 1  # kept clusters keep their order (by smallest voxel)
            keep = members.clone()
            keep[members] = kept[cluster[members]]
            ids = rename[cluster[keep]]
            voxels = things[keep]
            count = int(kept.sum())
            per_voxel = torch.full((voxel_logits.shape[0],), -1, dtype=torch.long, device=classes.device)
            per_voxel[voxels] = ids
            voxel_cluster.append(per_voxel)
            first = torch.full((count,), voxels.numel(), dtype=torch.long, device=classes.device)
            first = first.scatter_reduce(0, ids, torch.arange(voxels.numel(), device=ids.device), "amin")
            cluster_scene.append(batch_index[voxels[first]])
            cluster_class.append(classes[voxels[first]])
            own = probs[voxels, classes[voxels]]
            cluster_score.append(segment_mean(own[:, None], ids, count)[:, 0])
        starts = torch.cat([offsets.new_zeros(1), offsets[:-1]]).tolist()
        results = []
        for b in range(num_scenes):
            masks, scores, labels = [], [], []
            tokens = backbone_out.point_to_token[starts[b] : int(offsets[b])]
            for per_voxel, scene, cls, score in zip(voxel_cluster, cluster_scene, cluster_class, cluster_score):
                mine = (scene == b).nonzero().flatten()
                point_cluster = per_voxel[tokens]
                masks.append(point_cluster[None, :] == mine[:, None])
                scores.append(score[mine])
                labels.append(cls[mine])
            results.append((torch.cat(masks), torch.cat(scores), torch.cat(labels)))
        return results

    def forward(
        self,
        coords: torch.Tensor | None = None,
        features: torch.Tensor | None = None,
        offsets: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        instance_labels: torch.Tensor | None = None,
        points: torch.Tensor | None = None,
        return_instances: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> PointCloudInstanceSegmenterOutput | tuple:
        r"""
        Args:
            coords, features, offsets: packed scenes, ``[P, 3]`` metres, ``[P, C]``, ``[B]`` cumulative counts
                (``points`` is accepted as a synonym of ``coords``).
            labels: optional ``[P]`` semantic class ids (``segmentation_ignore_index`` -1 for unlabelled points).
            instance_labels: optional ``[P]`` instance ids, local to each scene (``instance_ignore_index`` -1 for
                none); with ``labels``, the losses are computed.
            return_instances: cluster into instances (default: in eval mode, as Pointcept).
        Returns:
            ``PointCloudInstanceSegmenterOutput``: losses, ``logits [P, num_labels]``, ``offset_vectors [P, 3]``, and
            per scene ``pred_masks [K_b, N_b]``, ``pred_scores [K_b]``, ``pred_classes [K_b]`` when clustering.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return_instances = (not self.training) if return_instances is None else return_instances
        coords = coords if coords is not None else points
        if coords is None or features is None or offsets is None:
            raise ValueError("instance segmentation needs packed `coords` [P, 3], `features` [P, C] and `offsets` [B]")
        if (labels is None) != (instance_labels is None):
            raise ValueError("the losses need both `labels` [P] and `instance_labels` [P] (or neither)")
        out = self.backbone(coords, features, offsets, output_hidden_states=output_hidden_states, return_dict=True)
        voxel_logits = self.segmenter(out.last_hidden_state)
        voxel_offsets = self.bias_head(out.last_hidden_state)
        logits, offset_vectors = voxel_logits[out.point_to_token], voxel_offsets[out.point_to_token]
        loss = semantic = l1 = cosine = None
        if labels is not None:
            semantic, l1, cosine = self.instance_losses(
                coords, offsets, logits, offset_vectors, labels, instance_labels
            )
            loss = semantic + l1 + cosine
        masks = scores = classes = None
        if return_instances:
            instances = self.cluster_instances(out, voxel_logits.detach(), voxel_offsets.detach(), offsets)
            masks, scores, classes = (tuple(x) for x in zip(*instances))
        output = PointCloudInstanceSegmenterOutput(
            loss=loss, semantic_loss=semantic, offset_l1_loss=l1, offset_cosine_loss=cosine, logits=logits,
            offset_vectors=offset_vectors, pred_masks=masks, pred_scores=scores, pred_classes=classes,
            hidden_states=out.hidden_states,
        )  # fmt: skip
        return output if return_dict else output.to_tuple()


class SparseUNetForPointCloudInstanceSegmentation(_PointCloudInstanceSegmentation, SparseUNetPreTrainedModel):
    backbone_class = SparseUNetModel


class PTv3ForPointCloudInstanceSegmentation(_PointCloudInstanceSegmentation, PTv3PreTrainedModel):
    backbone_class = PTv3Model


INSTANCE_SEGMENTATION_MODELS = (SparseUNetForPointCloudInstanceSegmentation, PTv3ForPointCloudInstanceSegmentation)

__all__ += [
    "INSTANCE_DEFAULTS",
    "INSTANCE_SEGMENTATION_MODELS",
    "PTv3ForPointCloudInstanceSegmentation",
    "SparseUNetForPointCloudInstanceSegmentation",
    "instance_centroids",
    "instance_settings",
]
