"""Point Cloud Mamba configuration (Zhang et al. 2024) as UniPre3D pre-trains it (method reference section 2.5)."""

from __future__ import annotations

from transformers import PretrainedConfig

from .mamba3d import SCAN_BACKENDS
from .pointmlp import _check_lengths
from .validation import check_floats, check_ints

PCM_ORDERS = ("xyz", "xzy", "yxz", "yzx", "zxy", "zyx", "hilbert", "hilbert-trans", "z", "z-trans")


class PCMConfig(PretrainedConfig):
    r"""
    Args:
        use_height, height_axis, feature_channels: input channels as `PointMLPConfig` (xyz + height by default).
        embed_dim (`int`, defaults to 384); dim_expansion ([1, 1, 2, 1]: widths 384, 384, 768, 768);
        reducers ([2, 2, 2, 2]: 1024 -> 512 -> 256 -> 128 -> 64 points); k_neighbors ([12] * 4);
        pre_blocks ([1] * 4); use_xyz (`True`); normalize ("anchor"); bias (`False`, encoder convolutions).
        mamba_blocks (`list[int]`, defaults to [1, 2, 2, 4]): Mamba layers per stage (9 in all).
        mamba_orders (`list[str]`): the serialization order of each Mamba layer, in sequence: axis-priority orders
            ("xyz" sorts by x, then y, then z on the grid), "hilbert", "z", "z-trans" (and "hilbert-trans").
        serialization_grid_size (`float`, defaults to 0.02): grid of the serialization codes (units of ``points``).
        use_order_prompt (`bool`, `True`), prompts_per_order (`int`, 6): learned prompts prepended and appended to
            the sequence of each Mamba layer (an Embedding of len(mamba_orders) * 6 x embed_dim, projected per stage).
        mamba_pos (`bool`, `True`): add a per-stage Linear(3 -> C) of the xyz before every Mamba layer.
        d_state, d_conv, expand, dt_rank: Mamba sizes (16, 4, 2, "auto").
        bidirectional (`bool`, defaults to `False`): the paper's config asks for bidirectional Mamba ("v2") but its
            code silently built unidirectional layers; `False` reproduces what was actually trained. `True` adds a
            backward (channel-flip) branch to every layer.
        rms_norm_eps (`float`, 1e-5); drop_path_rate (`float`, 0.1, linear over the Mamba layers, the first gets 0).
        decoder_dims ([768, 384, 384, 384]), decoder_blocks ([1] * 4): feature propagation back to every point
            (biases on).
        head_hidden_size (`int`, 384), hidden_size (`int`, 128), head_dropout (`float`, 0.5): the segmentation head
            Conv(384 -> 384)+BN+ReLU, Dropout, Conv(384 -> 128) that UniPre3D keeps in the backbone; the fusion
            hook runs before it.
        selective_scan_backend (`str`): "auto", "torch" or "mamba_ssm".
        legacy_axis_orders (`bool`, defaults to `False`): serialize as UniPre3D's PCM code does
            (``unipre3d_hf.ops.serialization.serialize_pcm_legacy``): axis orders coded from the batch-wide maxima
            of the 2nd and 3rd axes (so effectively by the first axis alone), Hilbert / z depth from the batch's
            largest grid coordinate, the flattened batch sorted at once. For parity with released checkpoints; ties
            are broken in index order, the original's non-stable GPU sort cannot be reproduced bit-exactly.
    """

    model_type = "unipre3d_pcm"
    fusion_point = "late"

    def __init__(
        self,
        use_height: bool = True,
        height_axis: int = 2,
        feature_channels: int = 0,
        embed_dim: int = 384,
        dim_expansion: list[int] = (1, 1, 2, 1),
        reducers: list[int] = (2, 2, 2, 2),
        k_neighbors: list[int] = (12, 12, 12, 12),
        pre_blocks: list[int] = (1, 1, 1, 1),
        use_xyz: bool = True,
        normalize: str = "anchor",
        bias: bool = False,
        mamba_blocks: list[int] = (1, 2, 2, 4),
        mamba_orders: list[str] = ("xyz", "xzy", "yxz", "yzx", "zxy", "zyx", "hilbert", "z", "z-trans"),
        serialization_grid_size: float = 0.02,
        use_order_prompt: bool = True,
        prompts_per_order: int = 6,
        mamba_pos: bool = True,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        bidirectional: bool = False,
        rms_norm_eps: float = 1e-5,
        drop_path_rate: float = 0.1,
        decoder_dims: list[int] = (768, 384, 384, 384),
        decoder_blocks: list[int] = (1, 1, 1, 1),
        head_hidden_size: int = 384,
        hidden_size: int = 128,
        head_dropout: float = 0.5,
        selective_scan_backend: str = "auto",
        initializer_range: float = 0.02,
        legacy_axis_orders: bool = False,
        **kwargs,
    ):
        check_ints("PCMConfig", minimum=0, feature_channels=feature_channels, height_axis=height_axis)
        check_ints(
            "PCMConfig", embed_dim=embed_dim, dim_expansion=dim_expansion, reducers=reducers, k_neighbors=k_neighbors,
            prompts_per_order=prompts_per_order, d_state=d_state, d_conv=d_conv,
            expand=expand, decoder_dims=decoder_dims, head_hidden_size=head_hidden_size, hidden_size=hidden_size,
        )  # fmt: skip
        check_ints(
            "PCMConfig", minimum=0, pre_blocks=pre_blocks, mamba_blocks=mamba_blocks, decoder_blocks=decoder_blocks
        )
        if dt_rank != "auto":
            check_ints("PCMConfig", dt_rank=dt_rank)
        check_floats(
            "PCMConfig", strict=True, serialization_grid_size=serialization_grid_size, rms_norm_eps=rms_norm_eps
        )
        check_floats("PCMConfig", maximum=1.0, drop_path_rate=drop_path_rate, head_dropout=head_dropout)
        check_floats("PCMConfig", initializer_range=initializer_range)
        self.use_height = use_height
        self.height_axis = height_axis
        self.feature_channels = feature_channels
        self.embed_dim = embed_dim
        self.dim_expansion = list(dim_expansion)
        self.reducers = list(reducers)
        self.k_neighbors = list(k_neighbors)
        self.pre_blocks = list(pre_blocks)
        self.use_xyz = use_xyz
        self.normalize = normalize
        self.bias = bias
        self.mamba_blocks = list(mamba_blocks)
        self.mamba_orders = list(mamba_orders)
        self.serialization_grid_size = serialization_grid_size
        self.use_order_prompt = use_order_prompt
        self.prompts_per_order = prompts_per_order
        self.mamba_pos = mamba_pos
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.dt_rank = dt_rank
        self.bidirectional = bidirectional
        self.rms_norm_eps = rms_norm_eps
        self.drop_path_rate = drop_path_rate
        self.decoder_dims = list(decoder_dims)
        self.decoder_blocks = list(decoder_blocks)
        self.head_hidden_size = head_hidden_size
        self.hidden_size = hidden_size
        self.head_dropout = head_dropout
        self.selective_scan_backend = selective_scan_backend
        self.initializer_range = initializer_range
        self.legacy_axis_orders = legacy_axis_orders
        _check_lengths(
            "PCMConfig",
            dim_expansion=self.dim_expansion,
            reducers=self.reducers,
            k_neighbors=self.k_neighbors,
            pre_blocks=self.pre_blocks,
            mamba_blocks=self.mamba_blocks,
            decoder_dims=self.decoder_dims,
            decoder_blocks=self.decoder_blocks,
        )
        if len(self.mamba_orders) != sum(self.mamba_blocks):
            raise ValueError(
                f"PCMConfig: `mamba_orders` needs one order per Mamba layer ({sum(self.mamba_blocks)}), "
                f"got {len(self.mamba_orders)}"
            )
        bad = [o for o in self.mamba_orders if o not in PCM_ORDERS]
        if bad:
            raise ValueError(f"PCMConfig: unknown `mamba_orders` {bad}; expected values from {PCM_ORDERS}")
        if normalize not in ("anchor", "center"):
            raise ValueError(f"PCMConfig: `normalize` must be 'anchor' or 'center', got {normalize!r}")
        if selective_scan_backend not in SCAN_BACKENDS:
            raise ValueError(f"PCMConfig: `selective_scan_backend` must be one of {SCAN_BACKENDS}")
        super().__init__(**kwargs)

    @property
    def in_channels(self) -> int:
        return 3 + int(self.use_height) + self.feature_channels

    @property
    def num_stages(self) -> int:
        return len(self.dim_expansion)

    @property
    def min_points(self) -> int:
        n = 1
        for reducer, k in zip(reversed(self.reducers), reversed(self.k_neighbors), strict=True):
            n = max(n * reducer, k)
        return n

    @property
    def fusion_channels(self) -> int:
        """Width of the hidden states handed to the fusion hook (last decoder layer, before the segmentation head)."""
        return self.decoder_dims[-1]


__all__ = ["PCMConfig"]
