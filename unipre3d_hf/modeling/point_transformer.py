"""The standard point Transformer of UniPre3D (Point-BERT / Point-MAE style; method reference section 2.3).

Tokenizer: FPS picks ``num_groups`` patch centres, ball query groups ``group_size`` points around each, a mini-PointNet
encodes each patch, a linear layer maps it to the Transformer width. A CLS token is prepended; the centres'
positional embedding is re-added at every block input; 16 pre-norm ViT blocks; final LayerNorm.
Output: one feature per patch centre, anchored at the centre.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer

from ..configuration.point_transformer import PointTransformerConfig
from .layers import (
    DropPath,
    MiniPointNet,
    PointPreTrainedModel,
    cast_point_inputs,
    check_point_batch,
    group_patches,
    init_point_module,
    linear_rates,
)
from .outputs import PointBackboneOutput


class PointTransformerAttention(nn.Module):
    def __init__(self, config: PointTransformerConfig):
        super().__init__()
        self.config = config  # read at call time: `model.set_attn_implementation(...)` may change it
        self.num_heads = config.num_attention_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.qkv_bias)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: torch.Tensor, output_attentions: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x [B, L, C]`` -> (``[B, L, C]``, attention weights ``[B, heads, L, L]`` or None). The weights need the
        eager path (``output_attentions=True`` or ``attn_implementation="eager"``); "sdpa" (default) fuses them away.
        """
        B, L, C = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        weights = None
        if output_attentions or getattr(self.config, "_attn_implementation", None) == "eager":
            weights = torch.softmax((q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5, dim=-1)
            out = weights @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(head_dim)) v
        return self.proj(out.transpose(1, 2).reshape(B, L, C)), weights if output_attentions else None


class PointTransformerBlock(GradientCheckpointingLayer):
    """x <- x + DropPath(Attn(LN(x))); x <- x + DropPath(MLP(LN(x)))."""

    def __init__(self, config: PointTransformerConfig, drop_path: float):
        super().__init__()
        hidden, inner = config.hidden_size, int(config.hidden_size * config.mlp_ratio)
        self.norm1 = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.attn = PointTransformerAttention(config)
        self.norm2 = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.mlp = nn.Sequential(nn.Linear(hidden, inner), nn.GELU(), nn.Linear(inner, hidden))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, output_attentions: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        attended, weights = self.attn(self.norm1(x), output_attentions)
        x = x + self.drop_path(attended)
        return x + self.drop_path(self.mlp(self.norm2(x))), weights


class PointTransformerPreTrainedModel(PointPreTrainedModel):
    config_class = PointTransformerConfig
    base_model_prefix = "point_transformer"
    main_input_name = "points"
    supports_gradient_checkpointing = True
    _no_split_modules = ["PointTransformerBlock"]
    _supports_sdpa = True  # attn_implementation "sdpa" (default) or "eager" (the only one that returns weights)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # Point-BERT: truncated normal (0.02) for linear and conv weights, zero biases, norms (1, 0);
        # CLS token zeros; CLS positional embedding normal with std `initializer_range` (Point-BERT draws it with
        # std 1, method reference 2.3; transformers' convention is that `initializer_range` sets every random init).
        init_point_module(module, self.config.initializer_range)
        if isinstance(module, PointTransformerModel):
            init.zeros_(module.cls_token)
            init.trunc_normal_(module.cls_pos, std=self.config.initializer_range)


class PointTransformerModel(PointTransformerPreTrainedModel):
    """``points [B, N, 3]`` -> per-patch features ``[B, num_groups, hidden_size]`` at the FPS centres.

    Fusion point: "late" (after the last block, before the final LayerNorm): ``fusion_hook(hidden_states
    [B, 1 + G, H], anchor_points [B, G, 3], num_prefix_tokens=1)`` returns the fused ``[B, 1 + G, H]``; the CLS token
    comes first and has no anchor.
    """

    def __init__(self, config: PointTransformerConfig):
        super().__init__(config)
        self.patch_encoder = MiniPointNet(3 + config.feature_channels, config.encoder_dims)
        self.reduce_dim = nn.Linear(config.encoder_dims, config.hidden_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.cls_pos = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, config.hidden_size))
        rates = linear_rates(config.drop_path_rate, config.num_hidden_layers)
        self.blocks = nn.ModuleList(PointTransformerBlock(config, rate) for rate in rates)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def forward(
        self,
        points: torch.Tensor,
        features: torch.Tensor | None = None,
        fusion_hook: Callable[..., torch.Tensor] | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        output_attentions: bool | None = None,
    ) -> PointBackboneOutput | tuple:
        """
        Args:
            points: ``[B, N, 3]`` xyz, N >= ``num_groups``.
            features: ``[B, N, config.feature_channels]`` or None.
        Returns:
            ``PointBackboneOutput(last_hidden_state [B, G, H] (after the final LayerNorm, CLS removed),
            anchor_points [B, G, 3] (patch centres), pooler_output [B, H] (the CLS token), hidden_states)``; hidden
            states are the block inputs and the final output, each ``[B, 1 + G, H]`` with the CLS token first;
            ``attentions`` (``output_attentions=True``): one ``[B, heads, 1 + G, 1 + G]`` softmax per block.
        """
        config = self.config
        output_hidden_states = output_hidden_states if output_hidden_states is not None else config.output_hidden_states
        return_dict = return_dict if return_dict is not None else config.return_dict
        output_attentions = output_attentions if output_attentions is not None else config.output_attentions
        check_point_batch(points, features, min_points=config.min_points, feature_channels=config.feature_channels)
        points, features = cast_point_inputs(points, features, self._input_dtype)
        centres, patches = group_patches(
            points, features, config.num_groups, config.group_size, config.grouper, config.group_radius
        )
        tokens = self.reduce_dim(self.patch_encoder(patches))
        B = tokens.shape[0]
        x = torch.cat([self.cls_token.expand(B, -1, -1), tokens], dim=1)
        pos = torch.cat([self.cls_pos.expand(B, -1, -1), self.pos_embed(centres)], dim=1)
        all_hidden, all_attentions = [], []
        for block in self.blocks:
            if output_hidden_states:
                all_hidden.append(x)
            x, weights = block(x + pos, output_attentions)
            if output_attentions:
                all_attentions.append(weights)
        if fusion_hook is not None:
            x = fusion_hook(x, anchor_points=centres, num_prefix_tokens=1)
        x = self.norm(x)
        if output_hidden_states:
            all_hidden.append(x)
        out = PointBackboneOutput(
            last_hidden_state=x[:, 1:],
            anchor_points=centres,
            pooler_output=x[:, 0],
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
            attentions=tuple(all_attentions) if output_attentions else None,
        )
        return out if return_dict else out.to_tuple()


__all__ = ["PointTransformerModel", "PointTransformerPreTrainedModel"]
