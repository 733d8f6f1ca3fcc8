"""UniPre3D's Gaussian-splatting pre-training model: image encoder, scale-adaptive fusion, Gaussian head and losses.

Method reference sections 1.4 (data flow), 3 (image model), 4 (fusion), 5 (Gaussian head), 6 (renderer) and 7 (loss).
One forward pass:

1. the reference views go through the image encoder (a frozen SD VAE, a small conv net, or nothing) and the
   trainable ``image_projection`` (GroupNorm + 1x1 conv) to the backbone's fusion width;
2. the backbone runs with a fusion hook: object level, *feature fusion* after its last layer (every output token
   takes the feature of the pixel it projects to, z-buffered per pixel, then Linear(2C -> C) + ReLU); scene level,
   *point fusion* after its stem (the reference depth maps are lifted to world points, voxelized on the backbone's
   grid, appended as new voxels carrying image features, then SubMConv3d + BN + ReLU on the union);
3. the Gaussian head turns every output token into one 3D Gaussian anchored at the token's position;
4. the Gaussians are rendered into the supervision views and compared with the images (L2 / L1 / focal L2, plus
   LPIPS from a given step).
"""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AutoModel, PreTrainedModel
from transformers import initialization as init

from ..configuration.unipre3d import UniPre3DConfig
from ..data.geometry import unproject_depth_to_world
from ..ops.sparse_conv import SparseVoxels, SubMConv3d, pack_voxel_keys
from ..ops.voxelize import offsets_to_batch_index, scene_minimum, voxel_representatives
from ..rendering import Cameras, Gaussians, render
from ..rendering.cameras import (
    check_intrinsics,
    check_rigid_transforms,
    intrinsics_ok,
    rigid_transforms_ok,
    run_value_checks,
)
from ..training.losses import LPIPSLoss, reconstruction_loss
from ..utils.import_utils import require_package
from .layers import FrozenNetwork, init_torch_default
from .outputs import GaussianPretrainingOutput, PointBackboneOutput


# ------------------------------------------------------------------------------------------------- image encoders
def load_sd_vae(name_or_path: str) -> nn.Module:
    """``diffusers.AutoencoderKL.from_pretrained(name_or_path)`` (a Hub id, a local folder, or the offline cache)."""
    require_package("diffusers", 'image_encoder="sd-vae"')
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(name_or_path)


class SDVAEImageEncoder(nn.Module):
    """Frozen Stable-Diffusion VAE features (method reference 3): the autoencode of the paper (encoder, posterior
    mode, decoder) under ``no_grad``, up to the output of the decoder's last up-block (:func:`vae_features`),
    ``[N, C, H, W]`` at the input resolution (C = 128 for the SD VAE). The VAE is loaded on first use and never saved
    with the model. :meth:`compile` compiles the feature pass.

    Args:
        name_or_path: Hub id or folder of a diffusers ``AutoencoderKL``.
        channels: the expected width of the last up-block (checked on load).
        input_range: ``"zero_one"`` feeds the [0, 1] images as they are (the paper); ``"minus_one_one"`` rescales
            them to the VAE's training range.
        precision: ``"auto"`` (bfloat16 weights and channels-last activations on CUDA, float32 elsewhere),
            ``"float32"`` or ``"bfloat16"``. The bfloat16 network is a copy made once from the float32 one (both
            frozen, shared by the model's deep copies, outside the state dict); the features come back in the images'
            dtype.
    """

    def __init__(self, name_or_path: str, channels: int, input_range: str = "zero_one", precision: str = "auto"):
        super().__init__()
        self.name_or_path = name_or_path
        self.channels = channels
        self.input_range = input_range
        self.precision = precision
        self.vae = FrozenNetwork(functools.partial(load_sd_vae, name_or_path), f"AutoencoderKL({name_or_path!r})")
        self.vae_bf16 = FrozenNetwork(self._bfloat16_copy, f"AutoencoderKL({name_or_path!r}) in bfloat16")
        self._features = vae_features  # a compiled twin after compile()

    def _bfloat16_copy(self) -> nn.Module:
        # nn.Module.to, not diffusers' override (which warns about casting); channels-last for cuDNN's NHWC kernels
        return nn.Module.to(copy.deepcopy(self.load()), dtype=torch.bfloat16, memory_format=torch.channels_last)

    def load(self, device: torch.device | str | None = None) -> nn.Module:
        vae = self.vae.load(device)
        width = vae.config.block_out_channels[0]
        if width != self.channels:
            raise ValueError(
                f"the VAE at {self.name_or_path!r} has a last up-block of {width} channels but the config says "
                f"`image_encoder_channels={self.channels}`; set it to {width}"
            )
        return vae

    def compute_dtype(self, device: torch.device) -> torch.dtype:
        """The dtype the VAE runs in on ``device`` (see ``precision``)."""
        if self.precision == "bfloat16" or (self.precision == "auto" and device.type == "cuda"):
            return torch.bfloat16
        return torch.float32

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        dtype = self.compute_dtype(images.device)
        # bf16 + channels-last on CUDA: cuDNN's tensor-core convolutions want NHWC (issue 17: the fp32 VAE took 53 ms
        # of every object step at batch 32 on an H200)
        if dtype == torch.float32:
            vae, memory_format = self.load(images.device), torch.contiguous_format
        else:
            vae, memory_format = self.vae_bf16.load(images.device), torch.channels_last
        x = images * 2 - 1 if self.input_range == "minus_one_one" else images
        # autocast off: the bf16 weights set the arithmetic, and an outer fp32 / fp16 autocast must not recast them
        with torch.no_grad(), torch.autocast(images.device.type, enabled=False):
            features = self._features(vae, x.to(dtype=dtype, memory_format=memory_format))
        if features.shape[-2:] != images.shape[-2:]:
            raise ValueError(
                f"the VAE's last up-block gave features of size {tuple(features.shape[-2:])} for images of size "
                f"{tuple(images.shape[-2:])}: image sides must be multiples of "
                f"{2 ** (len(vae.config.block_out_channels) - 1)}"
            )
        # contiguous: the VAE hands out channels-last tensors, and GroupNorm's CPU backward crashes on them
        # (seen with torch 2.13)
        return features.to(images.dtype).contiguous()

    def compile(self, **kwargs) -> None:
        """``torch.compile`` the feature pass (:func:`vae_features`) with ``kwargs`` (``mode``, ``backend``, ...,
        as ``nn.Module.compile``); loading the VAE, the dtype choice and the size check stay eager. Its input shape
        is fixed per preset and it runs under ``no_grad``, so ``mode="reduce-overhead"`` captures it as one CUDA
        graph (issue 17: 44-53 ms of every object step on an H200)."""
        self._features = torch.compile(vae_features, **kwargs)


def vae_features(vae: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The output of the last decoder up-block of a diffusers ``AutoencoderKL`` for ``images [N, 3, H, W]`` (already
    in the VAE's range, dtype and memory format) -> ``[N, C, H, W]``: encoder, posterior mode, post-quant conv, then
    the decoder's ``conv_in``, mid block and up blocks. This is ``AutoencoderKL.forward(sample_posterior=False)`` up
    to that block (diffusers 0.42 ``_decode`` and ``Decoder.forward``); the decoder's output norm and conv, whose
    result the features do not use, are not run."""
    latents = vae.encode(images).latent_dist.mode()
    if getattr(vae, "post_quant_conv", None) is not None:
        latents = vae.post_quant_conv(latents)
    decoder = vae.decoder
    x = decoder.mid_block(decoder.conv_in(latents))
    for block in decoder.up_blocks:
        x = block(x)
    return x


class ConvImageEncoder(nn.Module):
    """A small trainable image encoder at full resolution (not in the paper; for CPU demos and tests): three 3x3
    convolutions with dilations 1, 2, 4 (receptive field 15 px), GroupNorm and SiLU between them. ``[N, 3, H, W]``
    in [0, 1] -> ``[N, channels, H, W]``."""

    def __init__(self, channels: int = 64):
        super().__init__()
        if channels < 8 or channels % 8:
            raise ValueError(f"`image_encoder_channels` of the conv encoder must be a multiple of 8, got {channels}")
        half = channels // 2
        self.layers = nn.Sequential(
            nn.Conv2d(3, half, 3, padding=1),
            nn.GroupNorm(_num_groups(half, 8), half),
            nn.SiLU(),
            nn.Conv2d(half, channels, 3, padding=2, dilation=2),
            nn.GroupNorm(_num_groups(channels, 8), channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=4, dilation=4),
        )
        self.channels = channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images * 2 - 1)


class ImageFeatureProjection(nn.Module):
    """The paper's trainable ``image_conv``: GroupNorm(32, C_in, eps 1e-6) + 1x1 Conv2d C_in -> C_out."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm = nn.GroupNorm(_num_groups(in_channels), in_channels, eps=1e-6)
        self.proj = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(features))


def _num_groups(channels: int, preferred: int = 32) -> int:
    groups = preferred
    while channels % groups:
        groups //= 2
    return groups


# --------------------------------------------------------------------------------------------------------- fusion
def sample_image_features(
    points: torch.Tensor, features: torch.Tensor, cameras: Cameras, legacy_transposed_lookup: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """The image feature of the pixel each point projects to, in each view, with a point-level z-buffer
    (UniPre3D's ``FeatureFusion``, method reference 4.1).

    A point is *seen* in a view when it lies in front of the camera (z > 0), projects inside the image, and has the
    smallest depth of all points projecting to that pixel (ties are all kept). Pixel ``(row, col) = (floor(v),
    floor(u))`` for the continuous projection ``(u, v)`` of :meth:`Cameras.project` (pixel centres at +0.5).
    With ``legacy_transposed_lookup`` the paper's code is reproduced: ``(u, v)`` rounded, and the feature read at
    ``[row=u, col=v]`` (transposed; square images only).

    Args:
        points: ``[B, T, 3]`` world xyz.
        features: ``[B, V, C, H, W]`` image features.
        cameras: the ``[B, V]`` views the features come from (width W, height H).
    Returns:
        sampled ``[B, V, T, C]`` (zeros where not seen) and seen ``[B, V, T]`` (bool).
    """
    b, v, c, h, w = features.shape
    if cameras.batch_size != b or cameras.num_views != v or (cameras.height, cameras.width) != (h, w):
        raise ValueError(
            f"image features [B={b}, V={v}, C, H={h}, W={w}] do not match the cameras "
            f"[B={cameras.batch_size}, V={cameras.num_views}] of {cameras.height}x{cameras.width} px"
        )
    uv, depth = cameras.project(points)  # [B, V, T, 2], [B, V, T]
    if legacy_transposed_lookup:
        if h != w:
            raise ValueError("`legacy_transposed_lookup` reproduces a bug that only runs on square images")
        rows, cols = torch.round(uv[..., 0]).long(), torch.round(uv[..., 1]).long()
    else:
        rows, cols = torch.floor(uv[..., 1]).long(), torch.floor(uv[..., 0]).long()
    seen = (depth > 0) & (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w) & torch.isfinite(depth)
    pixel = (torch.arange(b * v, device=points.device).view(b, v, 1) * h + rows.clamp(0, h - 1)) * w + cols.clamp(
        0, w - 1
    )
    depth_or_inf = torch.where(seen, depth, torch.full_like(depth, float("inf")))
    nearest = depth.new_full((b * v * h * w,), float("inf")).scatter_reduce(
        0, pixel.flatten(), depth_or_inf.flatten(), reduce="amin"
    )
    seen = seen & (depth_or_inf == nearest[pixel])
    flat = features.permute(0, 1, 3, 4, 2).reshape(b * v * h * w, c)
    sampled = flat[pixel.flatten()].view(b, v, -1, c) * seen[..., None].to(features.dtype)
    return sampled, seen


class ObjectFeatureFusion(nn.Module):
    """Object-level feature fusion (late): ``hidden [B, P + T, C]`` -> ``[B, P + T, C]``. Each of the T output tokens
    takes the image feature of its anchor's pixel (:func:`sample_image_features`; averaged over the reference views
    that see it, zeros if none), prefix tokens (CLS) take zeros; then ``Linear(2C -> C) + ReLU`` on every token."""

    def __init__(self, channels: int, legacy_transposed_lookup: bool = False):
        super().__init__()
        self.channels = channels
        self.legacy_transposed_lookup = legacy_transposed_lookup
        self.proj = nn.Linear(2 * channels, channels)
        self.act = nn.ReLU()

    def forward(
        self,
        hidden_states: torch.Tensor,
        anchor_points: torch.Tensor,
        num_prefix_tokens: int,
        image_features: torch.Tensor,
        cameras: Cameras,
    ) -> torch.Tensor:
        if hidden_states.dim() != 3 or hidden_states.shape[-1] != self.channels:
            raise ValueError(
                f"the fusion hook expects hidden states [B, P + T, {self.channels}], got {tuple(hidden_states.shape)}"
            )
        sampled, seen = sample_image_features(anchor_points, image_features, cameras, self.legacy_transposed_lookup)
        count = seen.sum(dim=1, keepdim=True).clamp(min=1).to(sampled.dtype)  # [B, 1, T]
        mapped = (sampled.sum(dim=1) / count[:, 0, :, None]).to(hidden_states.dtype)  # [B, T, C]
        if num_prefix_tokens:
            mapped = F.pad(mapped, (0, 0, num_prefix_tokens, 0))
        return self.act(self.proj(torch.cat([hidden_states, mapped], dim=-1)))


@dataclass
class LiftedPixels:
    """Reference-view pixels lifted to world points and voxelized, one per voxel (packed over the batch)."""

    features: torch.Tensor  # [M, C]
    coords: torch.Tensor  # [M, 3] continuous xyz of the chosen pixel
    grid_coords: torch.Tensor  # [M, 3] int64 cells of the scene's grid
    batch_index: torch.Tensor  # [M] int64


def lift_reference_pixels(
    image_features: torch.Tensor,
    depths: torch.Tensor,
    camera_to_world: torch.Tensor,
    intrinsics: torch.Tensor,
    coords: torch.Tensor,
    offsets: torch.Tensor,
    grid_size: float,
    random_pixel: bool = False,
    min_depth: float = 0.05,
    generator: torch.Generator | None = None,
) -> LiftedPixels:
    """Scene-level lifting of UniPre3D's ``PointFusion`` (method reference 4.2), for every scene of the batch.

    Pixels with depth > ``min_depth`` are unprojected to world points, those inside the axis-aligned box of their
    scene's points are kept and voxelized on the backbone's grid ``floor((p - scene_min) / grid_size)`` (the grid the
    backbone builds from ``coords``), and one pixel per voxel is kept: a random one when ``random_pixel`` (training,
    as the paper), else the first (view-major, then row, then column).

    Args:
        image_features: ``[B, V, C, H, W]``; depths: ``[B, V, H, W]`` metres; camera_to_world: ``[B, V, 4, 4]``;
        intrinsics: ``[B, V, 4]``; coords: ``[P, 3]`` and offsets ``[B]``: the packed scene points.
    """
    b, v, c, h, w = image_features.shape
    if depths.shape != (b, v, h, w):
        raise ValueError(
            f"`reference_depths` must have shape [B={b}, V={v}, H={h}, W={w}] (one depth map per reference image, "
            f"same size), got {tuple(depths.shape)}"
        )
    world, valid = unproject_depth_to_world(depths, camera_to_world, intrinsics, min_depth=min_depth)  # [B, V, H, W, 3]
    batch3d = offsets_to_batch_index(offsets, coords.shape[0])
    lo = scene_minimum(coords, batch3d, b)
    hi = -scene_minimum(-coords, batch3d, b)
    world = world.to(coords.dtype)
    inside = valid & ((world >= lo[:, None, None, None]) & (world <= hi[:, None, None, None])).all(-1)
    # two data-dependent sizes, two host syncs: the pixels kept (one nonzero, shared by the three gathers that a
    # boolean mask would each count again) and the voxels they fall in (unique's size)
    kept = torch.unravel_index(inside.flatten().nonzero().squeeze(1), (b, v, h, w))  # row-major, as mask indexing
    scene = kept[0]
    points = world[kept]
    feats = image_features.permute(0, 1, 3, 4, 2)[kept]
    grid = torch.floor((points - lo[scene]) / grid_size).long()
    voxel_keys, pixel_to_voxel = torch.unique(pack_voxel_keys(scene, grid), return_inverse=True)
    chosen = voxel_representatives(pixel_to_voxel, voxel_keys.numel(), random_pixel, generator)
    return LiftedPixels(feats[chosen], points[chosen], grid[chosen], scene[chosen])


class ScenePointFusion(nn.Module):
    """Scene-level point fusion (early): append the lifted pixels as voxels carrying their image features, then
    ``SubMConv3d(C, C, 3) + BatchNorm1d + ReLU`` over the union (3D voxels and lifted voxels). A lifted voxel that
    falls on an occupied cell becomes a second row of that cell, as in the paper. The fusion conv runs even when no
    pixel survives (the paper then skips it), so the network is the same function for every batch. The conv has a
    bias, as the paper's ``spconv.SubMConv3d(32, 32, 3)`` (spconv's default ``bias=True``) in ``fusion_mlps``."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.conv = SubMConv3d(channels, channels, 3, padding=1, bias=True, indice_key="fusion")
        self.norm = nn.BatchNorm1d(channels)
        self.act = nn.ReLU()

    def forward(self, voxels: SparseVoxels, lifted: LiftedPixels) -> SparseVoxels:
        if voxels.features.shape[1] != self.channels:
            raise ValueError(
                f"the fusion hook expects stem features [T, {self.channels}], got {tuple(voxels.features.shape)}"
            )
        union = voxels.append(lifted.features, lifted.grid_coords, lifted.batch_index, lifted.coords)
        x = self.conv(union)
        return x.replace_features(self.act(self.norm(x.features)))


# --------------------------------------------------------------------------------------------------- Gaussian head
class GaussianHead(nn.Module):
    """One 3D Gaussian per token (method reference 5): ``Linear(C -> h) + ReLU + Linear(h -> 11 + 3 (d+1)^2)``, split
    as [3 offset, 1 opacity, 3 scale, 4 rotation, 3 SH DC, 3 ((d+1)^2 - 1) SH rest] and activated: centre = anchor +
    ``offset_scale * tanh``, sigmoid opacity, ``exp(clamp(., scale_log_min, scale_log_max))`` scale, quaternion
    (w, x, y, z) normalised per Gaussian, raw SH (rest channel c -> coefficient 1 + c // 3, colour c % 3)."""

    def __init__(self, config: UniPre3DConfig):
        super().__init__()
        self.config = config
        in_channels = config.backbone_config.hidden_size
        self.fc1 = nn.Linear(in_channels, config.head_hidden_size)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(config.head_hidden_size, config.gaussian_channels)

    def forward(self, features: torch.Tensor, anchors: torch.Tensor) -> dict[str, torch.Tensor]:
        """``features [..., C]``, ``anchors [..., 3]`` -> dict of ``means [..., 3]``, ``opacities [...]``,
        ``scales [..., 3]``, ``quats [..., 4]`` (unit), ``sh [..., (d+1)^2, 3]``."""
        cfg = self.config
        raw = self.fc2(self.act(self.fc1(features)))
        offset, opacity, scale, quat, sh = raw.split([3, 1, 3, 4, cfg.gaussian_channels - 11], dim=-1)
        if cfg.isotropic_scale:
            scale = scale[..., :1].expand_as(scale)
        if cfg.scale_log_min is not None or cfg.scale_log_max is not None:
            scale = scale.clamp(cfg.scale_log_min, cfg.scale_log_max)
        if cfg.legacy_quaternion_normalization:
            # the paper's HEAD code normalises [B, 4, N] over its last dim: across the Gaussians of a sample
            quat = F.normalize(quat, dim=-2, eps=1e-6)
        else:
            quat = F.normalize(quat, dim=-1, eps=1e-6)
        return {
            "means": anchors.to(raw.dtype) + cfg.offset_scale * torch.tanh(offset),
            "opacities": torch.sigmoid(opacity[..., 0]),
            "scales": torch.exp(scale),
            "quats": quat,
            "sh": sh.unflatten(-1, (-1, 3)),
        }


# ----------------------------------------------------------------------------------------------------------- model
def _check_unit_range(name: str, value: torch.Tensor) -> None:
    lo, hi = (float(x) for x in torch.aminmax(value.detach()))
    if not (0.0 <= lo and hi <= 1.0 and math.isfinite(hi)):  # NaN fails every comparison
        raise ValueError(f"`{name}` must be finite and in [0, 1], got values in [{lo}, {hi}]")


def _unit_range_ok(value: torch.Tensor) -> torch.Tensor:
    """0-dim bool: the flag of :func:`_check_unit_range` (the same comparisons, on the device)."""
    lo, hi = torch.aminmax(value.detach())
    return (lo >= 0) & (hi <= 1) & torch.isfinite(hi)


def check_input_values(**tensors: torch.Tensor | None) -> None:
    """The value checks of :meth:`UniPre3DForGaussianPretraining.forward`'s inputs, in one host sync: images and
    background float in [0, 1] (the collators' output: 0..255 or NaN images would go into the loss unnoticed, issue
    19), ``*_c2w`` finite rigid transforms, ``*_intrinsics`` finite with positive focal lengths. Each error names its
    field. ``None`` fields and the shapes are left to the forward's own checks; an intrinsics tensor that is not
    ``[..., 4]`` is left to them too (its shape error comes first)."""
    checks = []
    for name, value in tensors.items():
        if value is None:
            continue
        if name.endswith("_c2w"):
            if isinstance(value, torch.Tensor):
                checks.append(
                    (rigid_transforms_ok(name, value), functools.partial(check_rigid_transforms, name, value))
                )
        elif name.endswith("_intrinsics"):
            if isinstance(value, torch.Tensor) and value.is_floating_point() and value.shape[-1:] == (4,):
                checks.append((intrinsics_ok(value), functools.partial(check_intrinsics, name, value)))
        else:
            if not isinstance(value, torch.Tensor) or not value.is_floating_point():
                raise ValueError(
                    f"`{name}` must be a floating-point tensor in [0, 1], got {getattr(value, 'dtype', type(value))}"
                )
            if value.numel():
                checks.append((_unit_range_ok(value), functools.partial(_check_unit_range, name, value)))
    run_value_checks(checks)


class UniPre3DPreTrainedModel(PreTrainedModel):
    config_class = UniPre3DConfig
    base_model_prefix = "unipre3d"
    main_input_name = "points"
    supports_gradient_checkpointing = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The paper's parts use PyTorch's default initialisation, except the scene fusion conv (trunc-normal 0.02,
        as the Pointcept convs it sits between). The backbone initialises itself."""
        if isinstance(module, SubMConv3d):
            init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif module is self.gaussian_head.fc2 and self.config.initial_scale is not None:
            init_torch_default(module)
            bias = module.bias.detach().clone()
            bias[4:7] = math.log(self.config.initial_scale)  # the scale slice of [3 offset, 1 opacity, 3 scale, ...]
            init.copy_(module.bias, bias)
        else:
            init_torch_default(module)


class UniPre3DForGaussianPretraining(UniPre3DPreTrainedModel):
    """UniPre3D: a point backbone that predicts one 3D Gaussian per output token, supervised by rendering.

    ``model.backbone`` is a plain backbone ``PreTrainedModel``: ``model.backbone.save_pretrained(d)`` and
    ``AutoModel.from_pretrained(d)`` give the pre-trained backbone. The frozen image encoder (SD VAE) and LPIPS
    network are loaded on first use and are not part of the state dict or of checkpoints.

    Example (object level, CPU, with the small trainable image encoder):

    ```python
    >>> from unipre3d_hf import UniPre3DConfig, UniPre3DForGaussianPretraining
    >>> from unipre3d_hf.data import ObjectPretrainingCollator, load_mini_dataset
    >>> config = UniPre3DConfig.from_preset("point_transformer_shapenet", image_encoder="conv")
    >>> model = UniPre3DForGaussianPretraining(config)
    >>> batch = ObjectPretrainingCollator()(list(load_mini_dataset("objects-mini").take(2)))
    >>> out = model(**batch)
    >>> out.loss.backward()
    ```
    """

    def __init__(self, config: UniPre3DConfig):
        super().__init__(config)
        self.backbone = AutoModel.from_config(config.backbone_config)
        if config.image_encoder == "none":
            self.image_encoder = self.image_projection = self.fusion = None
        else:
            if config.image_encoder == "sd-vae":
                self.image_encoder = SDVAEImageEncoder(
                    config.image_encoder_name_or_path, config.image_encoder_channels, config.image_encoder_input_range,
                    getattr(config, "image_encoder_precision", "auto"),
                )  # fmt: skip
            else:
                self.image_encoder = ConvImageEncoder(config.image_encoder_channels)
            self.image_projection = ImageFeatureProjection(config.image_encoder_channels, config.image_feature_channels)
            if config.level == "object":
                self.fusion = ObjectFeatureFusion(config.image_feature_channels, config.legacy_transposed_lookup)
            else:
                self.fusion = ScenePointFusion(config.image_feature_channels)
        self.gaussian_head = GaussianHead(config)
        self.lpips = LPIPSLoss(config.lpips_net) if config.lambda_lpips > 0 else None
        self.post_init()

    # ------------------------------------------------------------------------------------------------- helpers
    def uses_lpips(self, step: int | None) -> bool:
        """Whether the LPIPS term is active at training step ``step`` (never when ``step`` is None)."""
        return self.lpips is not None and step is not None and step >= self.config.lpips_start_step

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, V, 3, H, W]`` in [0, 1] -> projected image features ``[B, V, C_img, H, W]``."""
        if images.dim() != 5 or images.shape[2] != 3:
            raise ValueError(f"`reference_images` must have shape [B, V, 3, H, W], got {tuple(images.shape)}")
        b, v = images.shape[:2]
        features = self.image_projection(self.image_encoder(images.flatten(0, 1)))
        return features.unflatten(0, (b, v))

    def _cameras(self, c2w, intrinsics, images, name: str) -> Cameras:
        b, v, _, h, w = images.shape
        if c2w is None or intrinsics is None:
            raise ValueError(f"`{name}_c2w` [B, V, 4, 4] and `{name}_intrinsics` [B, V, 4] are required")
        if c2w.shape != (b, v, 4, 4):
            raise ValueError(f"`{name}_c2w` must have shape [B={b}, V={v}, 4, 4], got {tuple(c2w.shape)}")
        if intrinsics.shape != (b, v, 4):
            raise ValueError(f"`{name}_intrinsics` must have shape [B={b}, V={v}, 4], got {tuple(intrinsics.shape)}")
        # forward() has checked the poses and intrinsics under their own names (`check_input_values`), except while
        # compiling
        check = torch.compiler.is_compiling()
        return Cameras.from_camera_to_world(c2w.float(), intrinsics.float(), w, h, check_values=check)

    def _background(self, background: torch.Tensor | None, batch: int, device) -> torch.Tensor:
        if background is None:
            return torch.tensor(self.config.background, device=device).expand(batch, 3)
        if background.shape != (batch, 3):
            raise ValueError(f"`background` must have shape [B={batch}, 3], got {tuple(background.shape)}")
        return background.float()

    # ------------------------------------------------------------------------------------------------- forward
    def forward(
        self,
        points: torch.Tensor | None = None,
        features: torch.Tensor | None = None,
        coords: torch.Tensor | None = None,
        offsets: torch.Tensor | None = None,
        point_mask: torch.Tensor | None = None,
        reference_images: torch.Tensor | None = None,
        reference_c2w: torch.Tensor | None = None,
        reference_intrinsics: torch.Tensor | None = None,
        reference_depths: torch.Tensor | None = None,
        target_images: torch.Tensor | None = None,
        target_c2w: torch.Tensor | None = None,
        target_intrinsics: torch.Tensor | None = None,
        background: torch.Tensor | None = None,
        global_step: int | None = None,
        return_dict: bool | None = None,
        reference_view_index: torch.Tensor | None = None,
        target_view_index: torch.Tensor | None = None,
        target_depths: torch.Tensor | None = None,
        point_colors: torch.Tensor | None = None,
        segment: torch.Tensor | None = None,
        instance: torch.Tensor | None = None,
    ) -> GaussianPretrainingOutput | tuple:
        r"""
        Takes a batch of the pre-training collators (``model(**batch)``).

        Args:
            points: object level, ``[B, N, 3]`` xyz; ``features`` optional ``[B, N, C]`` extra point features.
            coords, features, offsets: scene level, packed ``[P, 3]``, ``[P, C]``, ``[B]`` (cumulative counts).
            point_mask: object level, ``[B, N]`` False for padding repeats; their Gaussians are masked out when the
                backbone outputs one token per point (PointMLP, PCM).
            reference_images: ``[B, Vr, 3, H, W]`` in [0, 1]; reference_c2w ``[B, Vr, 4, 4]`` (OpenCV axes);
                reference_intrinsics ``[B, Vr, 4]`` (fx, fy, cx, cy); reference_depths (scene level) ``[B, Vr, H, W]``
                metres. Needed unless ``image_encoder="none"``.
            target_images, target_c2w, target_intrinsics: the supervision views, ``[B, Vs, ...]`` as above. Without
                target cameras nothing is rendered (only the Gaussians are returned).
            background: ``[B, 3]`` render background (default ``config.background``).
            global_step: the training step, which switches LPIPS on at ``config.lpips_start_step``.
            reference_view_index, target_view_index, target_depths, point_colors, segment, instance: collator keys
                that pre-training does not use; accepted so that ``model(**batch)`` works.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        cfg = self.config
        if not torch.compiler.is_compiling():  # data-dependent checks would break graphs
            check_input_values(
                reference_images=reference_images, target_images=target_images, background=background,
                reference_c2w=reference_c2w, target_c2w=target_c2w,
                reference_intrinsics=reference_intrinsics, target_intrinsics=target_intrinsics,
            )  # fmt: skip
        if cfg.level == "object":
            if points is None:
                raise ValueError("an object-level model needs `points` [B, N, 3]")
            batch_size, device = points.shape[0], points.device
        else:
            if coords is None or features is None or offsets is None:
                raise ValueError("a scene-level model needs packed `coords` [P, 3], `features` [P, C], `offsets` [B]")
            batch_size, device = offsets.shape[0], coords.device

        hook = None
        if self.fusion is not None:
            if reference_images is None:
                raise ValueError(
                    f"`reference_images` [B, Vr, 3, H, W] are needed by image_encoder={cfg.image_encoder!r}"
                )
            ref_cameras = self._cameras(reference_c2w, reference_intrinsics, reference_images, "reference")
            image_features = self.encode_images(reference_images)
            if cfg.level == "object":

                def hook(hidden_states, anchor_points, num_prefix_tokens):
                    return self.fusion(hidden_states, anchor_points, num_prefix_tokens, image_features, ref_cameras)

            else:
                if reference_depths is None:
                    raise ValueError("scene-level point fusion needs `reference_depths` [B, Vr, H, W] (metres)")
                lifted = lift_reference_pixels(
                    image_features, reference_depths.to(image_features.dtype), ref_cameras.camera_to_world,
                    ref_cameras.intrinsics, coords, offsets, cfg.backbone_config.grid_size, random_pixel=self.training,
                )  # fmt: skip

                def hook(voxels):
                    return self.fusion(voxels, lifted)

        if cfg.level == "object":
            out: PointBackboneOutput = self.backbone(points, features=features, fusion_hook=hook, return_dict=True)
        else:
            out = self.backbone(coords, features, offsets, fusion_hook=hook, return_dict=True)
        # the head runs in float32 also under bf16 autocast: centres are anchors (world units) plus small offsets, which
        # bf16's 8-bit mantissa would round to ~0.4% of the coordinate, and exp() of the log-scale amplifies its error
        with torch.autocast(device.type, enabled=False):
            params = self.gaussian_head(out.last_hidden_state.float(), out.anchor_points.float())
        if cfg.level == "object":
            mask = None
            if point_mask is not None and out.anchor_points.shape[1] == points.shape[1]:
                mask = point_mask.to(device=device, dtype=torch.bool)
            gaussians = Gaussians(
                params["means"], params["quats"], params["scales"], params["opacities"], params["sh"], mask
            )
        else:
            gaussians = Gaussians.from_packed(
                params["means"], params["quats"], params["scales"], params["opacities"], params["sh"],
                out.batch_index, batch_size,
            )  # fmt: skip

        rendered = alphas = loss = recon = lpips_value = None
        if target_c2w is not None:
            if target_images is None:
                raise ValueError("`target_images` [B, Vs, 3, H, W] are needed to render (they give the image size)")
            if target_images.dim() != 5 or target_images.shape[:1] != (batch_size,) or target_images.shape[2] != 3:
                raise ValueError(
                    f"`target_images` must have shape [B={batch_size}, Vs, 3, H, W], got {tuple(target_images.shape)}"
                )
            cameras = self._cameras(target_c2w, target_intrinsics, target_images, "target")
            bg = self._background(background, batch_size, device)
            with torch.autocast(device.type, enabled=False):  # rasterize in float32 (gsplat needs it)
                result = render(gaussians, cameras, bg, backend=cfg.render_backend, check_inputs=False)
            rendered = result.colors.permute(0, 1, 4, 2, 3)
            alphas = result.alphas
            target = target_images.to(rendered.dtype)
            recon = reconstruction_loss(
                rendered, target, cfg.loss_type, bg, cfg.foreground_loss_rate, cfg.background_loss_rate
            )
            loss = recon
            if self.uses_lpips(global_step):
                lpips_value = self.lpips(rendered, target)
                loss = loss + cfg.lambda_lpips * lpips_value
        output = GaussianPretrainingOutput(
            loss=loss,
            reconstruction_loss=recon,
            lpips_loss=lpips_value,
            rendered_images=rendered,
            target_images=target_images,
            rendered_alphas=alphas,
            gaussians=gaussians,
            last_hidden_state=out.last_hidden_state,
        )
        return output if return_dict else output.to_tuple()


__all__ = [
    "ConvImageEncoder",
    "GaussianHead",
    "ImageFeatureProjection",
    "LiftedPixels",
    "ObjectFeatureFusion",
    "SDVAEImageEncoder",
    "ScenePointFusion",
    "UniPre3DForGaussianPretraining",
    "UniPre3DPreTrainedModel",
    "lift_reference_pixels",
    "load_sd_vae",
    "sample_image_features",
    "vae_features",
]
