"""Configuration of the Sparse UNet scene backbone (Pointcept SpUNet-v1m1, as UniPre3D pre-trains it on ScanNet)."""

from __future__ import annotations

from transformers import PretrainedConfig

from .validation import check_floats, check_ints


class SparseUNetConfig(PretrainedConfig):
    r"""Architecture of [`SparseUNetModel`]. Defaults are the paper's settings (method reference section 2.6).

    Args:
        in_channels (`int`, *optional*, defaults to 6):
            Input features per point (RGB + normal in the paper).
        out_channels (`int`, *optional*, defaults to 64):
            Width of the output feature of each voxel (Pointcept's `num_classes`).
        base_channels (`int`, *optional*, defaults to 32):
            Width of the stem.
        channels (`tuple[int]`, *optional*, defaults to `(32, 64, 128, 256, 256, 128, 96, 96)`):
            Widths of the 4 encoder stages, then of the 4 decoder stages (deepest first).
        layers (`tuple[int]`, *optional*, defaults to `(2, 3, 4, 6, 2, 2, 2, 2)`):
            Basic blocks per stage, in the same order as `channels`.
        stem_kernel_size (`int`, *optional*, defaults to 5):
            Kernel of the stem's submanifold conv.
        bn_eps (`float`, *optional*, defaults to 1e-3):
            BatchNorm epsilon.
        bn_momentum (`float`, *optional*, defaults to 0.01):
            BatchNorm momentum (torch convention).
        grid_size (`float`, *optional*, defaults to 0.02):
            Voxel edge in metres used to voxelize the input points.
        sparse_conv_backend (`str`, *optional*, defaults to `"auto"`):
            `"auto"` (spconv for CUDA tensors when installed, else torch), `"torch"` or `"spconv"`.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Std of the truncated-normal init of linear and sparse-conv weights (Pointcept: 0.02).

    Example:

    ```python
    >>> from unipre3d_hf import SparseUNetConfig, SparseUNetModel
    >>> model = SparseUNetModel(SparseUNetConfig())
    ```
    """

    model_type = "unipre3d_sparse_unet"
    fusion_point = "early"

    def __init__(
        self,
        in_channels: int = 6,
        out_channels: int = 64,
        base_channels: int = 32,
        channels: tuple[int, ...] | list[int] = (32, 64, 128, 256, 256, 128, 96, 96),
        layers: tuple[int, ...] | list[int] = (2, 3, 4, 6, 2, 2, 2, 2),
        stem_kernel_size: int = 5,
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.01,
        grid_size: float = 0.02,
        sparse_conv_backend: str = "auto",
        initializer_range: float = 0.02,
        **kwargs,
    ):
        check_ints(
            "SparseUNetConfig", in_channels=in_channels, out_channels=out_channels, base_channels=base_channels,
            channels=channels, layers=layers, stem_kernel_size=stem_kernel_size,
        )  # fmt: skip
        check_floats("SparseUNetConfig", strict=True, bn_eps=bn_eps, grid_size=grid_size)
        check_floats("SparseUNetConfig", maximum=1.0, bn_momentum=bn_momentum)
        check_floats("SparseUNetConfig", initializer_range=initializer_range)
        channels, layers = list(channels), list(layers)
        if len(channels) != len(layers) or len(channels) % 2 != 0 or not channels:
            raise ValueError(
                f"`channels` and `layers` must have the same even length (encoder stages then decoder stages), got "
                f"{len(channels)} and {len(layers)}"
            )
        if any(n < 1 for n in layers):
            raise ValueError(f"`layers` must be >= 1 everywhere, got {layers}")
        if stem_kernel_size % 2 != 1:
            raise ValueError(f"`stem_kernel_size` must be odd, got {stem_kernel_size}")
        if grid_size <= 0:
            raise ValueError(f"`grid_size` must be positive, got {grid_size}")
        if sparse_conv_backend not in ("auto", "torch", "spconv"):
            raise ValueError(f"`sparse_conv_backend` must be 'auto', 'torch' or 'spconv', got {sparse_conv_backend!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.base_channels = base_channels
        self.channels = channels
        self.layers = layers
        self.stem_kernel_size = stem_kernel_size
        self.bn_eps = bn_eps
        self.bn_momentum = bn_momentum
        self.grid_size = grid_size
        self.sparse_conv_backend = sparse_conv_backend
        self.initializer_range = initializer_range
        super().__init__(**kwargs)

    @property
    def hidden_size(self) -> int:
        return self.out_channels

    @property
    def fusion_channels(self) -> int:
        """Width of the hidden states handed to the fusion hook (the stem)."""
        return self.base_channels


__all__ = ["SparseUNetConfig"]
