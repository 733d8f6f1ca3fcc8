"""ModelOutput dataclasses shared by every backbone and head."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput


@dataclass
class PointBackboneOutput(ModelOutput):
    """Output of every point backbone.

    Object backbones (padded batches):
        last_hidden_state: ``[B, T, H]`` one feature per output token: per point (PointMLP, PCM) or per patch centre
            (point Transformer, Mamba3D). Prefix tokens (CLS) are not included.
        anchor_points: ``[B, T, 3]`` xyz of each output token (the input points, or the FPS patch centres).
        pooler_output: ``[B, H]`` a global feature (CLS token, or max-pool over tokens).
    Scene backbones (packed batches, Pointcept style):
        last_hidden_state: ``[T, H]`` one feature per voxel of all scenes, scene after scene.
        anchor_points: ``[T, 3]`` continuous xyz (metres) of each voxel: the mean of its points, or the lifted pixel's
            position for voxels a fusion hook appended.
        batch_index: ``[T]`` (long) scene of each voxel.
        point_to_token: ``[P]`` (long) for every input point, the row of ``last_hidden_state`` of its voxel.
        pooler_output: ``[B, H]`` per-scene max-pool.
    Both:
        hidden_states: tuple of per-stage features when ``output_hidden_states=True``.
        attentions: models with attention (point Transformer), ``output_attentions=True``: one
            ``[B, heads, L, L]`` softmax per block.
    """

    last_hidden_state: torch.FloatTensor | None = None
    anchor_points: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    batch_index: torch.LongTensor | None = None
    point_to_token: torch.LongTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class GaussianPretrainingOutput(ModelOutput):
    """Output of :class:`UniPre3DForGaussianPretraining`.

    Attributes:
        loss: scalar total loss = ``reconstruction_loss + lambda_lpips * lpips_loss`` (when targets were given).
        reconstruction_loss: scalar L2 / L1 / focal-L2 term.
        lpips_loss: scalar LPIPS term (unweighted), or None while LPIPS is off.
        rendered_images: ``[B, V, 3, H, W]`` renders of the supervision views (not clamped).
        target_images: ``[B, V, 3, H, W]`` their ground truth.
        rendered_alphas: ``[B, V, H, W]`` accumulated opacity of the renders.
        gaussians: the predicted :class:`~unipre3d_hf.rendering.Gaussians` (padded ``[B, G, ...]`` with a mask; one
            per backbone output token).
        last_hidden_state: the backbone's output features (``[B, T, H]`` objects, ``[T, H]`` scenes).
    """

    loss: torch.FloatTensor | None = None
    reconstruction_loss: torch.FloatTensor | None = None
    lpips_loss: torch.FloatTensor | None = None
    rendered_images: torch.FloatTensor | None = None
    target_images: torch.FloatTensor | None = None
    rendered_alphas: torch.FloatTensor | None = None
    gaussians: object | None = None
    last_hidden_state: torch.FloatTensor | None = None


@dataclass
class PointCloudClassifierOutput(ModelOutput):
    """Output of the ``<Backbone>ForPointCloudClassification`` models.

    Attributes:
        loss: scalar cross-entropy, when ``labels`` were given.
        logits: ``[B, num_labels]`` class scores (before softmax).
        hidden_states: the backbone's per-stage features when ``output_hidden_states=True``.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class PointCloudSegmenterOutput(ModelOutput):
    """Output of the ``<Backbone>ForPointCloudSegmentation`` models.

    Attributes:
        loss: scalar cross-entropy over the labelled points, when ``labels`` were given.
        logits: per-point class scores, ``[B, N, num_labels]`` (object backbones) or ``[P, num_labels]`` (scene
            backbones, packed like their input).
        hidden_states: the backbone's per-stage features when ``output_hidden_states=True``.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class PointCloudInstanceSegmenterOutput(ModelOutput):
    """Output of the ``<Backbone>ForPointCloudInstanceSegmentation`` models (PointGroup on a scene backbone).

    Attributes:
        loss: scalar ``semantic_loss + offset_l1_loss + offset_cosine_loss`` (Pointcept's equal weights), when
            ``labels`` and ``instance_labels`` were given.
        semantic_loss: cross-entropy over the labelled points.
        offset_l1_loss: mean over the points of an instance of ``|predicted - true shift to the centroid|_1``.
        offset_cosine_loss: mean over the same points of ``-cos(predicted shift, true shift)``.
        logits: ``[P, num_labels]`` per-point class scores (every point the scores of its voxel).
        offset_vectors: ``[P, 3]`` predicted shift (metres) from each point to the centre of its instance.
        pred_masks: one ``[K_b, N_b]`` bool tensor per scene (``N_b`` its input points): the predicted instances,
            when instances were computed (eval mode, or ``return_instances=True``).
        pred_scores: one ``[K_b]`` tensor per scene: mean softmax probability of the instance's class over its voxels.
        pred_classes: one ``[K_b]`` int64 tensor per scene: the class of each instance.
        hidden_states: the backbone's per-stage features when ``output_hidden_states=True``.
    """

    loss: torch.FloatTensor | None = None
    semantic_loss: torch.FloatTensor | None = None
    offset_l1_loss: torch.FloatTensor | None = None
    offset_cosine_loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    offset_vectors: torch.FloatTensor | None = None
    pred_masks: tuple[torch.BoolTensor, ...] | None = None
    pred_scores: tuple[torch.FloatTensor, ...] | None = None
    pred_classes: tuple[torch.LongTensor, ...] | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
