"""Configuration of the standard point Transformer (Point-BERT / Point-MAE style) that UniPre3D pre-trains.
Defaults are the paper's settings (method reference section 2.3)."""

from __future__ import annotations

from transformers import PretrainedConfig

from .validation import check_floats, check_ints


class PointTransformerConfig(PretrainedConfig):
    r"""
    Args:
        feature_channels (`int`, defaults to 0): extra per-point input features the caller passes as ``features``
            (grouped next to the relative xyz).
        num_groups (`int`, defaults to 128): patch centres picked by farthest point sampling.
        group_size (`int`, defaults to 32): points per patch.
        grouper (`str`, defaults to "ball_query"): "ball_query" (radius ``group_radius``, PointNet++ padding) or "knn".
        group_radius (`float`, defaults to 0.1): ball-query radius, in the units of ``points``.
        encoder_dims (`int`, defaults to 384): output width of the mini-PointNet patch encoder.
        hidden_size (`int`, defaults to 384): Transformer width.
        num_hidden_layers (`int`, defaults to 16): pre-norm blocks.
        num_attention_heads (`int`, defaults to 6).
        mlp_ratio (`float`, defaults to 4.0).
        qkv_bias (`bool`, defaults to `False`).
        drop_path_rate (`float`, defaults to 0.1): stochastic depth, linear from 0 over the blocks.
        layer_norm_eps (`float`, defaults to 1e-5).
        initializer_range (`float`, defaults to 0.02): std of the truncated-normal init.
    The positional embedding (Linear 3->128, GELU, Linear 128->hidden) of the patch centres is re-added at every
    block input, as in Point-BERT.
    """

    model_type = "unipre3d_point_transformer"
    fusion_point = "late"

    def __init__(
        self,
        feature_channels: int = 0,
        num_groups: int = 128,
        group_size: int = 32,
        grouper: str = "ball_query",
        group_radius: float = 0.1,
        encoder_dims: int = 384,
        hidden_size: int = 384,
        num_hidden_layers: int = 16,
        num_attention_heads: int = 6,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        drop_path_rate: float = 0.1,
        layer_norm_eps: float = 1e-5,
        initializer_range: float = 0.02,
        **kwargs,
    ):
        check_ints("PointTransformerConfig", minimum=0, feature_channels=feature_channels)
        check_ints(
            "PointTransformerConfig", num_groups=num_groups, group_size=group_size, encoder_dims=encoder_dims,
            hidden_size=hidden_size, num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
        )  # fmt: skip
        check_floats(
            "PointTransformerConfig", strict=True, group_radius=group_radius, mlp_ratio=mlp_ratio,
            layer_norm_eps=layer_norm_eps,
        )  # fmt: skip
        check_floats("PointTransformerConfig", maximum=1.0, drop_path_rate=drop_path_rate)
        check_floats("PointTransformerConfig", initializer_range=initializer_range)
        if grouper not in ("ball_query", "knn"):
            raise ValueError(f"PointTransformerConfig: `grouper` must be 'ball_query' or 'knn', got {grouper!r}")
        if hidden_size % num_attention_heads:
            raise ValueError(
                f"PointTransformerConfig: `hidden_size` ({hidden_size}) must be divisible by "
                f"`num_attention_heads` ({num_attention_heads})"
            )
        self.feature_channels = feature_channels
        self.num_groups = num_groups
        self.group_size = group_size
        self.grouper = grouper
        self.group_radius = group_radius
        self.encoder_dims = encoder_dims
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.mlp_ratio = mlp_ratio
        self.qkv_bias = qkv_bias
        self.drop_path_rate = drop_path_rate
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        super().__init__(**kwargs)

    @property
    def min_points(self) -> int:
        return max(self.num_groups, self.group_size if self.grouper == "knn" else 1)

    @property
    def fusion_channels(self) -> int:
        """Width of the hidden states handed to the fusion hook (the last block)."""
        return self.hidden_size


__all__ = ["PointTransformerConfig"]
