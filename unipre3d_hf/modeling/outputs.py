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
    """

    last_hidden_state: torch.FloatTensor | None = None
    anchor_points: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    batch_index: torch.LongTensor | None = None
    point_to_token: torch.LongTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
