"""Point Transformer V3 scene backbone: Pointcept's PT-v3m1 as UniPre3D pre-trains it (method reference section 2.7),
and Pointcept's PT-v3m2 / Sonata through config fields.

Adapted (re-written, same architecture and parameter count) from Pointcept
(https://github.com/Pointcept/PointTransformerV3, ``model.py``; Wu et al., CVPR 2024):
  - embedding: SubMConv3d(k5, no bias) + BatchNorm + GELU;
  - blocks: CPE (SubMConv3d(k3, bias) + Linear + LayerNorm, residual), pre-LN serialized patch attention and a 4x MLP,
    each a residual with DropPath; block ``i`` of a stage attends along order ``i mod len(order)``;
  - serialized pooling (stride 2: merge 2x2x2 cells = ``code >> 3``): Linear, segment max of features, mean of
    coordinates, BatchNorm + GELU; serialized unpooling: Linear + BN + GELU of the coarse features scattered back,
    added to Linear + BN + GELU of the skip.

Differences from Pointcept (none changes the parameters): voxelization inside the model; several scenes per batch
everywhere, including the fusion hook; serialization depth fixed at 16 bits so that a scene's order does not depend on
its batch; patches identical for every attention backend (``unipre3d_hf.ops.attention``); order shuffling only in
training (Pointcept also shuffles in eval, which makes eval outputs random); no RPE (off in the paper) and no
attention dropout (0 in the paper).

PT-v3m2 (Pointcept ``point_transformer_v3m2_sonata.py``, the standalone ``facebookresearch/sonata`` ``model.py``; Wu et
al., CVPR 2025) differs from PT-v3m1 in these places, each a `PTv3Config` field whose default is PT-v3m1's:
  - ``stem_type="linear"``: a per-voxel Linear (with bias) + norm + GELU instead of the k5 SubMConv3d stem;
  - ``norm_type="layer"``: LayerNorm instead of BatchNorm in the stem, the pooling and the unpooling;
  - ``pooling_type="grid"``: ``GridPooling`` (cells of ``grid // stride``, the coarse level serialized afresh) instead
    of ``SerializedPooling``; ``serialization_depth=None``: Pointcept's batch-wide depth at every serialization;
  - ``layer_scale``: LayerScale on the attention and MLP branches;
  - ``enc_mode``: encoder only, output upcast to the input voxels (``enc_upcast_stages``);
  - ``mask_token``: the learned mask embedding of Sonata's pre-training;
  - the unpooling refreshes the sparse tensor (``legacy_unpooling_cpe=False``, our default).
The qkv layout (``[3, heads, head_dim]`` along the output of one Linear), the CPE, the MLP and the block order are
the same in both. What we do not reproduce of PT-v3m2, none of which has weights: its ``GridPooling`` shuffles the
coarse levels' orders on every call, in eval too and whatever the model's ``shuffle_orders`` (ours: in training, with
``shuffle_orders``); its non-flash attention (Sonata's CPU demo, ``enable_flash=False``) shrinks the patch to the
smallest scene's point count (ours is the flash path's fixed patch, what Sonata was trained with); its flash path
casts qkv to fp16 / bf16 (ours: the dtype of the chosen backend).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer

from ..configuration.ptv3 import PTv3Config
from ..ops.attention import PatchLayout, build_patches, resolve_attention_backend, serialized_patch_attention
from ..ops.serialization import MAX_DEPTH, check_grid_range, serialize
from ..ops.sparse_conv import SparseVoxels, SubMConv3d, pack_voxel_keys
from ..ops.voxelize import segment_max, segment_mean
from .layers import DropPath, PointPreTrainedModel, linear_rates
from .outputs import PointBackboneOutput
from .sparse_unet import FusionHook, apply_fusion_hook, embed_scene, init_sparse_module


@dataclass
class PTv3Level:
    """The voxels of one resolution and their serializations.

    Attributes:
        voxels: the voxels (geometry and the CPE kernel-map cache; its ``features`` are not used).
        coords: ``[N, 3]`` continuous positions (mean of the merged voxels at coarse levels).
        codes: ``[O, N]`` serialization codes, one row per order (scene in the high bits).
        order: ``[O, N]`` rows sorted by code; ``inverse``: ``[O, N]`` position of each row in ``order``.
        counts: ``[B]`` voxels per scene.
    """

    voxels: SparseVoxels
    coords: torch.Tensor
    codes: torch.Tensor
    order: torch.Tensor = field(init=False)
    inverse: torch.Tensor = field(init=False)
    counts: torch.Tensor = field(init=False)
    layouts: dict = field(default_factory=dict)

    def __post_init__(self):
        self.order = torch.argsort(self.codes, dim=1)
        self.inverse = torch.empty_like(self.order).scatter_(
            1, self.order, torch.arange(self.codes.shape[1], device=self.codes.device).expand_as(self.order)
        )
        # a scatter, not bincount (whose CUDA kernel reads the maximum on the host)
        batch_index = self.voxels.batch_index
        self.counts = batch_index.new_zeros(self.voxels.batch_size).index_add_(
            0, batch_index, torch.ones_like(batch_index)
        )

    def shuffle_orders(self) -> None:
        perm = torch.randperm(self.codes.shape[0], device=self.codes.device)
        self.codes, self.order, self.inverse = self.codes[perm], self.order[perm], self.inverse[perm]

    def patches(self, patch_size: int) -> PatchLayout:
        if patch_size not in self.layouts:
            self.layouts[patch_size] = build_patches(self.counts, patch_size)
        return self.layouts[patch_size]


class PTv3Attention(nn.Module):
    def __init__(self, channels: int, num_heads: int, patch_size: int, config: PTv3Config):
        super().__init__()
        self.num_heads, self.patch_size = num_heads, patch_size
        self.scale = config.qk_scale if config.qk_scale is not None else (channels // num_heads) ** -0.5
        self.qkv = nn.Linear(channels, channels * 3, bias=config.qkv_bias)
        self.proj = nn.Linear(channels, channels)
        self.proj_drop = nn.Dropout(config.proj_drop)
        self.backend = "torch"  # set by PTv3Model.forward from config.attention_backend and the device

    def forward(self, features: torch.Tensor, level: PTv3Level, order_index: int) -> torch.Tensor:
        n, c = features.shape
        qkv = self.qkv(features).view(n, 3, self.num_heads, c // self.num_heads)
        out = serialized_patch_attention(
            qkv, level.order[order_index], level.inverse[order_index], level.counts, self.patch_size,
            scale=self.scale, backend=self.backend, layout=level.patches(self.patch_size),
        )  # fmt: skip
        return self.proj_drop(self.proj(out.reshape(n, c)))


class PTv3LayerScale(nn.Module):
    """PT-v3m2's LayerScale: ``x * gamma`` with a learned ``gamma [C]`` (Touvron et al. 2021, CaiT)."""

    def __init__(self, channels: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


def _norm(channels: int, config: PTv3Config) -> nn.Module:
    """The norm of the stem, the pooling and the unpooling (`PTv3Config.norm_type`)."""
    if config.norm_type == "layer":
        return nn.LayerNorm(channels, eps=config.layer_norm_eps)
    return nn.BatchNorm1d(channels, eps=config.bn_eps, momentum=config.bn_momentum)


def _serialization_codes(grid_coords, batch_index, config: PTv3Config) -> torch.Tensor:
    """``[O, N]`` codes of every order of ``config.order``, at ``config.serialization_depth`` bits per axis, or with
    ``None`` at Pointcept's ``int(grid.max() + 1).bit_length()`` over the batch (``Point.serialization``)."""
    depth = config.serialization_depth
    # the grids of PTv3's levels lie in [0, MAX_GRID_COORD) (voxelize and SparseVoxels.append check it; pooling only
    # shrinks them): at 16 bits no range check is needed, at fewer bits one, shared by every order
    check = depth is not None and depth < MAX_DEPTH
    if depth is None:
        depth = int(grid_coords.max()) + 1 if grid_coords.numel() else 1
        depth = depth.bit_length()
        if depth > 16:
            raise ValueError(f"grid coordinates up to {(1 << depth) - 1} need more than the 16 bits per axis allowed")
    elif check:
        check_grid_range(grid_coords, depth)
    return torch.stack([serialize(grid_coords, batch_index, o, depth=depth, check_range=False) for o in config.order])


class PTv3MLP(nn.Module):
    def __init__(self, channels: int, hidden: int, drop: float):
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, channels)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class PTv3Block(GradientCheckpointingLayer):
    def __init__(self, channels: int, num_heads: int, patch_size: int, drop_path: float, config: PTv3Config):
        super().__init__()
        self.pre_norm = config.pre_norm
        self.cpe_conv = SubMConv3d(channels, channels, 3, padding=1, bias=True, indice_key="cpe")
        self.cpe_linear = nn.Linear(channels, channels)
        self.cpe_norm = nn.LayerNorm(channels, eps=config.layer_norm_eps)
        self.norm1 = nn.LayerNorm(channels, eps=config.layer_norm_eps)
        self.attn = PTv3Attention(channels, num_heads, patch_size, config)
        self.norm2 = nn.LayerNorm(channels, eps=config.layer_norm_eps)
        self.mlp = PTv3MLP(channels, int(channels * config.mlp_ratio), config.proj_drop)
        scaled = config.layer_scale is not None
        self.ls1 = PTv3LayerScale(channels) if scaled else nn.Identity()
        self.ls2 = PTv3LayerScale(channels) if scaled else nn.Identity()
        self.drop_path = DropPath(drop_path)

    def forward(
        self, features: torch.Tensor, level: PTv3Level, order_index: int, cpe_input: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``features [N, C]`` -> ``[N, C]``. ``cpe_input`` (default ``features``) is what the CPE conv reads: PT-v3m1's
        first decoder block passes the projected skip alone (``PTv3Config.legacy_unpooling_cpe``)."""
        cpe_input = features if cpe_input is None else cpe_input
        cpe = self.cpe_conv(level.voxels.replace_features(cpe_input)).features
        features = features + self.cpe_norm(self.cpe_linear(cpe))
        x = self.norm1(features) if self.pre_norm else features
        features = features + self.drop_path(self.ls1(self.attn(x, level, order_index)))
        if not self.pre_norm:
            features = self.norm1(features)
        x = self.norm2(features) if self.pre_norm else features
        features = features + self.drop_path(self.ls2(self.mlp(x)))
        if not self.pre_norm:
            features = self.norm2(features)
        return features


class PTv3Pooling(nn.Module):
    """Merge the voxels of each ``stride^3`` cell: Linear, segment max of the features, mean of the coordinates, norm
    + GELU. Serialized pooling (PT-v3m1) finds the cells as the order-0 code shifted right by 3 bits per halving and
    keeps the shifted codes; grid pooling (PT-v3m2's ``GridPooling``) finds them as ``grid // stride`` and serializes
    the coarse level afresh (`PTv3Config.pooling_type`)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, config: PTv3Config):
        super().__init__()
        self.config = config
        self.stride = stride
        self.shift = stride.bit_length() - 1  # log2(stride), serialized pooling
        self.proj = nn.Linear(in_channels, out_channels)
        self.norm = _norm(out_channels, config)
        self.act = nn.GELU()

    def forward(self, features: torch.Tensor, level: PTv3Level, shuffle: bool):
        """Returns ``(coarse features [M, C_out], coarse level, cluster [N] (coarse row of each fine row))``."""
        voxels = level.voxels
        grid = self.config.pooling_type == "grid"
        if grid:
            # GridPooling: unique (scene, grid // stride) rows, sorted by scene then x, y, z
            coarse_grid = torch.div(voxels.grid_coords, self.stride, rounding_mode="floor")
            key = pack_voxel_keys(voxels.batch_index, coarse_grid)
        else:
            key = level.codes[0] >> (3 * self.shift)
        coarse_keys, cluster = torch.unique(key, sorted=True, return_inverse=True)  # a sync: M is data-dependent
        m = coarse_keys.numel()
        rows = torch.arange(key.numel(), device=key.device)
        head = torch.full((m,), key.numel(), dtype=torch.long, device=key.device)
        head.scatter_reduce_(0, cluster, rows, reduce="amin")
        # the coarse grid's extent follows from the fine one's (floor division and shifts are monotone)
        grid_max = voxels.grid_max
        if grid_max is not None:
            grid_max = [g // self.stride if grid else g >> self.shift for g in grid_max]
        coarse_voxels = SparseVoxels(
            features=features.new_zeros(m, 0),
            grid_coords=coarse_grid[head] if grid else voxels.grid_coords[head] >> self.shift,
            batch_index=voxels.batch_index[head],
            batch_size=voxels.batch_size,
            backend=voxels.backend,
            grid_max=grid_max,
        )
        if grid:  # serialized afresh, in `order`'s order (Pointcept: `point.serialization(order=point.order)`)
            codes = _serialization_codes(coarse_voxels.grid_coords, coarse_voxels.batch_index, self.config)
        else:
            codes = level.codes[:, head] >> (3 * self.shift)
        coarse = PTv3Level(coarse_voxels, segment_mean(level.coords, cluster, m), codes)
        if shuffle:
            coarse.shuffle_orders()
        pooled = segment_max(self.proj(features), cluster, m)
        return self.act(self.norm(pooled)), coarse, cluster


class PTv3Unpooling(nn.Module):
    """Unpooling: ``LNG(skip) + LNG(coarse)[cluster]`` with LNG = Linear + norm (`PTv3Config.norm_type`) + GELU."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, config: PTv3Config):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(in_channels, out_channels), _norm(out_channels, config), nn.GELU())
        self.proj_skip = nn.Sequential(nn.Linear(skip_channels, out_channels), _norm(out_channels, config), nn.GELU())

    def forward(
        self, coarse: torch.Tensor, skip: torch.Tensor, cluster: torch.Tensor, return_skip: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``coarse [M, C_in]``, ``skip [N, C_skip]``, ``cluster [N]`` -> ``[N, C_out]`` (and ``LBG(skip)`` with
        ``return_skip``, for PT-v3m1's first decoder CPE)."""
        projected_skip = self.proj_skip(skip)
        out = projected_skip + self.proj(coarse)[cluster]
        return (out, projected_skip) if return_skip else out


class PTv3Stage(nn.Module):
    def __init__(self, channels, depth, num_heads, patch_size, drop_paths, config, pooling=None, unpooling=None):
        super().__init__()
        self.pooling = pooling
        self.unpooling = unpooling
        self.blocks = nn.ModuleList(
            PTv3Block(channels, num_heads, patch_size, drop_paths[i], config) for i in range(depth)
        )

    def run_blocks(
        self, features: torch.Tensor, level: PTv3Level, first_cpe_input: torch.Tensor | None = None
    ) -> torch.Tensor:
        num_orders = level.codes.shape[0]
        for i, block in enumerate(self.blocks):
            features = block(features, level, i % num_orders, first_cpe_input if i == 0 else None)
        return features


class PTv3PreTrainedModel(PointPreTrainedModel):
    config_class = PTv3Config
    base_model_prefix = "ptv3"
    main_input_name = "coords"
    supports_gradient_checkpointing = True
    _no_split_modules = ["PTv3Block"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """trunc-normal(``initializer_range``, 0.02) for Linear and sparse-conv weights, zero biases; BatchNorm /
        LayerNorm weight 1, bias 0, BatchNorm running statistics reset (mean 0, var 1, count 0); LayerScale gamma =
        ``layer_scale``; the mask token 0 (Sonata's ``Embedding``)."""
        if isinstance(module, PTv3LayerScale):
            init.constant_(module.gamma, self.config.layer_scale)
        elif isinstance(module, PTv3Model) and module.mask_token is not None:
            init.zeros_(module.mask_token)
        else:
            init_sparse_module(module, self.config.initializer_range)


class PTv3Model(PTv3PreTrainedModel):
    """Point Transformer V3 over voxelized scenes. Input: packed clouds; output: one ``config.hidden_size`` feature
    per voxel (``dec_channels[0]``; with ``enc_mode``, the encoder stages upcast to the input voxels).

    Fusion point: ``"early"``. ``fusion_hook(voxels: SparseVoxels) -> SparseVoxels`` is called once, right after the
    embedding (``enc_channels[0]`` features), and may append voxels (``SparseVoxels.append``); the union is then
    serialized and sparsified anew and the whole encoder-decoder runs on it.
    """

    def __init__(self, config: PTv3Config):
        super().__init__(config)
        if config.stem_type == "linear":
            self.stem_linear = nn.Linear(config.in_channels, config.enc_channels[0])
        else:
            self.stem_conv = SubMConv3d(
                config.in_channels, config.enc_channels[0], config.stem_kernel_size, padding=1, bias=False,
                indice_key="stem",
            )  # fmt: skip
        self.stem_norm = _norm(config.enc_channels[0], config)
        self.stem_act = nn.GELU()
        self.mask_token = nn.Parameter(torch.zeros(1, config.enc_channels[0])) if config.mask_token else None
        num_stages = len(config.enc_depths)
        enc_dpr = linear_rates(config.drop_path, sum(config.enc_depths))
        self.enc = nn.ModuleList()
        for s in range(num_stages):
            pooling = None
            if s > 0:
                pooling = PTv3Pooling(config.enc_channels[s - 1], config.enc_channels[s], config.stride[s - 1], config)
            lo = sum(config.enc_depths[:s])
            self.enc.append(
                PTv3Stage(
                    config.enc_channels[s],
                    config.enc_depths[s],
                    config.enc_num_head[s],
                    config.enc_patch_size[s],
                    enc_dpr[lo : lo + config.enc_depths[s]],
                    config,
                    pooling=pooling,
                )  # fmt: skip
            )
        dec_dpr = linear_rates(config.drop_path, sum(config.dec_depths))
        dec_channels = list(config.dec_channels) + [config.enc_channels[-1]]
        self.dec = nn.ModuleList()
        for s in range(0 if config.enc_mode else num_stages - 1):
            lo = sum(config.dec_depths[:s])
            rates = dec_dpr[lo : lo + config.dec_depths[s]][::-1]
            unpooling = PTv3Unpooling(dec_channels[s + 1], config.enc_channels[s], dec_channels[s], config)
            self.dec.append(
                PTv3Stage(
                    dec_channels[s],
                    config.dec_depths[s],
                    config.dec_num_head[s],
                    config.dec_patch_size[s],
                    rates,
                    config,
                    unpooling=unpooling,
                )  # fmt: skip
            )
        self.post_init()

    def _upcast(self, stage_features: list[torch.Tensor], clusters: list[torch.Tensor]) -> torch.Tensor:
        """Encoder-only output: the last stage's features carried back to the first stage's voxels through the
        pooling clusters, concatenated on the way with the features of the ``enc_upcast_stages`` deepest stages
        (shallowest first), as Pointcept's ``DefaultSegmentorV2`` / Sonata's demo walk ``pooling_parent`` /
        ``pooling_inverse``: ``parent.feat = cat([parent.feat, point.feat[inverse]])``.

        Args:
            stage_features: ``[N_s, C_s]`` per encoder stage; clusters: ``[N_s]`` coarse row of each stage-``s`` row,
                for ``s < S - 1``.
        Returns:
            ``[N_0, hidden_size]``.
        """
        num_stages = len(stage_features)
        concat_from = num_stages - (self.config.enc_upcast_stages or num_stages)
        out = stage_features[-1]
        for s in reversed(range(num_stages - 1)):
            out = out[clusters[s]]
            if s >= concat_from:
                out = torch.cat([stage_features[s], out], dim=-1)
        return out

    def _serialize(self, voxels: SparseVoxels, coords: torch.Tensor) -> PTv3Level:
        codes = _serialization_codes(voxels.grid_coords, voxels.batch_index, self.config)
        level = PTv3Level(voxels, coords, codes)
        if self.training and self.config.shuffle_orders:
            level.shuffle_orders()
        return level

    def forward(
        self,
        coords: torch.Tensor,
        features: torch.Tensor,
        offsets: torch.Tensor,
        fusion_hook: FusionHook | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        mask: torch.Tensor | None = None,
    ) -> PointBackboneOutput | tuple:
        r"""
        Args:
            coords: ``[P, 3]`` xyz in metres, scene after scene.
            features: ``[P, in_channels]`` per-point features.
            offsets: ``[B]`` int64 cumulative point counts (``offsets[-1] == P``).
            fusion_hook: optional callable ``SparseVoxels -> SparseVoxels`` run after the embedding.
            output_hidden_states: also return the features after the embedding (post-hook), each encoder stage and
                each decoder stage.
            mask: optional ``[P]`` bool, with ``config.mask_token``: the embedding of every voxel holding a masked
                point is replaced by the mask token (Sonata's ``Embedding``; its inputs are grid-sampled already, one
                point per voxel).
        """
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        attention_backend = resolve_attention_backend(self.config.attention_backend, features.device)
        for module in self.modules():
            if isinstance(module, PTv3Attention):
                module.backend = attention_backend
        voxels, point_to_token = embed_scene(self.config, coords, features, offsets, self.training, self._input_dtype)
        if mask is not None and self.mask_token is None:
            raise ValueError("`mask` needs a model built with `config.mask_token=True`")
        if mask is not None and (mask.dtype != torch.bool or mask.shape != coords.shape[:1]):
            raise ValueError(f"`mask` must be a bool tensor of shape [P] = [{coords.shape[0]}], got {mask.dtype} "
                             f"{tuple(mask.shape)}")  # fmt: skip
        if self.config.stem_type == "linear":
            x = voxels.replace_features(self.stem_act(self.stem_norm(self.stem_linear(voxels.features))))
        else:
            x = self.stem_conv(voxels)
            x = x.replace_features(self.stem_act(self.stem_norm(x.features)))
        if mask is not None:
            masked = torch.zeros(x.features.shape[0], dtype=torch.long, device=mask.device)
            masked = masked.scatter_reduce(0, point_to_token, mask.long(), reduce="amax") > 0  # any point of the voxel
            x = x.replace_features(torch.where(masked[:, None], self.mask_token.to(x.features.dtype), x.features))
        x, point_to_token = apply_fusion_hook(x, fusion_hook, point_to_token)
        anchors, batch_index = x.coords, x.batch_index
        shuffle = self.training and self.config.shuffle_orders
        levels = [self._serialize(x, x.coords)]
        feats = x.features
        hidden = [feats]
        skips, clusters = [], []
        for stage in self.enc:
            if stage.pooling is not None:
                skips.append(feats)
                feats, level, cluster = stage.pooling(feats, levels[-1], shuffle)
                levels.append(level)
                clusters.append(cluster)
            feats = stage.run_blocks(feats, levels[-1])
            hidden.append(feats)
        if self.config.enc_mode:
            feats = self._upcast(hidden[1:], clusters)
        for s in reversed(range(len(self.dec))):
            stage = self.dec[s]
            if self.config.legacy_unpooling_cpe:
                feats, cpe_input = stage.unpooling(feats, skips.pop(), clusters.pop(), return_skip=True)
                feats = stage.run_blocks(feats, levels[s], first_cpe_input=cpe_input)
            else:
                feats = stage.unpooling(feats, skips.pop(), clusters.pop())
                feats = stage.run_blocks(feats, levels[s])
            hidden.append(feats)
        pooled = segment_max(feats, batch_index, offsets.numel())
        hidden_states = tuple(hidden) if output_hidden_states else None
        if not return_dict:
            return tuple(
                v for v in (feats, anchors, pooled, batch_index, point_to_token, hidden_states) if v is not None
            )
        return PointBackboneOutput(
            last_hidden_state=feats,
            anchor_points=anchors,
            pooler_output=pooled,
            batch_index=batch_index,
            point_to_token=point_to_token,
            hidden_states=hidden_states,
        )


__all__ = ["PTv3Model", "PTv3PreTrainedModel"]
