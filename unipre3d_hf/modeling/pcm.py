"""Point Cloud Mamba (Zhang et al. 2024, "Point Cloud Mamba: Point Cloud Learning via State Space Model") as UniPre3D
pre-trains it (method reference section 2.5).

Encoder: PointMLP-style stages (FPS with sorted indices + kNN geometric-affine grouping with relative xyz, one
pre-extraction block) each followed by Mamba layers. Before every Mamba layer the points are re-serialized in that
layer's order (axis-priority orders, Hilbert, z-order), a per-stage projection of xyz is added, and the layer's learned
order prompts are prepended and appended (then stripped). Layers are "add -> RMSNorm -> Mamba" with a residual stream
that runs through the whole encoder. Decoder: feature propagation back to every point; then the segmentation head
(Conv+BN+ReLU, dropout, Conv to 128) that UniPre3D keeps in the backbone.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer

from ..configuration.pcm import PCMConfig
from ..ops.sampling import gather_points
from ..ops.serialization import serialize, serialize_pcm_legacy
from .layers import (
    ConvBNAct1d,
    DropPath,
    FeaturePropagation,
    LocalGrouper,
    MambaMixer,
    PointPreTrainedModel,
    PreExtraction,
    cast_point_inputs,
    check_point_batch,
    init_torch_default,
    linear_rates,
)
from .outputs import PointBackboneOutput
from .pointmlp import point_inputs

_AXES = {"x": 0, "y": 1, "z": 2}


def serialization_order(
    points: torch.Tensor, order: str, grid_size: float, check_range: bool = True
) -> torch.LongTensor:
    """Permutation ``[B, S]`` that sorts each cloud of ``points [B, S, 3]`` along ``order``.

    Codes are computed per cloud on the grid ``floor(p / grid_size) - min`` (so a cloud's order does not depend on its
    batch mates): "xyz"-style orders sort by the first axis, then the second, then the third; "z", "z-trans",
    "hilbert", "hilbert-trans" are the space-filling curves of ``unipre3d_hf.ops.serialization``. Stable for ties.
    The grid is >= 0 by construction; ``check_range`` checks its top (< 2^16, one host sync) for the curves: False
    where the caller has bounded the clouds' extent (``PCMModel.forward``, once for all its orders).
    """
    B, S, _ = points.shape
    grid = torch.floor(points.detach() / grid_size).long()
    grid = grid - grid.amin(dim=1, keepdim=True)
    if order in ("z", "z-trans", "hilbert", "hilbert-trans"):
        flat = grid.reshape(B * S, 3)
        batch = torch.arange(B, device=points.device).repeat_interleave(S)
        codes = serialize(flat, batch, order, check_range=check_range).view(B, S)
    else:
        a, b, c = (grid[..., _AXES[axis]] for axis in order)
        codes = (a << 42) | (b << 21) | c
    return torch.argsort(codes, dim=1, stable=True)


def legacy_serialization_order(points: torch.Tensor, order: str, grid_size: float) -> torch.LongTensor:
    """UniPre3D's PCM serialization (``PCMConfig.legacy_axis_orders``): the permutation ``[B * S]`` of the flattened
    batch ``points [B, S, 3]`` that sorts the codes of ``serialize_pcm_legacy`` (batch-wide maxima and depth; stable
    for ties, where the original's GPU argsort is not). As in the original, the result is applied to the flattened
    batch and reshaped to ``[B, S]``; the codes keep the samples apart except in degenerate batches."""
    B, S, _ = points.shape
    grid = torch.floor(points.detach() / grid_size).long()
    grid = grid - grid.amin(dim=1, keepdim=True)
    batch = torch.arange(B, device=points.device).repeat_interleave(S)
    return torch.argsort(serialize_pcm_legacy(grid.reshape(B * S, 3), batch, order), stable=True)


def _take_flat(x: torch.Tensor, perm: torch.LongTensor) -> torch.Tensor:
    return x.flatten(0, 1)[perm].view_as(x)


class PCMMambaLayer(GradientCheckpointingLayer):
    """mamba-ssm's ``Block`` with fused add + norm: residual <- residual + DropPath(hidden) (or hidden, for the first
    layer), kept in float32; hidden <- Mamba(RMSNorm(residual)). Returns ``(hidden, residual)``."""

    def __init__(self, config: PCMConfig, channels: int, drop_path: float):
        super().__init__()
        self.norm = nn.RMSNorm(channels, eps=config.rms_norm_eps)
        self.mixer = MambaMixer(
            channels,
            d_state=config.d_state,
            d_conv=config.d_conv,
            expand=config.expand,
            dt_rank=config.dt_rank,
            bidirectional="channel_flip" if config.bidirectional else None,
            scan_backend=config.selective_scan_backend,
        )
        self.drop_path = DropPath(drop_path)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        residual = hidden if residual is None else residual + self.drop_path(hidden)
        residual = residual.float()
        return self.mixer(self.norm(residual.to(self.norm.weight.dtype))), residual


class PCMPreTrainedModel(PointPreTrainedModel):
    config_class = PCMConfig
    base_model_prefix = "pcm"
    main_input_name = "points"
    supports_gradient_checkpointing = True
    _no_split_modules = ["PCMMambaLayer"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # openpoints + mamba-ssm: PyTorch defaults for convolutions and linear weights, zero linear biases, prompts
        # normal(0.02), Mamba's SSM init, and GPT-2-style rescaling of each out_proj by 1/sqrt(number of Mamba layers)
        # (mamba-ssm ``_init_weights`` with rescale_prenorm_residual).
        init_torch_default(module)
        if isinstance(module, nn.Linear) and module.bias is not None:
            init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, std=self.config.initializer_range)
        elif isinstance(module, nn.RMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, LocalGrouper):
            init.ones_(module.affine_alpha)
            init.zeros_(module.affine_beta)
        elif isinstance(module, MambaMixer):
            module.reset_ssm_parameters()
            if not getattr(module.out_proj.weight, "_is_hf_initialized", False):
                init.kaiming_uniform_(module.out_proj.weight, a=math.sqrt(5))
                module.out_proj.weight.div_(math.sqrt(sum(self.config.mamba_blocks)))


class PCMModel(PCMPreTrainedModel):
    """Point Cloud Mamba encoder-decoder: ``points [B, N, 3]`` -> per-point features ``[B, N, 128]``.

    Fusion point: "late" (after the last decoder layer, before the segmentation head): ``fusion_hook(hidden_states
    [B, N, 384], anchor_points [B, N, 3], num_prefix_tokens=0)`` returns the fused ``[B, N, 384]``.
    """

    def __init__(self, config: PCMConfig):
        super().__init__(config)
        bias = config.bias
        self.embedding = ConvBNAct1d(config.in_channels, config.embed_dim, bias)
        self.groupers = nn.ModuleList()
        self.pre_extractors = nn.ModuleList()
        self.residual_projs = nn.ModuleList()
        self.pos_projs = nn.ModuleList()
        self.prompt_projs = nn.ModuleList()
        self.mamba_stages = nn.ModuleList()
        num_layers = sum(config.mamba_blocks)
        rates = [0.0] + linear_rates(config.drop_path_rate, num_layers)[:-1]
        widths = [config.embed_dim]
        layer = 0
        for i in range(config.num_stages):
            c_in, c_out = widths[-1], widths[-1] * config.dim_expansion[i]
            self.groupers.append(
                LocalGrouper(
                    c_in, config.reducers[i], config.k_neighbors[i], config.use_xyz, config.normalize, sort_anchors=True
                )
            )
            grouped = 2 * c_in + (3 if config.use_xyz else 0)
            self.pre_extractors.append(PreExtraction(grouped, c_out, config.pre_blocks[i], 1.0, bias, "relu"))
            same = c_in == c_out or i == 0
            self.residual_projs.append(nn.Identity() if same else nn.Linear(c_in, c_out, bias=False))
            self.pos_projs.append(nn.Linear(3, c_out, bias=False) if config.mamba_pos else nn.Identity())
            if config.use_order_prompt:
                self.prompt_projs.append(nn.Linear(config.embed_dim, c_out, bias=False))
            stage = nn.ModuleList()
            for _ in range(config.mamba_blocks[i]):
                stage.append(PCMMambaLayer(config, c_out, rates[layer]))
                layer += 1
            self.mamba_stages.append(stage)
            widths.append(c_out)
        if config.use_order_prompt:
            self.order_prompt = nn.Embedding(num_layers * config.prompts_per_order, config.embed_dim)
        self.decoder = nn.ModuleList()
        coarse = widths[-1]
        for i, out in enumerate(config.decoder_dims):
            skip = widths[-2 - i]
            self.decoder.append(FeaturePropagation(skip + coarse, out, config.decoder_blocks[i], 1.0, True, "relu"))
            coarse = out
        self.head = nn.Sequential(
            ConvBNAct1d(coarse, config.head_hidden_size, bias=False),  # openpoints: no bias before a norm
            nn.Dropout(config.head_dropout),
            nn.Conv1d(config.head_hidden_size, config.hidden_size, 1),
        )
        self.gradient_checkpointing = False
        self.post_init()

    def _run_stage(self, i: int, layer0: int, xyz, x, residual):
        """Mamba layers of stage ``i`` on ``xyz [B, S, 3]``, ``x [B, S, C]``, ``residual [B, S, C] | None``; the
        tensors come back in the order of the stage's last layer."""
        config = self.config
        P = config.prompts_per_order
        current = None
        if config.use_order_prompt:
            # the order prompts of all the stage's layers in one projection ([layers * P, C])
            n = len(self.mamba_stages[i])
            prompts = self.prompt_projs[i](self.order_prompt.weight[layer0 * P : (layer0 + n) * P])
        for j, layer in enumerate(self.mamba_stages[i]):
            order = config.mamba_orders[layer0 + j]
            if order != current and config.legacy_axis_orders:
                perm = legacy_serialization_order(xyz, order, config.serialization_grid_size)
                xyz, x = _take_flat(xyz, perm), _take_flat(x, perm)
                residual = None if residual is None else _take_flat(residual, perm)
                current = order
            elif order != current:
                # in range: forward checked the input clouds' extent, and xyz is a subset of its cloud (FPS gathers,
                # these permutations), whose floor(p / grid_size) - min spans at most what the whole cloud's spans
                perm = serialization_order(xyz, order, config.serialization_grid_size, check_range=False)
                xyz, x = gather_points(xyz, perm), gather_points(x, perm)
                residual = None if residual is None else gather_points(residual, perm)
                current = order
            if config.mamba_pos:
                x = x + self.pos_projs[i](xyz)
            if config.use_order_prompt:
                prompt = prompts[j * P : (j + 1) * P].unsqueeze(0).expand(x.shape[0], -1, -1)
                x = torch.cat([prompt, x, prompt], dim=1)
                if residual is not None:
                    residual = torch.cat([prompt.to(residual.dtype), residual, prompt.to(residual.dtype)], dim=1)
                x, residual = layer(x, residual)
                x, residual = x[:, P:-P], residual[:, P:-P]
            else:
                x, residual = layer(x, residual)
        return xyz, x, residual

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
            points: ``[B, N, 3]`` xyz; N >= ``config.min_points`` (96 by default).
            features: ``[B, N, config.feature_channels]`` or None.
        Returns:
            ``PointBackboneOutput(last_hidden_state [B, N, 128], anchor_points [B, N, 3] (= points), pooler_output
            [B, 128] (max over points), hidden_states)``; hidden states are the embedding, every encoder stage (in its
            last serialization order) and every decoder layer, channels-last.
        """
        config = self.config
        output_hidden_states = output_hidden_states if output_hidden_states is not None else config.output_hidden_states
        return_dict = return_dict if return_dict is not None else config.return_dict
        check_point_batch(
            points,
            features,
            min_points=config.min_points,
            feature_channels=config.feature_channels,
            # the serialization grid's extent, once for every order of every stage (legacy orders check their own)
            grid_size=None if config.legacy_axis_orders else config.serialization_grid_size,
            grid_dtype=self._input_dtype,
        )
        points, features = cast_point_inputs(points, features, self._input_dtype)
        x = point_inputs(points, features, config.use_height, config.height_axis)
        x = self.embedding(x.transpose(1, 2)).transpose(1, 2)  # [B, N, C]

        xyz, residual = points, None
        xyz_levels, feature_levels = [xyz], [x.transpose(1, 2)]
        all_hidden = [x] if output_hidden_states else None
        layer0 = 0
        for i in range(config.num_stages):
            xyz, grouped, idx = self.groupers[i](xyz, x)
            if residual is not None:
                residual = gather_points(residual, idx)
            x = self.pre_extractors[i](grouped).transpose(1, 2)  # [B, S, C]
            if residual is not None:
                # the residual stream stays float32 (mamba-ssm's residual_in_fp32); projected in the model's dtype
                residual = self.residual_projs[i](residual.to(x.dtype)).float()
            xyz, x, residual = self._run_stage(i, layer0, xyz, x, residual)
            layer0 += config.mamba_blocks[i]
            xyz_levels.append(xyz)
            feature_levels.append(x.transpose(1, 2))
            if output_hidden_states:
                all_hidden.append(x)
        h = feature_levels[-1]
        for i, layer in enumerate(self.decoder):
            level = len(xyz_levels) - 2 - i
            h = layer(xyz_levels[level], xyz_levels[level + 1], feature_levels[level], h)
            if output_hidden_states:
                all_hidden.append(h.transpose(1, 2))
        hidden = h.transpose(1, 2)
        if fusion_hook is not None:
            hidden = fusion_hook(hidden, anchor_points=points, num_prefix_tokens=0)
        hidden = self.head(hidden.transpose(1, 2)).transpose(1, 2)
        out = PointBackboneOutput(
            last_hidden_state=hidden,
            anchor_points=points,
            pooler_output=hidden.amax(dim=1),
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
        )
        return out if return_dict else out.to_tuple()


__all__ = ["PCMModel", "PCMPreTrainedModel"]
