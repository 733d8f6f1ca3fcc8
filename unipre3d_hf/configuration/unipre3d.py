"""Configuration of UniPre3D's Gaussian-splatting pre-training model (a backbone sub-config plus the method's parts)."""

from __future__ import annotations

from transformers import AutoConfig, PretrainedConfig

IMAGE_ENCODERS = ("sd-vae", "conv", "none")
LOSS_TYPES = ("l2", "l1", "focal_l2")
LEVELS = ("object", "scene")
RENDER_BACKENDS = ("auto", "gsplat", "torch", "inria")

# The paper's six pre-training setups (method reference 7.6): backbone model_type and level.
PRESETS = {
    "pointmlp_shapenet": "unipre3d_pointmlp",
    "point_transformer_shapenet": "unipre3d_point_transformer",
    "mamba3d_shapenet": "unipre3d_mamba3d",
    "pcm_shapenet": "unipre3d_pcm",
    "sparse_unet_scannet": "unipre3d_sparse_unet",
    "ptv3_scannet": "unipre3d_ptv3",
}


class UniPre3DConfig(PretrainedConfig):
    r"""Configuration of [`UniPre3DForGaussianPretraining`]: a backbone (any of the six, as ``backbone_config``), the
    image encoder, the scale-adaptive fusion, the Gaussian head, the renderer and the loss.

    Defaults that depend on the level (``None`` below) take the paper's value for that level (method reference 1.2,
    1.3, 5 and 7): object level = feature fusion after the backbone, offset scale 1.0, focal L2, LPIPS from step
    50,000, black background; scene level = point fusion after the stem, offset scale 0.2 m, L2, LPIPS from step
    30,000, white background.

    Args:
        backbone_config (`PretrainedConfig` or `dict`): one of the six backbone configs (a dict needs its
            ``model_type``). Default: ``PointMLPConfig()``.
        level (`str`, *optional*): ``"object"`` or ``"scene"``; default from the backbone's fusion point ("late" ->
            object, "early" -> scene). It must agree with the backbone.
        image_encoder (`str`, defaults to ``"sd-vae"``): ``"sd-vae"`` -- a frozen diffusers ``AutoencoderKL`` loaded
            from ``image_encoder_name_or_path``; features are the output of its last decoder up-block (full
            resolution). Its weights are never saved with this model. ``"conv"`` -- a small trainable convolutional
            encoder (the CPU demo default). ``"none"`` -- no image fusion (the paper's ablation).
        image_encoder_name_or_path (`str`): Hub id or local folder of the VAE (``stabilityai/sd-vae-ft-mse``).
        image_encoder_input_range (`str`, defaults to ``"zero_one"``): range the VAE is fed. The paper feeds [0, 1]
            images to a VAE trained on [-1, 1] (bug 11 of the method reference); ``"minus_one_one"`` rescales.
        image_encoder_precision (`str`, defaults to ``"auto"``): the frozen SD VAE's arithmetic: ``"auto"`` runs it
            in bfloat16 with channels-last memory on CUDA (features within a few % relative L2 of float32) and in
            float32 elsewhere; ``"float32"`` always float32; ``"bfloat16"`` always bfloat16. Its features are cast back
            to the images' dtype.
        image_encoder_channels (`int`, *optional*): width of the encoder's features before the projection: the VAE's
            last up-block width (128 for the SD VAE; checked when the VAE loads), or the ``"conv"`` encoder's (64).
        legacy_transposed_lookup (`bool`, defaults to `False`): object fusion reads the image feature at ``[u, v]``
            with rounded pixel coordinates, as the paper's code does (bug 1), instead of the pixel ``[v, u]`` that the
            point projects into. Only for parity with released checkpoints.
        head_hidden_size (`int`, *optional*): hidden width of the Gaussian head; default the paper's (64 for
            PointMLP/PCM, 128 for Transformer/Mamba3D, 32 for the scene models).
        sh_degree (`int`, defaults to 1): degree of the predicted spherical harmonics.
        offset_scale (`float`, *optional*): Gaussian centre = anchor + ``offset_scale * tanh(raw)``.
        scale_log_min, scale_log_max (`float`, *optional* / 20.0): scale = ``exp(clamp(raw, min, max))``. The paper's
            HEAD code uses min -1 (a 0.37 floor, bug 3); the default is no lower clamp (the pre-July 2025 code).
        isotropic_scale (`bool`, defaults to `False`): one scale for the three axes.
        initial_scale (`float`, *optional*): start the head's scale bias at ``log(initial_scale)``, so that the first
            Gaussians are about that size. Not in the paper, whose Gaussians start near exp(0) = 1 unit (a blob over
            the whole object); useful for short runs, and for the torch renderer on CPU, whose cost grows with the
            Gaussians' footprint.
        legacy_quaternion_normalization (`bool`, defaults to `False`): object level, normalise the quaternion
            channels across the Gaussians of a sample (bug 2 of the paper's HEAD code) instead of per Gaussian.
        render_backend (`str`, defaults to ``"auto"``): ``"auto" | "gsplat" | "torch" | "inria"``.
        background (`list[float]`, *optional*): render background when the batch gives none.
        loss_type (`str`, *optional*): ``"l2" | "l1" | "focal_l2"``.
        foreground_loss_rate, background_loss_rate (`float`, 4.0 / 1.0): focal L2 rates; the weights are
            ``2 r / (r_fg + r_bg)`` (1.6 and 0.4).
        lambda_lpips (`float`, defaults to 0.01): weight of the LPIPS term (0 turns it off).
        lpips_start_step (`int`, *optional*): LPIPS is added from this training step on.
        lpips_net (`str`, defaults to ``"vgg"``): the ``lpips`` package's network.

    Example:

    ```python
    >>> from unipre3d_hf import PTv3Config, UniPre3DConfig
    >>> config = UniPre3DConfig(backbone_config=PTv3Config())   # scene level, point fusion
    >>> config = UniPre3DConfig.from_preset("pointmlp_shapenet")
    ```
    """

    model_type = "unipre3d"
    sub_configs = {"backbone_config": AutoConfig}

    def __init__(
        self,
        backbone_config: PretrainedConfig | dict | None = None,
        level: str | None = None,
        image_encoder: str = "sd-vae",
        image_encoder_name_or_path: str = "stabilityai/sd-vae-ft-mse",
        image_encoder_input_range: str = "zero_one",
        image_encoder_precision: str = "auto",
        image_encoder_channels: int | None = None,
        legacy_transposed_lookup: bool = False,
        head_hidden_size: int | None = None,
        sh_degree: int = 1,
        offset_scale: float | None = None,
        scale_log_min: float | None = None,
        scale_log_max: float | None = 20.0,
        isotropic_scale: bool = False,
        initial_scale: float | None = None,
        legacy_quaternion_normalization: bool = False,
        render_backend: str = "auto",
        background: list[float] | tuple[float, float, float] | None = None,
        loss_type: str | None = None,
        foreground_loss_rate: float = 4.0,
        background_loss_rate: float = 1.0,
        lambda_lpips: float = 0.01,
        lpips_start_step: int | None = None,
        lpips_net: str = "vgg",
        **kwargs,
    ):
        if backbone_config is None:
            backbone_config = AutoConfig.for_model("unipre3d_pointmlp")
        elif isinstance(backbone_config, dict):
            if "model_type" not in backbone_config:
                raise ValueError("`backbone_config` given as a dict needs its `model_type` (e.g. 'unipre3d_ptv3')")
            values = dict(backbone_config)
            backbone_config = AutoConfig.for_model(values.pop("model_type"), **values)
        elif not isinstance(backbone_config, PretrainedConfig):
            raise ValueError(f"`backbone_config` must be a PretrainedConfig or a dict, got {type(backbone_config)}")
        fusion_point = getattr(backbone_config, "fusion_point", None)
        if fusion_point not in ("late", "early") or not hasattr(backbone_config, "fusion_channels"):
            raise ValueError(
                f"`backbone_config` ({backbone_config.model_type}) is not a UniPre3D backbone: it declares no "
                "`fusion_point` ('late' or 'early') and `fusion_channels`"
            )
        natural = "object" if fusion_point == "late" else "scene"
        level = natural if level is None else level
        if level not in LEVELS:
            raise ValueError(f"`level` must be one of {LEVELS}, got {level!r}")
        if level != natural:
            raise ValueError(
                f"`level={level!r}` does not fit the backbone {backbone_config.model_type}, whose fusion point is "
                f"{fusion_point!r} (object backbones fuse late, scene backbones early)"
            )
        if image_encoder not in IMAGE_ENCODERS:
            raise ValueError(f"`image_encoder` must be one of {IMAGE_ENCODERS}, got {image_encoder!r}")
        if image_encoder_input_range not in ("zero_one", "minus_one_one"):
            raise ValueError(
                f"`image_encoder_input_range` must be 'zero_one' or 'minus_one_one', got {image_encoder_input_range!r}"
            )
        if not 0 <= sh_degree <= 3:
            raise ValueError(f"`sh_degree` must be in 0..3, got {sh_degree}")
        if loss_type is not None and loss_type not in LOSS_TYPES:
            raise ValueError(f"`loss_type` must be one of {LOSS_TYPES}, got {loss_type!r}")
        if render_backend not in RENDER_BACKENDS:
            raise ValueError(f"`render_backend` must be one of {RENDER_BACKENDS}, got {render_backend!r}")
        if background is not None and len(background) != 3:
            raise ValueError(f"`background` must be 3 numbers (RGB in [0, 1]), got {background!r}")
        if min(foreground_loss_rate, background_loss_rate) < 0 or foreground_loss_rate + background_loss_rate <= 0:
            raise ValueError("`foreground_loss_rate` and `background_loss_rate` must be >= 0 with a positive sum")
        if lambda_lpips < 0:
            raise ValueError(f"`lambda_lpips` must be >= 0, got {lambda_lpips}")
        is_object = level == "object"
        self.backbone_config = backbone_config
        self.level = level
        self.image_encoder = image_encoder
        self.image_encoder_name_or_path = image_encoder_name_or_path
        self.image_encoder_input_range = image_encoder_input_range
        if image_encoder_precision not in ("auto", "float32", "bfloat16"):
            raise ValueError(
                f"`image_encoder_precision` must be 'auto', 'float32' or 'bfloat16', got {image_encoder_precision!r}"
            )
        self.image_encoder_precision = image_encoder_precision
        if image_encoder_channels is None:
            image_encoder_channels = 128 if image_encoder == "sd-vae" else 64
        self.image_encoder_channels = image_encoder_channels
        self.legacy_transposed_lookup = legacy_transposed_lookup
        if head_hidden_size is None:
            # the paper's `final` MLP C_out -> h -> 23 (method reference 1.4): h = C_out / 3 for the 384-wide
            # Transformer and Mamba3D (128), C_out / 2 otherwise (64 for PointMLP and PCM, 32 for the scene models)
            divisor = 3 if backbone_config.model_type in ("unipre3d_point_transformer", "unipre3d_mamba3d") else 2
            head_hidden_size = max(1, backbone_config.hidden_size // divisor)
        self.head_hidden_size = head_hidden_size
        self.sh_degree = sh_degree
        self.offset_scale = (1.0 if is_object else 0.2) if offset_scale is None else offset_scale
        self.scale_log_min = scale_log_min
        self.scale_log_max = scale_log_max
        self.isotropic_scale = isotropic_scale
        if initial_scale is not None and initial_scale <= 0:
            raise ValueError(f"`initial_scale` must be positive, got {initial_scale}")
        self.initial_scale = initial_scale
        self.legacy_quaternion_normalization = legacy_quaternion_normalization
        self.render_backend = render_backend
        self.background = list(background) if background is not None else ([0.0] * 3 if is_object else [1.0] * 3)
        self.loss_type = ("focal_l2" if is_object else "l2") if loss_type is None else loss_type
        self.foreground_loss_rate = foreground_loss_rate
        self.background_loss_rate = background_loss_rate
        self.lambda_lpips = lambda_lpips
        self.lpips_start_step = (50_000 if is_object else 30_000) if lpips_start_step is None else lpips_start_step
        self.lpips_net = lpips_net
        super().__init__(**kwargs)

    @property
    def image_feature_channels(self) -> int:
        """Width of the projected image features: the backbone's fusion width (128 / 384 objects, 32 scenes)."""
        return self.backbone_config.fusion_channels

    @property
    def gaussian_channels(self) -> int:
        """Raw head outputs per Gaussian: 3 offset + 1 opacity + 3 scale + 4 rotation + 3 (d + 1)^2 SH (23 at d=1)."""
        return 11 + 3 * (self.sh_degree + 1) ** 2

    @classmethod
    def from_preset(cls, name: str, backbone_kwargs: dict | None = None, **kwargs) -> UniPre3DConfig:
        """One of the paper's six setups (``PRESETS``: ``pointmlp_shapenet``, ``point_transformer_shapenet``,
        ``mamba3d_shapenet``, ``pcm_shapenet``, ``sparse_unet_scannet``, ``ptv3_scannet``) with the paper's
        backbone, fusion, head and loss settings. ``backbone_kwargs`` override backbone fields, ``kwargs`` the rest."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
        backbone = AutoConfig.for_model(PRESETS[name], **(backbone_kwargs or {}))
        return cls(backbone_config=backbone, **kwargs)


__all__ = ["IMAGE_ENCODERS", "LOSS_TYPES", "PRESETS", "UniPre3DConfig"]
