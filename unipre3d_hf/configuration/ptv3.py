"""Configuration of the Point Transformer V3 scene backbone (Pointcept PT-v3m1, as UniPre3D pre-trains it, and the
fields that Pointcept's PT-v3m2 / Sonata checkpoints need)."""

from __future__ import annotations

from transformers import PretrainedConfig

from .validation import check_floats, check_ints

_ORDERS = ("z", "z-trans", "hilbert", "hilbert-trans")

# The larger configuration of UniPre3D's first release (commit 3a54e92); see `PTv3Config.first_release()`.
PTV3_FIRST_RELEASE_KWARGS = {
    "enc_depths": (3, 3, 3, 6, 3),
    "enc_channels": (48, 96, 192, 384, 512),
    "enc_num_head": (3, 6, 12, 24, 32),
    "enc_patch_size": (1024, 1024, 1024, 1024, 1024),
    "dec_depths": (3, 3, 3, 3),
    "dec_channels": (64, 96, 192, 384),
    "dec_num_head": (4, 6, 12, 24),
    "dec_patch_size": (1024, 1024, 1024, 1024),
}


class PTv3Config(PretrainedConfig):
    r"""Architecture of [`PTv3Model`]. Defaults are the paper's code at HEAD (method reference section 2.7: patch 48);
    `PTv3Config.first_release()` gives the first release's larger configuration (patch 1024, 97.3M parameters).

    Args:
        in_channels (`int`, *optional*, defaults to 6): input features per point.
        order (`tuple[str]`, *optional*, defaults to `("z", "z-trans")`):
            Serialization orders, used by the blocks in turn (`"z"`, `"z-trans"`, `"hilbert"`, `"hilbert-trans"`).
        stride (`tuple[int]`, *optional*, defaults to `(2, 2, 2, 2)`): pooling stride between encoder stages
            (powers of 2).
        enc_depths (`tuple[int]`, *optional*, defaults to `(2, 2, 2, 6, 2)`): blocks per encoder stage.
        enc_channels (`tuple[int]`, *optional*, defaults to `(32, 64, 128, 256, 512)`): encoder widths (the stem
            outputs `enc_channels[0]`).
        enc_num_head (`tuple[int]`, *optional*, defaults to `(2, 4, 8, 16, 32)`): attention heads per encoder stage.
        enc_patch_size (`tuple[int]`, *optional*, defaults to `(48,) * 5`): patch size per encoder stage.
        dec_depths (`tuple[int]`, *optional*, defaults to `(2, 2, 2, 2)`): blocks per decoder stage (shallowest first).
        dec_channels (`tuple[int]`, *optional*, defaults to `(64, 64, 128, 256)`): decoder widths; the output width
            is `dec_channels[0]`.
        dec_num_head (`tuple[int]`, *optional*, defaults to `(4, 4, 8, 16)`): heads per decoder stage.
        dec_patch_size (`tuple[int]`, *optional*, defaults to `(48,) * 4`): patch size per decoder stage.
        mlp_ratio (`float`, *optional*, defaults to 4): MLP hidden width / channels.
        qkv_bias (`bool`, *optional*, defaults to `True`): bias of the qkv projection.
        qk_scale (`float`, *optional*): softmax scale (default `head_dim ** -0.5`).
        proj_drop (`float`, *optional*, defaults to 0.0): dropout after the attention projection and the MLP.
        drop_path (`float`, *optional*, defaults to 0.3): stochastic depth rate, linear over the blocks.
        pre_norm (`bool`, *optional*, defaults to `True`): LayerNorm before (True) or after attention and MLP.
        shuffle_orders (`bool`, *optional*, defaults to `True`): shuffle which order each block uses, per forward and
            after each pooling, in training (Pointcept also shuffles in eval; we keep eval deterministic).
        stem_kernel_size (`int`, *optional*, defaults to 5): kernel of the stem's submanifold conv.
        bn_eps (`float`, *optional*, defaults to 1e-3): BatchNorm epsilon.
        bn_momentum (`float`, *optional*, defaults to 0.01): BatchNorm momentum.
        layer_norm_eps (`float`, *optional*, defaults to 1e-5): LayerNorm epsilon.
        grid_size (`float`, *optional*, defaults to 0.02): voxel edge in metres.
        sparse_conv_backend (`str`, *optional*, defaults to `"auto"`): `"auto"`, `"torch"` or `"spconv"`.
        attention_backend (`str`, *optional*, defaults to `"auto"`): `"auto"`, `"torch"` (padded SDPA),
            `"torch_varlen"` or `"flash_attn"`.
        legacy_unpooling_cpe (`bool`, *optional*, defaults to `False`): Pointcept PT-v3m1's serialized unpooling,
            which UniPre3D vendors: the first block of every decoder stage runs its CPE conv on `proj_skip(skip)`
            alone (PT-v3m1 adds the upsampled coarse features to the point features but not to the sparse tensor the
            conv reads), while its residual and attention use the sum. Every PT-v3m1 checkpoint (UniPre3D's
            included) needs `True`; the default is PT-v3m2 / Sonata's, where the conv also reads the sum.
        stem_type (`str`, *optional*, defaults to `"conv"`): the embedding: `"conv"` (PT-v3m1: SubMConv3d of
            `stem_kernel_size`, no bias, then norm and GELU) or `"linear"` (PT-v3m2 / Sonata: a per-voxel Linear with
            bias, then norm and GELU).
        norm_type (`str`, *optional*, defaults to `"batch"`): the norm of the stem, the pooling and the unpooling:
            `"batch"` (PT-v3m1's BatchNorm1d) or `"layer"` (PT-v3m2's LayerNorm). The blocks always use LayerNorm.
        pooling_type (`str`, *optional*, defaults to `"serialized"`): `"serialized"` (PT-v3m1's `SerializedPooling`:
            clusters are the order-0 codes shifted right by `3 log2(stride)` bits, and the coarse level reuses the
            shifted codes) or `"grid"` (PT-v3m2's `GridPooling`: clusters are the cells of `grid // stride`, and the
            coarse level is serialized afresh from its grid coordinates, in `order`'s order). Both merge the same
            cells; they differ in the coarse level's Hilbert codes (a fresh code at the level's own depth is not the
            fine code shifted) and `"grid"` allows any integer stride >= 2.
        serialization_depth (`int`, *optional*, defaults to 16): bits per axis of the serialization codes. `None` is
            Pointcept's `int(grid.max() + 1).bit_length()` over the whole batch, computed anew at every serialization
            (the input level, and each grid pooling): the Hilbert orders then depend on the batch, as in Pointcept.
        layer_scale (`float`, *optional*): PT-v3m2's LayerScale: when set, a learned per-channel `gamma` (initialised
            to this value) scales the attention and the MLP outputs of every block before their residual additions.
        enc_mode (`bool`, *optional*, defaults to `False`): encoder only (PT-v3m2's `enc_mode`, Sonata's released
            weights): no decoder is built; the output is the encoder's features mapped back to the input voxels
            through the pooling clusters (see `enc_upcast_stages`).
        enc_upcast_stages (`int`, *optional*): with `enc_mode`, how many of the deepest encoder stages are
            concatenated on the way back up (shallowest first); the rest of the way the features are only copied to
            the finer voxels. `None` concatenates every stage (Pointcept's `DefaultSegmentorV2`, which Sonata's
            linear probing and fine-tuning use: 1232 channels for Sonata); 3 is Sonata's demo / pre-training head
            input (1088 channels); 1 copies the last stage alone.
        mask_token (`bool`, *optional*, defaults to `False`): PT-v3m2's learned mask embedding (`[1, enc_channels[0]]`):
            the embedding of the voxels that `forward`'s `mask` marks is replaced by it (Sonata's pre-training).
        initializer_range (`float`, *optional*, defaults to 0.02): std of the truncated-normal init of linear and
            sparse-conv weights (Pointcept: 0.02).

    Example:

    ```python
    >>> from unipre3d_hf import PTv3Config, PTv3Model
    >>> model = PTv3Model(PTv3Config())                    # the paper's configuration (46.2M parameters)
    >>> large = PTv3Model(PTv3Config.first_release())      # the first release's (97.3M parameters)
    ```
    """

    model_type = "unipre3d_ptv3"
    fusion_point = "early"

    def __init__(
        self,
        in_channels: int = 6,
        order: tuple[str, ...] | list[str] = ("z", "z-trans"),
        stride: tuple[int, ...] | list[int] = (2, 2, 2, 2),
        enc_depths: tuple[int, ...] | list[int] = (2, 2, 2, 6, 2),
        enc_channels: tuple[int, ...] | list[int] = (32, 64, 128, 256, 512),
        enc_num_head: tuple[int, ...] | list[int] = (2, 4, 8, 16, 32),
        enc_patch_size: tuple[int, ...] | list[int] = (48, 48, 48, 48, 48),
        dec_depths: tuple[int, ...] | list[int] = (2, 2, 2, 2),
        dec_channels: tuple[int, ...] | list[int] = (64, 64, 128, 256),
        dec_num_head: tuple[int, ...] | list[int] = (4, 4, 8, 16),
        dec_patch_size: tuple[int, ...] | list[int] = (48, 48, 48, 48),
        mlp_ratio: float = 4,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        proj_drop: float = 0.0,
        drop_path: float = 0.3,
        pre_norm: bool = True,
        shuffle_orders: bool = True,
        stem_kernel_size: int = 5,
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.01,
        layer_norm_eps: float = 1e-5,
        grid_size: float = 0.02,
        sparse_conv_backend: str = "auto",
        attention_backend: str = "auto",
        legacy_unpooling_cpe: bool = False,
        stem_type: str = "conv",
        norm_type: str = "batch",
        pooling_type: str = "serialized",
        serialization_depth: int | None = 16,
        layer_scale: float | None = None,
        enc_mode: bool = False,
        enc_upcast_stages: int | None = None,
        mask_token: bool = False,
        initializer_range: float = 0.02,
        **kwargs,
    ):
        check_ints(
            "PTv3Config", in_channels=in_channels, stride=stride, enc_depths=enc_depths, enc_channels=enc_channels,
            enc_num_head=enc_num_head, enc_patch_size=enc_patch_size, dec_depths=dec_depths,
            dec_channels=dec_channels, dec_num_head=dec_num_head, dec_patch_size=dec_patch_size,
            stem_kernel_size=stem_kernel_size,
        )  # fmt: skip
        check_floats(
            "PTv3Config", strict=True, mlp_ratio=mlp_ratio, bn_eps=bn_eps, layer_norm_eps=layer_norm_eps,
            grid_size=grid_size,
        )  # fmt: skip
        check_floats("PTv3Config", maximum=1.0, proj_drop=proj_drop, drop_path=drop_path, bn_momentum=bn_momentum)
        check_floats("PTv3Config", initializer_range=initializer_range)
        order = [order] if isinstance(order, str) else list(order)
        if not order or any(o not in _ORDERS for o in order):
            raise ValueError(f"`order` must be a non-empty list of {_ORDERS}, got {order}")
        num_stages = len(enc_depths)
        for name, value, allowed in (
            ("stem_type", stem_type, ("conv", "linear")),
            ("norm_type", norm_type, ("batch", "layer")),
            ("pooling_type", pooling_type, ("serialized", "grid")),
        ):
            if value not in allowed:
                raise ValueError(f"`{name}` must be one of {allowed}, got {value!r}")
        if serialization_depth is not None and (
            not isinstance(serialization_depth, int) or not 1 <= serialization_depth <= 16
        ):
            raise ValueError(f"`serialization_depth` must be an int in [1, 16] or None, got {serialization_depth!r}")
        if layer_scale is not None:
            check_floats("PTv3Config", strict=True, layer_scale=layer_scale)
        if enc_upcast_stages is not None and (
            not isinstance(enc_upcast_stages, int) or not 1 <= enc_upcast_stages <= num_stages
        ):
            raise ValueError(
                f"`enc_upcast_stages` must be an int in [1, {num_stages}] (the encoder stages) or None, "
                f"got {enc_upcast_stages!r}"
            )
        for name, value, n in (
            ("stride", stride, num_stages - 1),
            ("enc_channels", enc_channels, num_stages),
            ("enc_num_head", enc_num_head, num_stages),
            ("enc_patch_size", enc_patch_size, num_stages),
            ("dec_depths", dec_depths, num_stages - 1),
            ("dec_channels", dec_channels, num_stages - 1),
            ("dec_num_head", dec_num_head, num_stages - 1),
            ("dec_patch_size", dec_patch_size, num_stages - 1),
        ):
            if len(value) != n and not (enc_mode and name.startswith("dec_") and len(value) == 0):
                raise ValueError(f"`{name}` must have {n} entries for {num_stages} encoder stages, got {len(value)}")
        if any(s < 2 or (pooling_type == "serialized" and s & (s - 1)) for s in stride):
            what = "powers of 2 (>= 2) for serialized pooling" if pooling_type == "serialized" else ">= 2"
            raise ValueError(f"`stride` entries must be {what}, got {list(stride)}")
        for name, chans, heads in (("enc", enc_channels, enc_num_head), ("dec", dec_channels, dec_num_head)):
            if any(c % h for c, h in zip(chans, heads)):
                raise ValueError(f"`{name}_channels` must be divisible by `{name}_num_head`, got {chans} / {heads}")
        if stem_kernel_size % 2 != 1:
            raise ValueError(f"`stem_kernel_size` must be odd, got {stem_kernel_size}")
        if grid_size <= 0:
            raise ValueError(f"`grid_size` must be positive, got {grid_size}")
        if sparse_conv_backend not in ("auto", "torch", "spconv"):
            raise ValueError(f"`sparse_conv_backend` must be 'auto', 'torch' or 'spconv', got {sparse_conv_backend!r}")
        if attention_backend not in ("auto", "torch", "torch_varlen", "flash_attn"):
            raise ValueError(
                "`attention_backend` must be 'auto', 'torch', 'torch_varlen' or 'flash_attn', "
                f"got {attention_backend!r}"
            )
        self.in_channels = in_channels
        self.order = order
        self.stride = list(stride)
        self.enc_depths = list(enc_depths)
        self.enc_channels = list(enc_channels)
        self.enc_num_head = list(enc_num_head)
        self.enc_patch_size = list(enc_patch_size)
        self.dec_depths = list(dec_depths)
        self.dec_channels = list(dec_channels)
        self.dec_num_head = list(dec_num_head)
        self.dec_patch_size = list(dec_patch_size)
        self.mlp_ratio = mlp_ratio
        self.qkv_bias = qkv_bias
        self.qk_scale = qk_scale
        self.proj_drop = proj_drop
        self.drop_path = drop_path
        self.pre_norm = pre_norm
        self.shuffle_orders = shuffle_orders
        self.stem_kernel_size = stem_kernel_size
        self.bn_eps = bn_eps
        self.bn_momentum = bn_momentum
        self.layer_norm_eps = layer_norm_eps
        self.grid_size = grid_size
        self.sparse_conv_backend = sparse_conv_backend
        self.attention_backend = attention_backend
        self.legacy_unpooling_cpe = legacy_unpooling_cpe
        self.stem_type = stem_type
        self.norm_type = norm_type
        self.pooling_type = pooling_type
        self.serialization_depth = serialization_depth
        self.layer_scale = layer_scale
        self.enc_mode = bool(enc_mode)
        self.enc_upcast_stages = enc_upcast_stages
        self.mask_token = bool(mask_token)
        self.initializer_range = initializer_range
        super().__init__(**kwargs)

    @property
    def hidden_size(self) -> int:
        """Width of `last_hidden_state`: `dec_channels[0]`, or with `enc_mode` the sum of the concatenated encoder
        stages' widths (`enc_upcast_stages`)."""
        if self.enc_mode:
            return sum(self.enc_channels[-(self.enc_upcast_stages or len(self.enc_channels)) :])
        return self.dec_channels[0] if self.dec_channels else self.enc_channels[-1]

    @classmethod
    def first_release(cls, **kwargs) -> PTv3Config:
        """The larger configuration of UniPre3D's first release (`3a54e92`): enc depths (3,3,3,6,3), channels
        (48,96,192,384,512), heads (3,6,12,24,32); dec depths (3,3,3,3), channels (64,96,192,384), heads
        (4,6,12,24); patch 1024 everywhere. 97,317,552 parameters. The repository does not say which configuration
        produced the reported numbers. `kwargs` override fields."""
        return cls(**{**PTV3_FIRST_RELEASE_KWARGS, **kwargs})

    @property
    def fusion_channels(self) -> int:
        """Width of the hidden states handed to the fusion hook (the stem embedding)."""
        return self.enc_channels[0]


__all__ = ["PTV3_FIRST_RELEASE_KWARGS", "PTv3Config"]
