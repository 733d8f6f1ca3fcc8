"""Sparse UNet scene backbone: Pointcept's SpUNet-v1m1 as UniPre3D pre-trains it (method reference section 2.6).

Adapted (re-written, same architecture and parameter layout) from Pointcept
(https://github.com/Pointcept/Pointcept, ``pointcept/models/sparse_unet/spconv_unet_v1m1_base.py``):
stem SubMConv3d(k5) + BN + ReLU; 4 encoder stages of a strided SparseConv3d(k2, s2) + BN + ReLU and basic blocks;
4 decoder stages of a SparseInverseConv3d(k2) + BN + ReLU, concatenation of the skip and basic blocks; a final
SubMConv3d(k1, bias) to ``out_channels``. Sparse convs run on spconv or on the pure-torch twin
(``unipre3d_hf.ops.sparse_conv``), with the same weights.

Differences from the paper's code: voxelization happens inside the model (``config.grid_size``); several scenes per
batch (the batch index goes through every conv and through the fusion hook); the fusion point is a callback.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer

from ..configuration.sparse_unet import SparseUNetConfig
from ..ops.sparse_conv import (
    SparseConv3d,
    SparseInverseConv3d,
    SparseVoxels,
    SubMConv3d,
    _SparseConvBase,
    resolve_sparse_conv_backend,
)
from ..ops.voxelize import check_packed_points, segment_max, voxelize
from .layers import PointPreTrainedModel, init_point_module
from .outputs import PointBackboneOutput

FusionHook = Callable[[SparseVoxels], SparseVoxels]


def apply_fusion_hook(voxels: SparseVoxels, fusion_hook: FusionHook | None, point_to_token: torch.Tensor):
    """Run a scene backbone's ``fusion_hook`` on the stem output and check what it returns.

    The hook may append voxels (``SparseVoxels.append``); the union is then re-ordered scene after scene (stable:
    each scene's 3D voxels, then its appended voxels) and ``point_to_token`` is remapped to the new rows.
    Returns ``(voxels, point_to_token)``.
    """
    if fusion_hook is None:
        return voxels, point_to_token
    num_before = voxels.num_voxels
    fused = fusion_hook(voxels)
    if not isinstance(fused, SparseVoxels):
        raise ValueError(f"`fusion_hook` must return a SparseVoxels, got {type(fused).__name__}")
    if fused.num_voxels < num_before or fused.features.ndim != 2:
        raise ValueError(
            f"`fusion_hook` must keep the {num_before} existing voxels (rows) and may only append new ones; "
            f"got features of shape {tuple(fused.features.shape)}"
        )
    if fused.features.shape[1] != voxels.features.shape[1]:
        raise ValueError(
            f"`fusion_hook` must return features [T', {voxels.features.shape[1]}], got {tuple(fused.features.shape)}"
        )
    if fused.coords is None or fused.coords.shape != (fused.num_voxels, 3):
        raise ValueError("`fusion_hook` must return continuous `coords` [T', 3] for every voxel (anchors)")
    if fused.num_voxels == num_before:
        return fused, point_to_token
    order = torch.argsort(fused.batch_index, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    return fused.index_select(order, permutation=True), rank[point_to_token]


class SparseUNetBasicBlock(GradientCheckpointingLayer):
    """Two SubMConv3d(k3) + BN, ReLU between, residual (a SubMConv3d(k1) + BN projection when widths differ)."""

    def __init__(self, in_channels: int, channels: int, config: SparseUNetConfig, indice_key: str):
        super().__init__()
        eps, momentum = config.bn_eps, config.bn_momentum
        if in_channels == channels:
            self.proj_conv, self.proj_norm = None, None
        else:
            self.proj_conv = SubMConv3d(in_channels, channels, 1, bias=False)
            self.proj_norm = nn.BatchNorm1d(channels, eps=eps, momentum=momentum)
        self.conv1 = SubMConv3d(in_channels, channels, 3, padding=1, bias=False, indice_key=indice_key)
        self.bn1 = nn.BatchNorm1d(channels, eps=eps, momentum=momentum)
        self.conv2 = SubMConv3d(channels, channels, 3, padding=1, bias=False, indice_key=indice_key)
        self.bn2 = nn.BatchNorm1d(channels, eps=eps, momentum=momentum)
        self.act = nn.ReLU()

    def forward(self, features: torch.Tensor, voxels: SparseVoxels) -> torch.Tensor:
        x = voxels.replace_features(features)
        residual = features if self.proj_conv is None else self.proj_norm(self.proj_conv(x).features)
        out = self.act(self.bn1(self.conv1(x).features))
        out = self.bn2(self.conv2(x.replace_features(out)).features)
        return self.act(out + residual)


class SparseUNetStage(nn.Module):
    def __init__(self, in_channels: int, channels: int, depth: int, config: SparseUNetConfig, indice_key: str):
        super().__init__()
        self.blocks = nn.ModuleList(
            SparseUNetBasicBlock(in_channels if i == 0 else channels, channels, config, indice_key)
            for i in range(depth)
        )

    def forward(self, voxels: SparseVoxels) -> SparseVoxels:
        features = voxels.features
        for block in self.blocks:
            features = block(features, voxels)
        return voxels.replace_features(features)


class SparseUNetConvNormAct(nn.Module):
    """A sparse conv (strided or inverse), BatchNorm, ReLU."""

    def __init__(self, conv: _SparseConvBase, config: SparseUNetConfig):
        super().__init__()
        self.conv = conv
        self.norm = nn.BatchNorm1d(conv.out_channels, eps=config.bn_eps, momentum=config.bn_momentum)
        self.act = nn.ReLU()

    def forward(self, voxels: SparseVoxels) -> SparseVoxels:
        out = self.conv(voxels)
        return out.replace_features(self.act(self.norm(out.features)))


class SparseUNetPreTrainedModel(PointPreTrainedModel):
    config_class = SparseUNetConfig
    base_model_prefix = "sparse_unet"
    main_input_name = "coords"
    supports_gradient_checkpointing = True
    _no_split_modules = ["SparseUNetBasicBlock"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Pointcept's initialisation: trunc-normal(``initializer_range``, 0.02) for Linear and sparse-conv weights,
        zero biases; BatchNorm weight 1, bias 0 and fresh running statistics (mean 0, var 1, count 0), so that a
        checkpoint without them never leaves uninitialised memory."""
        init_sparse_module(module, self.config.initializer_range)


class SparseUNetModel(SparseUNetPreTrainedModel):
    """Sparse UNet over voxelized scenes. Input: packed clouds; output: one ``out_channels`` feature per voxel.

    Fusion point: ``"early"``. ``fusion_hook(voxels: SparseVoxels) -> SparseVoxels`` is called once, right after the
    stem (``config.base_channels`` features), and may append voxels (see ``SparseVoxels.append``); the whole UNet then
    runs on the union and the stem skip connection carries the fused features.
    """

    def __init__(self, config: SparseUNetConfig):
        super().__init__(config)
        num_stages = len(config.channels) // 2
        channels, layers = config.channels, config.layers
        eps, momentum = config.bn_eps, config.bn_momentum
        self.stem_conv = SubMConv3d(
            config.in_channels, config.base_channels, config.stem_kernel_size, padding=1, bias=False, indice_key="stem"
        )
        self.stem_norm = nn.BatchNorm1d(config.base_channels, eps=eps, momentum=momentum)
        self.stem_act = nn.ReLU()
        self.down, self.enc, self.up, self.dec = (nn.ModuleList() for _ in range(4))
        enc_channels, dec_channels = config.base_channels, channels[-1]
        for s in range(num_stages):
            key = f"spconv{s + 1}"
            self.down.append(
                SparseUNetConvNormAct(
                    SparseConv3d(enc_channels, channels[s], 2, stride=2, bias=False, indice_key=key), config
                )
            )
            self.enc.append(SparseUNetStage(channels[s], channels[s], layers[s], config, f"subm{s + 1}"))
            # decoder stage s runs after the deeper stages; it maps channels[-s-2] -> dec_channels (Pointcept order)
            up_in = channels[len(channels) - s - 2]
            self.up.append(
                SparseUNetConvNormAct(SparseInverseConv3d(up_in, dec_channels, 2, indice_key=key, bias=False), config)
            )
            self.dec.append(
                SparseUNetStage(
                    dec_channels + enc_channels, dec_channels, layers[len(channels) - s - 1], config, f"subm{s}"
                )
            )
            enc_channels = channels[s]
            dec_channels = channels[len(channels) - s - 2]
        self.final = SubMConv3d(channels[-1], config.out_channels, 1, bias=True)
        self.post_init()

    def forward(
        self,
        coords: torch.Tensor,
        features: torch.Tensor,
        offsets: torch.Tensor,
        fusion_hook: FusionHook | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> PointBackboneOutput | tuple:
        r"""
        Args:
            coords: ``[P, 3]`` xyz in metres, scene after scene.
            features: ``[P, in_channels]`` per-point features (RGB + normal in the paper).
            offsets: ``[B]`` int64 cumulative point counts (``offsets[-1] == P``).
            fusion_hook: optional callable ``SparseVoxels -> SparseVoxels`` run after the stem (see the class doc).
            output_hidden_states: also return the features after the stem (post-hook), each encoder stage and each
                decoder stage.
        """
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        voxels, point_to_token = embed_scene(self.config, coords, features, offsets, self.training, self._input_dtype)
        x = self.stem_conv(voxels)
        x = x.replace_features(self.stem_act(self.stem_norm(x.features)))
        x, point_to_token = apply_fusion_hook(x, fusion_hook, point_to_token)
        anchors, batch_index = x.coords, x.batch_index
        hidden = [x.features]
        skips = [x]
        for down, enc in zip(self.down, self.enc):
            x = enc(down(x))
            skips.append(x)
            hidden.append(x.features)
        x = skips.pop()
        for s in reversed(range(len(self.up))):
            x = self.up[s](x)
            skip = skips.pop()
            x = self.dec[s](x.replace_features(torch.cat([x.features, skip.features], dim=1)))
            hidden.append(x.features)
        out = self.final(x).features
        pooled = segment_max(out, batch_index, offsets.numel())
        hidden_states = tuple(hidden) + (out,) if output_hidden_states else None
        if not return_dict:
            return tuple(v for v in (out, anchors, pooled, batch_index, point_to_token, hidden_states) if v is not None)
        return PointBackboneOutput(
            last_hidden_state=out,
            anchor_points=anchors,
            pooler_output=pooled,
            batch_index=batch_index,
            point_to_token=point_to_token,
            hidden_states=hidden_states,
        )


def init_sparse_module(module: nn.Module, std: float) -> None:
    """``init_point_module`` plus the sparse convolutions (truncated normal weights, zero biases)."""
    if isinstance(module, _SparseConvBase):
        init.trunc_normal_(module.weight, std=std)
        if module.bias is not None:
            init.zeros_(module.bias)
    else:
        init_point_module(module, std)


def embed_scene(
    config, coords, features, offsets, training: bool, dtype: torch.dtype | None = None
) -> tuple[SparseVoxels, torch.Tensor]:
    """Validate packed inputs and voxelize them: ``(SparseVoxels with the representative features, point_to_token)``.

    Shared by the scene backbones. In training the representative point of a voxel is random (Pointcept's
    ``GridSample`` in train mode); in eval it is the voxel's first point. Anchors are the voxels' mean points.
    The features are cast to ``dtype`` (the model's) when given; the coordinates keep their precision (a bfloat16
    grid would put points of a 5 m scene in the wrong 2 cm voxels).
    """
    # one host sync for every value check, which also gives the grid's extent (spconv's spatial shape)
    grid_max = check_packed_points(coords, features, offsets, config.grid_size)
    if features.shape[1] != config.in_channels:
        raise ValueError(
            f"`features` must have shape [P, {config.in_channels}] (config.in_channels), got {tuple(features.shape)}"
        )
    backend = resolve_sparse_conv_backend(config.sparse_conv_backend, features.device)
    vox = voxelize(coords, offsets, config.grid_size, random_representative=training, check_inputs=False)
    voxels = SparseVoxels(
        features=features[vox.representative] if dtype is None else features[vox.representative].to(dtype),
        grid_coords=vox.grid_coords,
        batch_index=vox.batch_index,
        coords=vox.mean_coords,
        batch_size=offsets.numel(),
        backend=backend,
        grid_max=grid_max,
    )
    return voxels, vox.point_to_voxel


__all__ = ["SparseUNetModel", "SparseUNetPreTrainedModel", "apply_fusion_hook", "embed_scene"]
