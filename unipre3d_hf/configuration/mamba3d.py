"""Mamba3D configuration (Han et al., ACM MM 2024) as UniPre3D pre-trains it (method reference section 2.4)."""

from __future__ import annotations

from transformers import PretrainedConfig

from .validation import check_floats, check_ints

SCAN_BACKENDS = ("auto", "torch", "mamba_ssm")


class Mamba3DConfig(PretrainedConfig):
    r"""
    Args:
        feature_channels (`int`, defaults to 0): extra per-point input features passed as ``features``.
        num_groups (`int`, defaults to 128), group_size (`int`, defaults to 32): FPS patch centres and kNN patch size.
        encoder_dims (`int`, defaults to 384): mini-PointNet output width (= hidden_size; no reduce layer).
        hidden_size (`int`, defaults to 384).
        num_hidden_layers (`int`, defaults to 16): blocks of [LNP local aggregation, bidirectional Mamba]; no FFN.
        drop_path_rate (`float`, defaults to 0.1): linear from 0 over the blocks.
        lnp_k (`int`, defaults to 4): neighbours (patch centres, itself included) of the Local Norm Pooling block.
        d_state, d_conv, expand, dt_rank: Mamba mixer sizes (16, 4, 2, "auto" = ceil(hidden/16) = 24).
        bimamba_type (`str`, defaults to "v4"): "v4" = forward SSM + a second SSM over the channel-flipped input
            (Mamba3D's bidirectional scheme); "none" = a unidirectional Mamba.
        lnp_std_over_batch (`bool`, defaults to `False`): the paper code divides the LNP neighbourhoods by one std
            over the whole batch, which makes a sample's output depend on the other samples; by default the std is
            taken per sample. Set `True` only for parity with released checkpoints.
        legacy_cls_pos_anchors (`bool`, defaults to `False`): the paper code returned the CLS positional embedding
            instead of the patch centres as Gaussian anchors (method reference 13, #4); `True` returns its first 3
            values for every token, for parity only.
        legacy_fps (`bool`, defaults to `False`): sample the patch centres as pointnet2_ops' CUDA FPS kernel does
            (``unipre3d_hf.ops.sampling.farthest_point_sample_pointnet2``): points with |p|^2 <= 1e-3 are never
            picked (after the first) and their distance is never updated, so objects whose surface passes through
            the origin lose those points as centres. For parity with released checkpoints.
        selective_scan_backend (`str`, defaults to "auto"): "auto" (mamba-ssm on CUDA when installed, else torch),
            "torch" or "mamba_ssm".
        layer_norm_eps (`float`, defaults to 1e-5), initializer_range (`float`, defaults to 0.02).
    """

    model_type = "unipre3d_mamba3d"
    fusion_point = "late"

    def __init__(
        self,
        feature_channels: int = 0,
        num_groups: int = 128,
        group_size: int = 32,
        encoder_dims: int = 384,
        hidden_size: int = 384,
        num_hidden_layers: int = 16,
        drop_path_rate: float = 0.1,
        lnp_k: int = 4,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        bimamba_type: str = "v4",
        lnp_std_over_batch: bool = False,
        legacy_cls_pos_anchors: bool = False,
        legacy_fps: bool = False,
        selective_scan_backend: str = "auto",
        layer_norm_eps: float = 1e-5,
        initializer_range: float = 0.02,
        **kwargs,
    ):
        check_ints("Mamba3DConfig", minimum=0, feature_channels=feature_channels)
        check_ints(
            "Mamba3DConfig", num_groups=num_groups, group_size=group_size, encoder_dims=encoder_dims,
            hidden_size=hidden_size, num_hidden_layers=num_hidden_layers, lnp_k=lnp_k, d_state=d_state, d_conv=d_conv,
            expand=expand,
        )  # fmt: skip
        if dt_rank != "auto":
            check_ints("Mamba3DConfig", dt_rank=dt_rank)
        check_floats("Mamba3DConfig", strict=True, layer_norm_eps=layer_norm_eps)
        check_floats("Mamba3DConfig", maximum=1.0, drop_path_rate=drop_path_rate)
        check_floats("Mamba3DConfig", initializer_range=initializer_range)
        if bimamba_type not in ("v4", "none"):
            raise ValueError(f"Mamba3DConfig: `bimamba_type` must be 'v4' or 'none', got {bimamba_type!r}")
        if selective_scan_backend not in SCAN_BACKENDS:
            raise ValueError(
                f"Mamba3DConfig: `selective_scan_backend` must be one of {SCAN_BACKENDS}, "
                f"got {selective_scan_backend!r}"
            )
        if encoder_dims != hidden_size:
            raise ValueError("Mamba3DConfig: `encoder_dims` must equal `hidden_size` (Mamba3D has no reduce layer)")
        if lnp_k > num_groups:
            raise ValueError(f"Mamba3DConfig: `lnp_k` ({lnp_k}) must be <= `num_groups` ({num_groups})")
        self.feature_channels = feature_channels
        self.num_groups = num_groups
        self.group_size = group_size
        self.encoder_dims = encoder_dims
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.drop_path_rate = drop_path_rate
        self.lnp_k = lnp_k
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.dt_rank = dt_rank
        self.bimamba_type = bimamba_type
        self.lnp_std_over_batch = lnp_std_over_batch
        self.legacy_cls_pos_anchors = legacy_cls_pos_anchors
        self.legacy_fps = legacy_fps
        self.selective_scan_backend = selective_scan_backend
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        super().__init__(**kwargs)

    @property
    def min_points(self) -> int:
        return max(self.num_groups, self.group_size)

    @property
    def fusion_channels(self) -> int:
        """Width of the hidden states handed to the fusion hook (the last block)."""
        return self.hidden_size


__all__ = ["Mamba3DConfig"]
