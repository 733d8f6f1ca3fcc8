"""PointMLP (Ma et al., ICLR 2022) with the feature-propagation decoder UniPre3D pre-trains (method reference 2.2).

Encoder: point embedding, 4 stages of [FPS + kNN geometric-affine grouping, pre-extraction (transfer conv + residual
blocks + max over neighbours), pos-extraction (residual blocks)]; decoder: 4 PointNet++ feature-propagation layers back
to every input point. Output: one 128-d feature per input point, anchored at the point.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from transformers import initialization as init

from ..configuration.pointmlp import PointMLPConfig
from .layers import (
    ConvBNAct1d,
    FeaturePropagation,
    LocalGrouper,
    PointPreTrainedModel,
    PreExtraction,
    ResidualStack,
    cast_point_inputs,
    check_point_batch,
    init_torch_default,
)
from .outputs import PointBackboneOutput

ObjectFusionHook = Callable[..., torch.Tensor]


def gravity_height(points: torch.Tensor, axis: int) -> torch.Tensor:
    """``[B, N, 1]`` height of every point above its cloud's lowest point along ``axis``."""
    h = points[..., axis : axis + 1]
    return h - h.amin(dim=1, keepdim=True)


def point_inputs(
    points: torch.Tensor, features: torch.Tensor | None, use_height: bool, height_axis: int
) -> torch.Tensor:
    """Per-point input channels ``[B, N, 3 (+1) (+C)]``: xyz, the gravity height if asked, and the extra features."""
    inputs = [points]
    if use_height:
        inputs.append(gravity_height(points, height_axis))
    if features is not None:
        inputs.append(features.to(points.dtype))
    return torch.cat(inputs, dim=-1)


class PointMLPPreTrainedModel(PointPreTrainedModel):
    config_class = PointMLPConfig
    base_model_prefix = "pointmlp"
    main_input_name = "points"
    # checkpointed units: each stage's pre-extraction and pos-extraction, each feature-propagation layer
    supports_gradient_checkpointing = True
    _no_split_modules = ["PreExtraction", "ResidualStack", "FeaturePropagation"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # PointMLP relies on PyTorch's default initialisation; the grouper affine starts at identity (alpha 1, beta 0).
        init_torch_default(module)
        if isinstance(module, LocalGrouper):
            init.ones_(module.affine_alpha)
            init.zeros_(module.affine_beta)


class PointMLPModel(PointMLPPreTrainedModel):
    """PointMLP encoder-decoder: ``points [B, N, 3]`` -> per-point features ``[B, N, 128]``.

    Fusion point: "late" (after the last decoder layer): ``fusion_hook(hidden_states [B, N, H], anchor_points [B, N, 3],
    num_prefix_tokens=0)`` returns the fused ``[B, N, H]``.
    """

    def __init__(self, config: PointMLPConfig):
        super().__init__(config)
        act, bias, rx = "relu", config.bias, config.res_expansion
        self.embedding = ConvBNAct1d(config.in_channels, config.embed_dim, bias, act)
        self.groupers = nn.ModuleList()
        self.pre_extractors = nn.ModuleList()
        self.pos_extractors = nn.ModuleList()
        widths = [config.embed_dim]
        for i in range(config.num_stages):
            c_in, c_out = widths[-1], widths[-1] * config.dim_expansion[i]
            self.groupers.append(
                LocalGrouper(c_in, config.reducers[i], config.k_neighbors[i], config.use_xyz, config.normalize)
            )
            grouped = 2 * c_in + (3 if config.use_xyz else 0)
            self.pre_extractors.append(PreExtraction(grouped, c_out, config.pre_blocks[i], rx, bias, act))
            self.pos_extractors.append(ResidualStack(c_out, config.pos_blocks[i], rx, bias, act))
            widths.append(c_out)
        self.decoder = nn.ModuleList()
        coarse = widths[-1]
        for i, out in enumerate(config.decoder_dims):
            skip = widths[-2 - i]
            self.decoder.append(FeaturePropagation(skip + coarse, out, config.decoder_blocks[i], rx, bias, act))
            coarse = out
        self.post_init()

    def forward(
        self,
        points: torch.Tensor,
        features: torch.Tensor | None = None,
        fusion_hook: ObjectFusionHook | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> PointBackboneOutput | tuple:
        """
        Args:
            points: ``[B, N, 3]`` xyz; N >= ``config.min_points`` (192 by default).
            features: ``[B, N, config.feature_channels]`` extra per-point features, if the config declares any.
            fusion_hook: called after the last decoder layer (see the class docstring).
        Returns:
            ``PointBackboneOutput(last_hidden_state [B, N, 128], anchor_points [B, N, 3] (= points), pooler_output
            [B, 128] (max over points), hidden_states)``; hidden states are the embedding, each encoder stage and each
            decoder layer, channels-last ``[B, N_level, C]``.
        """
        config = self.config
        output_hidden_states = output_hidden_states if output_hidden_states is not None else config.output_hidden_states
        return_dict = return_dict if return_dict is not None else config.return_dict
        check_point_batch(points, features, min_points=config.min_points, feature_channels=config.feature_channels)
        points, features = cast_point_inputs(points, features, self._input_dtype)
        x = point_inputs(points, features, config.use_height, config.height_axis)

        if config.legacy_sampling:
            # The paper code's positions are the 4-channel xyz+height buffer; its FPS kernel read it as B x N x 3
            # floats from the start of the flat buffer (method reference 2.2), and kNN measured all 4 channels.
            xyz = x.contiguous()
        else:
            xyz = points
        h = self.embedding(x.transpose(1, 2))  # [B, C, N]
        xyz_levels, feature_levels = [xyz], [h]
        all_hidden = [h.transpose(1, 2)] if output_hidden_states else None
        for grouper, pre, pos in zip(self.groupers, self.pre_extractors, self.pos_extractors, strict=True):
            fps_xyz = None
            if config.legacy_sampling:
                B, N, _ = xyz.shape
                fps_xyz = xyz.reshape(-1)[: B * N * 3].view(B, N, 3)
            xyz, grouped, _ = grouper(xyz, h.transpose(1, 2), fps_xyz=fps_xyz)
            h = pos(pre(grouped))
            xyz_levels.append(xyz)
            feature_levels.append(h)
            if output_hidden_states:
                all_hidden.append(h.transpose(1, 2))
        for i, layer in enumerate(self.decoder):
            level = len(xyz_levels) - 2 - i
            h = layer(xyz_levels[level], xyz_levels[level + 1], feature_levels[level], h)
            if output_hidden_states:
                all_hidden.append(h.transpose(1, 2))

        hidden = h.transpose(1, 2)  # [B, N, H]
        if fusion_hook is not None:
            hidden = fusion_hook(hidden, anchor_points=points, num_prefix_tokens=0)
        pooled = hidden.amax(dim=1)
        out = PointBackboneOutput(
            last_hidden_state=hidden,
            anchor_points=points,
            pooler_output=pooled,
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
        )
        return out if return_dict else out.to_tuple()


__all__ = ["PointMLPModel", "PointMLPPreTrainedModel"]
