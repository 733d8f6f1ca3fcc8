"""Mamba3D (Han et al., ACM MM 2024) as UniPre3D pre-trains it (method reference section 2.4).

Tokenizer: FPS patch centres, kNN patches, mini-PointNet (no reduce layer), CLS token. Each of the 16 blocks runs
x <- x + DropPath(LNP(LN(x))) (Local Norm Pooling over the k nearest patch centres) and x <- x + DropPath(Mamba(LN(x)))
with the bidirectional channel-flip Mamba ("bimamba v4"); the positional embedding of the centres is re-added at every
block input; there is no FFN. Output: one feature per patch centre, anchored at the centre.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer

from ..configuration.mamba3d import Mamba3DConfig
from ..ops.sampling import farthest_point_sample_pointnet2, gather_points, knn
from .layers import (
    DropPath,
    MambaMixer,
    MiniPointNet,
    PointPreTrainedModel,
    cast_point_inputs,
    check_point_batch,
    group_patches,
    init_point_module,
    linear_rates,
)
from .outputs import PointBackboneOutput


class LocalNormPooling(nn.Module):
    """Mamba3D's LNP block on the patch tokens ``[B, G, C]`` with their centres ``[B, G, 3]``.

    Neighbourhoods (k nearest centres, itself included) are centred on the token, divided by one std (+1e-5),
    concatenated with the token (2C), scaled by a learnable affine, pooled with a softmax-weighted mean over k
    (sum x e^x / sum e^x, per channel), then LayerNorm(2C), Conv1d(2C -> C), SiLU.
    """

    def __init__(self, config: Mamba3DConfig):
        super().__init__()
        C = config.hidden_size
        self.k = config.lnp_k
        self.std_over_batch = config.lnp_std_over_batch
        self.affine_alpha = nn.Parameter(torch.ones(1, 1, 1, 2 * C))
        self.affine_beta = nn.Parameter(torch.zeros(1, 1, 1, 2 * C))
        self.norm = nn.LayerNorm(2 * C, eps=config.layer_norm_eps)
        self.proj = nn.Conv1d(2 * C, C, 1)
        self.act = nn.SiLU()

    def forward(self, tokens: torch.Tensor, neighbours: torch.LongTensor) -> torch.Tensor:
        B, G, C = tokens.shape
        grouped = gather_points(tokens, neighbours)  # [B, G, k, C]
        rel = grouped - tokens.unsqueeze(2)
        if self.std_over_batch:
            std = rel.std().view(1, 1, 1, 1)
        else:
            std = rel.reshape(B, -1).std(dim=-1).view(B, 1, 1, 1)
        x = torch.cat([rel / (std + 1e-5), tokens.unsqueeze(2).expand(-1, -1, self.k, -1)], dim=-1)
        # mul + add, not addcmul: addcmul's backward costs two more multiplications (by its `value`)
        x = self.affine_alpha * x + self.affine_beta
        x = (x * x.softmax(dim=2)).sum(dim=2)  # K_Pool
        # the 1x1 Conv1d as a linear map on the channels-last tokens (one matmul, no transposed copies)
        return self.act(F.linear(self.norm(x), self.proj.weight.squeeze(-1), self.proj.bias))


class Mamba3DBlock(GradientCheckpointingLayer):
    def __init__(self, config: Mamba3DConfig, drop_path: float):
        super().__init__()
        C = config.hidden_size
        self.norm1 = nn.LayerNorm(C, eps=config.layer_norm_eps)
        self.lnp = LocalNormPooling(config)
        self.norm2 = nn.LayerNorm(C, eps=config.layer_norm_eps)
        self.mixer = MambaMixer(
            C,
            d_state=config.d_state,
            d_conv=config.d_conv,
            expand=config.expand,
            dt_rank=config.dt_rank,
            bidirectional="channel_flip" if config.bimamba_type == "v4" else None,
            scan_backend=config.selective_scan_backend,
        )
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, neighbours: torch.LongTensor) -> torch.Tensor:
        """``x [B, 1 + G, C]`` (CLS first), ``neighbours [B, G, k]`` -> ``[B, 1 + G, C]``."""
        y = self.norm1(x)
        # the CLS slot has no neighbourhood: its "LNP output" is its own normalised feature
        local = torch.cat([y[:, :1], self.lnp(y[:, 1:], neighbours)], dim=1)
        x = x + self.drop_path(local)
        return x + self.drop_path(self.mixer(self.norm2(x)))


class Mamba3DPreTrainedModel(PointPreTrainedModel):
    config_class = Mamba3DConfig
    base_model_prefix = "mamba3d"
    main_input_name = "points"
    supports_gradient_checkpointing = True
    _no_split_modules = ["Mamba3DBlock"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # Point-MAE family: truncated normal (0.02) for linear/conv weights, zero biases, norms (1, 0); CLS token and
        # CLS position truncated normal (0.02); the Mamba mixers keep Mamba's own dt / A / D initialisation.
        init_point_module(module, self.config.initializer_range)
        if isinstance(module, MambaMixer):
            module.reset_ssm_parameters()
        elif isinstance(module, LocalNormPooling):
            init.ones_(module.affine_alpha)
            init.zeros_(module.affine_beta)
        elif isinstance(module, Mamba3DModel):
            init.trunc_normal_(module.cls_token, std=self.config.initializer_range)
            init.trunc_normal_(module.cls_pos, std=self.config.initializer_range)


class Mamba3DModel(Mamba3DPreTrainedModel):
    """``points [B, N, 3]`` -> per-patch features ``[B, num_groups, hidden_size]`` at the FPS centres.

    Fusion point: "late" (after the last block, before the final LayerNorm): ``fusion_hook(hidden_states
    [B, 1 + G, H], anchor_points [B, G, 3], num_prefix_tokens=1)`` returns the fused ``[B, 1 + G, H]``.
    """

    def __init__(self, config: Mamba3DConfig):
        super().__init__(config)
        C = config.hidden_size
        self.patch_encoder = MiniPointNet(3 + config.feature_channels, config.encoder_dims)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, C))
        self.cls_pos = nn.Parameter(torch.zeros(1, 1, C))
        self.pos_embed = nn.Sequential(nn.Linear(3, 128), nn.SiLU(), nn.Linear(128, C))
        rates = linear_rates(config.drop_path_rate, config.num_hidden_layers)
        self.blocks = nn.ModuleList(Mamba3DBlock(config, rate) for rate in rates)
        self.norm = nn.LayerNorm(C, eps=config.layer_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def forward(
        self,
        points: torch.Tensor,
        features: torch.Tensor | None = None,
        fusion_hook: Callable[..., torch.Tensor] | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> PointBackboneOutput | tuple:
        """
        Args:
            points: ``[B, N, 3]`` xyz, N >= max(num_groups, group_size).
            features: ``[B, N, config.feature_channels]`` or None.
        Returns:
            ``PointBackboneOutput(last_hidden_state [B, G, H], anchor_points [B, G, 3] (patch centres),
            pooler_output [B, H] (the CLS token), hidden_states)``; hidden states are the block inputs and the final
            output, ``[B, 1 + G, H]`` each.
        """
        config = self.config
        output_hidden_states = output_hidden_states if output_hidden_states is not None else config.output_hidden_states
        return_dict = return_dict if return_dict is not None else config.return_dict
        check_point_batch(points, features, min_points=config.min_points, feature_channels=config.feature_channels)
        points, features = cast_point_inputs(points, features, self._input_dtype)
        if config.legacy_fps:
            centres, patches = _pointnet2_fps_patches(points, features, config.num_groups, config.group_size)
        else:
            centres, patches = group_patches(points, features, config.num_groups, config.group_size, "knn")
        tokens = self.patch_encoder(patches)
        _, neighbours = knn(centres, centres, config.lnp_k)
        B = tokens.shape[0]
        x = torch.cat([self.cls_token.expand(B, -1, -1), tokens], dim=1)
        pos = torch.cat([self.cls_pos.expand(B, -1, -1), self.pos_embed(centres)], dim=1)
        all_hidden = []
        for block in self.blocks:
            if output_hidden_states:
                all_hidden.append(x)
            x = block(x + pos, neighbours)
        if fusion_hook is not None:
            x = fusion_hook(x, anchor_points=centres, num_prefix_tokens=1)
        x = self.norm(x)
        if output_hidden_states:
            all_hidden.append(x)
        anchors = centres
        if config.legacy_cls_pos_anchors:
            anchors = self.cls_pos[:, :, :3].expand(B, centres.shape[1], 3)
        out = PointBackboneOutput(
            last_hidden_state=x[:, 1:],
            anchor_points=anchors,
            pooler_output=x[:, 0],
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
        )
        return out if return_dict else out.to_tuple()


def _pointnet2_fps_patches(points, features, num_groups: int, group_size: int):
    """``group_patches(..., "knn")`` with the centres of pointnet2_ops' FPS kernel (``Mamba3DConfig.legacy_fps``):
    ``(centres [B, G, 3], patches [B, G, K, 3 + C])``."""
    centres = gather_points(points, farthest_point_sample_pointnet2(points, num_groups))
    _, idx = knn(centres, points, group_size)
    patches = gather_points(points, idx) - centres.unsqueeze(2)
    if features is not None:
        patches = torch.cat([patches, gather_points(features, idx)], dim=-1)
    return centres, patches


__all__ = ["Mamba3DModel", "Mamba3DPreTrainedModel"]
