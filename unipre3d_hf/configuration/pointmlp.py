"""PointMLP configuration (Ma et al., ICLR 2022) as UniPre3D pre-trains it: encoder plus a feature-propagation
decoder to per-point features. Defaults are the paper's settings (method reference section 2.2)."""

from __future__ import annotations

from transformers import PretrainedConfig

from .validation import check_floats, check_ints


def _check_lengths(config_name: str, **lists) -> int:
    lengths = {name: len(value) for name, value in lists.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"{config_name}: per-stage lists must have the same length, got {lengths}")
    return next(iter(lengths.values()))


class PointMLPConfig(PretrainedConfig):
    r"""
    Args:
        use_height (`bool`, defaults to `True`): append the gravity-height channel ``p[axis] - min(p[axis])`` of each
            cloud to its input features (the paper feeds xyz + height, 4 channels).
        height_axis (`int`, defaults to 2): the axis of ``points`` that ``use_height`` measures along.
        feature_channels (`int`, defaults to 0): extra per-point input features the caller passes as ``features``.
        embed_dim (`int`, defaults to 64): width of the point embedding.
        dim_expansion (`list[int]`): width multiplier of each encoder stage (64 -> 128 -> 256 -> 512 -> 1024).
        reducers (`list[int]`): point-count divisor of each stage (1024 -> 512 -> 256 -> 128 -> 64).
        k_neighbors (`list[int]`): kNN group size of each stage.
        pre_blocks, pos_blocks (`list[int]`): residual blocks before / after the max-pool of each stage.
        res_expansion (`float`): hidden width ratio of the residual blocks.
        bias (`bool`): biases in the 1x1 convolutions.
        use_xyz (`bool`): concatenate relative xyz to grouped features.
        normalize (`str`): "anchor" (subtract the group's anchor feature) or "center" (subtract the group mean).
        decoder_dims, decoder_blocks (`list[int]`): widths and residual blocks of the feature-propagation layers,
            deepest first; the last width is the output width (128).
        legacy_sampling (`bool`, defaults to `False`): reproduce the paper code's FPS/kNN on the 4-channel xyz+height
            buffer (its CUDA FPS read that buffer with a stride of 3 floats; kNN counted height twice). Only for
            parity with released checkpoints; needs ``use_height`` and no extra features.
        initializer_range (`float`): std of the truncated-normal init of convolution weights.
    """

    model_type = "unipre3d_pointmlp"
    fusion_point = "late"

    def __init__(
        self,
        use_height: bool = True,
        height_axis: int = 2,
        feature_channels: int = 0,
        embed_dim: int = 64,
        dim_expansion: list[int] = (2, 2, 2, 2),
        reducers: list[int] = (2, 2, 2, 2),
        k_neighbors: list[int] = (24, 24, 24, 24),
        pre_blocks: list[int] = (2, 2, 2, 2),
        pos_blocks: list[int] = (2, 2, 2, 2),
        res_expansion: float = 1.0,
        bias: bool = False,
        use_xyz: bool = False,
        normalize: str = "anchor",
        decoder_dims: list[int] = (512, 256, 128, 128),
        decoder_blocks: list[int] = (2, 2, 2, 2),
        legacy_sampling: bool = False,
        initializer_range: float = 0.02,
        **kwargs,
    ):
        check_ints("PointMLPConfig", minimum=0, feature_channels=feature_channels, height_axis=height_axis)
        check_ints(
            "PointMLPConfig", embed_dim=embed_dim, dim_expansion=dim_expansion, reducers=reducers,
            k_neighbors=k_neighbors, pos_blocks=pos_blocks, decoder_dims=decoder_dims,
        )  # fmt: skip
        check_ints("PointMLPConfig", minimum=0, pre_blocks=pre_blocks, decoder_blocks=decoder_blocks)
        check_floats("PointMLPConfig", strict=True, res_expansion=res_expansion)
        check_floats("PointMLPConfig", initializer_range=initializer_range)
        self.use_height = use_height
        self.height_axis = height_axis
        self.feature_channels = feature_channels
        self.embed_dim = embed_dim
        self.dim_expansion = list(dim_expansion)
        self.reducers = list(reducers)
        self.k_neighbors = list(k_neighbors)
        self.pre_blocks = list(pre_blocks)
        self.pos_blocks = list(pos_blocks)
        self.res_expansion = res_expansion
        self.bias = bias
        self.use_xyz = use_xyz
        self.normalize = normalize
        self.decoder_dims = list(decoder_dims)
        self.decoder_blocks = list(decoder_blocks)
        self.legacy_sampling = legacy_sampling
        self.initializer_range = initializer_range
        _check_lengths(
            "PointMLPConfig",
            dim_expansion=self.dim_expansion,
            reducers=self.reducers,
            k_neighbors=self.k_neighbors,
            pre_blocks=self.pre_blocks,
            pos_blocks=self.pos_blocks,
            decoder_dims=self.decoder_dims,
            decoder_blocks=self.decoder_blocks,
        )
        if normalize not in ("anchor", "center"):
            raise ValueError(f"PointMLPConfig: `normalize` must be 'anchor' or 'center', got {normalize!r}")
        if legacy_sampling and (not use_height or feature_channels):
            raise ValueError("PointMLPConfig: `legacy_sampling` reproduces the 4-channel xyz+height buffer only")
        super().__init__(**kwargs)

    @property
    def num_stages(self) -> int:
        return len(self.dim_expansion)

    @property
    def in_channels(self) -> int:
        return 3 + int(self.use_height) + self.feature_channels

    @property
    def hidden_size(self) -> int:
        return self.decoder_dims[-1]

    @property
    def min_points(self) -> int:
        """Smallest cloud the encoder accepts: every stage keeps >= 1 point and >= k neighbours to group."""
        n = 1
        for reducer, k in zip(reversed(self.reducers), reversed(self.k_neighbors), strict=True):
            n = max(n * reducer, k)
        return n

    @property
    def fusion_channels(self) -> int:
        """Width of the hidden states handed to the fusion hook (the last decoder layer)."""
        return self.decoder_dims[-1]


__all__ = ["PointMLPConfig"]
