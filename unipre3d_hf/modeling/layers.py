"""Small building blocks shared by several backbones."""

from __future__ import annotations

import math
import os
from functools import partial

import torch
from safetensors import SafetensorError
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer

from ..ops.sampling import ball_query, farthest_point_sample, gather_points, knn, three_nn_interpolate
from ..rendering.cameras import run_value_checks


def linear_rates(stop: float, n: int) -> list[float]:
    """``n`` stochastic-depth rates rising linearly from 0 to ``stop`` (``torch.linspace(0, stop, n)``, computed in
    Python so that a model can be built on the ``meta`` device)."""
    if n == 1:
        return [0.0]
    return [stop * i / (n - 1) for i in range(n)]


def _bad_weight_file(path: str | os.PathLike) -> str | None:
    """The first ``*.safetensors`` file of a local folder (or the file itself) that does not open, else None."""
    from safetensors import safe_open

    files = [os.fspath(path)] if os.path.isfile(path) else sorted(
        os.path.join(path, f) for f in os.listdir(path) if f.endswith(".safetensors")
    )  # fmt: skip
    for f in files:
        try:
            with safe_open(f, framework="pt") as handle:
                for key in handle.keys():
                    handle.get_slice(key)
        except (SafetensorError, OSError, ValueError):
            return f
    return None


class PointPreTrainedModel(PreTrainedModel):
    """Base of the six backbones' ``PreTrainedModel`` classes (and so of their task heads).

    - ``from_pretrained`` names the weight file when it is truncated or corrupt (safetensors' own error names none).
    - ``activation_checkpointing_enable`` / ``_disable`` exist on every supported transformers version (5.24 renames
      ``gradient_checkpointing_enable``; older versions only have that name, which we then call).
    - ``_input_dtype``: the floating dtype inputs are cast to (the parameters'), so ``model.to(torch.bfloat16)``
      accepts float32 inputs.
    """

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except SafetensorError as error:
            where = os.fspath(pretrained_model_name_or_path)
            bad = _bad_weight_file(where) if os.path.exists(where) else None
            name = bad or f"the model.safetensors of {where!r}"
            raise OSError(
                f"{name} is not a valid safetensors file (truncated or corrupt; re-download or re-save it): {error}"
            ) from error

    if not hasattr(PreTrainedModel, "activation_checkpointing_enable"):

        def activation_checkpointing_enable(self, activation_checkpointing_kwargs=None, **kwargs):
            """Enable activation checkpointing (the transformers >= 5.24 name of ``gradient_checkpointing_enable``)."""
            self.gradient_checkpointing_enable(gradient_checkpointing_kwargs=activation_checkpointing_kwargs, **kwargs)

        def activation_checkpointing_disable(self):
            self.gradient_checkpointing_disable()

    @property
    def _input_dtype(self) -> torch.dtype:
        return next((p.dtype for p in self.parameters() if p.is_floating_point()), torch.float32)


def init_torch_default(module: nn.Module) -> None:
    """PyTorch's own default initialisation (``reset_parameters`` of Linear/ConvNd: Kaiming-uniform with a = sqrt(5),
    bias uniform(+-1/sqrt(fan_in)); norms (1, 0)), through ``transformers.initialization`` so that loaded weights are
    kept. Used by the backbones whose papers rely on the framework defaults (PointMLP, PCM's convolutions)."""
    if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        init.kaiming_uniform_(module.weight, a=math.sqrt(5))
        if module.bias is not None:
            fan_in = module.weight[0].numel()
            bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            init.uniform_(module.bias, -bound, bound)
    else:
        init_point_module(module, std=0.0)


def init_point_module(module: nn.Module, std: float) -> None:
    """The initialisation shared by the point backbones (Point-BERT/Point-MAE/openpoints): truncated normal (std,
    +-2) for linear and 1x1/nd convolution weights, zero biases, norms to (1, 0) with fresh running statistics.

    Uses ``transformers.initialization`` so that weights loaded by ``from_pretrained`` are never re-initialised."""
    if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        init.trunc_normal_(module.weight, std=std)
        if module.bias is not None:
            init.zeros_(module.bias)
    elif isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
        if module.weight is not None:
            init.ones_(module.weight)
            init.zeros_(module.bias)
        if getattr(module, "running_mean", None) is not None:
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)


def drop_path(x: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth per sample (Huang et al. 2016): zero a whole residual branch with probability ``drop_prob``
    and rescale the survivors by ``1 / (1 - drop_prob)``. The first dimension of ``x`` indexes the samples."""
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    # the survivors' scale goes into the small [B, 1, ..] mask: one op on the activations instead of two
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep).div_(keep)
    return x * mask


class DropPath(nn.Module):
    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


def is_tracing() -> bool:
    """True under torch.compile / torch.export: the data-dependent input checks (finite values, ...) are skipped
    there, as a graph cannot branch on tensor values; they run in every eager call."""
    return torch.compiler.is_compiling()


def check_point_batch(
    points: torch.Tensor,
    features: torch.Tensor | None,
    *,
    min_points: int = 1,
    feature_channels: int = 0,
    grid_size: float | None = None,
    grid_dtype: torch.dtype | None = None,
) -> None:
    """Validate the inputs of an object backbone: ``points [B, N, 3]`` finite with N >= ``min_points``, and
    ``features [B, N, feature_channels]`` exactly when the config declares extra channels.

    With ``grid_size`` (PCM's serialization grid), also check that every cloud spans fewer than ``2^16`` cells of
    ``floor(points.to(grid_dtype) / grid_size)`` along every axis (the 16 bits per axis of its serialization codes).
    The value checks are one host read (skipped under torch.compile)."""
    if not isinstance(points, torch.Tensor) or points.ndim != 3 or points.shape[-1] != 3:
        shape = tuple(points.shape) if isinstance(points, torch.Tensor) else type(points).__name__
        raise ValueError(f"`points` must be a float tensor of shape [B, N, 3] (xyz), got {shape}")
    if not points.is_floating_point():
        raise ValueError(f"`points` must be a floating-point tensor, got dtype {points.dtype}")
    if points.shape[1] < min_points:
        raise ValueError(f"`points` has {points.shape[1]} points per sample, this model needs at least {min_points}")
    if features is not None and (features.ndim != 3 or features.shape[:2] != points.shape[:2]):
        raise ValueError(
            f"`features` must have shape [B, N, C] = [{points.shape[0]}, {points.shape[1]}, C], "
            f"got {tuple(features.shape)}"
        )
    if (features.shape[-1] if features is not None else 0) != feature_channels:
        got = None if features is None else features.shape[-1]
        raise ValueError(f"`features` must have config.feature_channels={feature_channels} channels, got {got}")
    if grid_size is not None and not grid_size > 0:
        raise ValueError(f"`grid_size` must be positive, got {grid_size}")
    if is_tracing():
        return
    checks = [(torch.isfinite(points).all(), partial(_raise, "`points` contains NaN or infinite values"))]
    if features is not None:
        checks.append((torch.isfinite(features).all(), partial(_raise, "`features` contains NaN or infinite values")))
    if grid_size is not None:
        # the cells as the caller computes them (same dtype, same op), their span in float64 (exact integers)
        grid = torch.floor(points.detach().to(grid_dtype or points.dtype) / grid_size).double()
        span = (grid.amax(dim=1) - grid.amin(dim=1)).amax()

        def too_wide():
            raise ValueError(
                f"`points`: a cloud spans {float(span) + 1:.0f} cells of grid_size={grid_size} along an axis, more "
                f"than the {1 << 16} that serialization can encode (normalize the clouds or use a larger grid size)"
            )

        checks.append((span < 1 << 16, too_wide))
    run_value_checks(checks)  # one host read for all of them


def _raise(message: str) -> None:
    raise ValueError(message)


def cast_point_inputs(
    points: torch.Tensor, features: torch.Tensor | None, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``points`` and ``features`` in the model's floating ``dtype`` (a bfloat16 model takes float32 clouds)."""
    return points.to(dtype), None if features is None else features.to(dtype)


# --- PointMLP-style blocks (Ma et al. 2022, "Rethinking Network Design and Local Geometry in Point Cloud"), shared by
# PointMLP and Point Cloud Mamba. Features are channels-first [B, C, L] around the 1x1 convolutions.


def activation_module(name: str) -> nn.Module:
    acts = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "leakyrelu": nn.LeakyReLU}
    if name not in acts:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(acts)}")
    return acts[name]()


class ConvBNAct1d(nn.Sequential):
    """1x1 Conv1d + BatchNorm1d + activation."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True, act: str = "relu"):
        super().__init__(nn.Conv1d(in_channels, out_channels, 1, bias=bias), nn.BatchNorm1d(out_channels))
        self.add_module("act", activation_module(act))


class ResidualConvBlock1d(nn.Module):
    """act(BN(Conv(act(BN(Conv(x))))) + x) with 1x1 convolutions (PointMLP's ConvBNReLURes1D, groups=1)."""

    def __init__(self, channels: int, res_expansion: float = 1.0, bias: bool = True, act: str = "relu"):
        super().__init__()
        hidden = int(channels * res_expansion)
        self.net1 = ConvBNAct1d(channels, hidden, bias, act)
        self.net2 = nn.Sequential(nn.Conv1d(hidden, channels, 1, bias=bias), nn.BatchNorm1d(channels))
        self.act = activation_module(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.net2(self.net1(x)) + x)


def residual_stack(channels: int, blocks: int, res_expansion: float, bias: bool, act: str) -> nn.Sequential:
    return nn.Sequential(*(ResidualConvBlock1d(channels, res_expansion, bias, act) for _ in range(blocks)))


class ResidualStack(GradientCheckpointingLayer, nn.Sequential):
    """``residual_stack`` as one activation-checkpointing unit (PointMLP's pos-extraction): ``[B, C, L]`` -> same."""

    def __init__(self, channels: int, blocks: int, res_expansion: float, bias: bool, act: str):
        super().__init__(*(ResidualConvBlock1d(channels, res_expansion, bias, act) for _ in range(blocks)))


class LocalGrouper(nn.Module):
    """PointMLP's geometric affine grouping: FPS anchors, kNN groups, normalised relative features.

    For each anchor: gather its k nearest neighbours' features (and relative xyz if ``use_xyz``), subtract the anchor
    ("anchor") or group mean ("center"), divide by one std per sample over all groups, neighbours and channels
    (unbiased, + 1e-5), apply a learnable per-channel affine, and concatenate the anchor's own feature.
    """

    def __init__(self, channels: int, reducer: int, k: int, use_xyz: bool, normalize: str, sort_anchors: bool = False):
        super().__init__()
        self.reducer, self.k, self.use_xyz, self.normalize, self.sort_anchors = (
            reducer,
            k,
            use_xyz,
            normalize,
            sort_anchors,
        )
        affine_dim = channels + (3 if use_xyz else 0)
        self.affine_alpha = nn.Parameter(torch.ones(1, 1, 1, affine_dim))
        self.affine_beta = nn.Parameter(torch.zeros(1, 1, 1, affine_dim))

    def forward(
        self, xyz: torch.Tensor, features: torch.Tensor, fps_xyz: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.LongTensor]:
        """
        Args:
            xyz: ``[B, N, D]`` positions (D = 3; the legacy PointMLP path passes 4).
            features: ``[B, N, C]``.
            fps_xyz: ``[B, N, 3]`` what FPS measures (defaults to ``xyz``).
        Returns:
            ``(anchor xyz [B, S, D], grouped [B, S, k, 2C (+3)], anchor indices [B, S])``.
        """
        B, N, _ = xyz.shape
        S = N // self.reducer
        idx = farthest_point_sample(xyz if fps_xyz is None else fps_xyz, S)
        if self.sort_anchors:
            idx = idx.sort(dim=1).values
        new_xyz = gather_points(xyz, idx)
        new_features = gather_points(features, idx)
        _, nn_idx = knn(new_xyz, xyz, self.k)
        grouped = gather_points(features, nn_idx)  # [B, S, k, C]
        anchor = new_features
        if self.use_xyz:
            grouped = torch.cat([grouped, gather_points(xyz, nn_idx)], dim=-1)
            anchor = torch.cat([anchor, new_xyz], dim=-1)
        center = anchor.unsqueeze(2) if self.normalize == "anchor" else grouped.mean(dim=2, keepdim=True)
        rel = grouped - center
        std = rel.reshape(B, -1).std(dim=-1).view(B, 1, 1, 1)
        rel = self.affine_alpha * (rel / (std + 1e-5)) + self.affine_beta
        out = torch.cat([rel, new_features.unsqueeze(2).expand(-1, -1, self.k, -1)], dim=-1)
        return new_xyz, out, idx


class PreExtraction(GradientCheckpointingLayer):
    """Grouped features ``[B, S, k, C_in]`` -> transfer conv, residual blocks, max over k -> ``[B, C_out, S]``."""

    def __init__(self, in_channels: int, out_channels: int, blocks: int, res_expansion: float, bias: bool, act: str):
        super().__init__()
        self.transfer = ConvBNAct1d(in_channels, out_channels, bias, act)
        self.operation = residual_stack(out_channels, blocks, res_expansion, bias, act)

    def forward(self, grouped: torch.Tensor) -> torch.Tensor:
        B, S, k, C = grouped.shape
        x = grouped.reshape(B * S, k, C).transpose(1, 2)
        x = self.operation(self.transfer(x))
        return x.amax(dim=-1).reshape(B, S, -1).transpose(1, 2)


class FeaturePropagation(GradientCheckpointingLayer):
    """PointNet++ feature propagation: 3-NN interpolation of coarse features onto fine points, concatenated with the
    fine points' skip features ([skip, interpolated]), then Conv+BN+act and residual blocks."""

    def __init__(self, in_channels: int, out_channels: int, blocks: int, res_expansion: float, bias: bool, act: str):
        super().__init__()
        self.fuse = ConvBNAct1d(in_channels, out_channels, bias, act)
        self.extraction = residual_stack(out_channels, blocks, res_expansion, bias, act)

    def forward(
        self,
        fine_xyz: torch.Tensor,
        coarse_xyz: torch.Tensor,
        fine_features: torch.Tensor,
        coarse_features: torch.Tensor,
    ) -> torch.Tensor:
        """``fine_xyz [B, N, D]``, ``coarse_xyz [B, S, D]``, ``fine_features [B, C1, N]``, ``coarse_features
        [B, C2, S]`` -> ``[B, C_out, N]``."""
        interpolated = three_nn_interpolate(fine_xyz, coarse_xyz, coarse_features.transpose(1, 2)).transpose(1, 2)
        return self.extraction(self.fuse(torch.cat([fine_features, interpolated], dim=1)))


# --- Patch tokenizer of the Point-BERT family (point Transformer, Mamba3D).


class MiniPointNet(nn.Module):
    """Point-BERT's patch encoder: per point Conv(c->128)+BN+ReLU+Conv(128->256); max over the patch; concatenate the
    patch feature to every point (512); Conv(512->512)+BN+ReLU+Conv(512->out); max over the patch.

    ``[B, G, K, c]`` -> ``[B, G, out]``.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.first_conv = nn.Sequential(
            nn.Conv1d(in_channels, 128, 1), nn.BatchNorm1d(128), nn.ReLU(inplace=True), nn.Conv1d(128, 256, 1)
        )
        self.second_conv = nn.Sequential(
            nn.Conv1d(512, 512, 1), nn.BatchNorm1d(512), nn.ReLU(inplace=True), nn.Conv1d(512, out_channels, 1)
        )

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        B, G, K, C = patches.shape
        x = self.first_conv(patches.reshape(B * G, K, C).transpose(1, 2))  # [BG, 256, K]
        pooled = x.amax(dim=2, keepdim=True)
        x = self.second_conv(torch.cat([pooled.expand(-1, -1, K), x], dim=1))
        return x.amax(dim=2).reshape(B, G, -1)


def group_patches(
    points: torch.Tensor,
    features: torch.Tensor | None,
    num_groups: int,
    group_size: int,
    grouper: str = "knn",
    radius: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """FPS patch centres (first index 0) and their neighbourhoods relative to the centre.

    Args:
        points: ``[B, N, 3]``; features: ``[B, N, C]`` or None.
        grouper: "knn" (the ``group_size`` nearest points) or "ball_query" (up to ``group_size`` within ``radius``).
    Returns:
        ``(centres [B, G, 3], patches [B, G, K, 3 + C])`` with xyz relative to the centre first.
    """
    centre_idx = farthest_point_sample(points, num_groups)
    centres = gather_points(points, centre_idx)
    if grouper == "knn":
        _, idx = knn(centres, points, group_size)
    else:
        idx = ball_query(centres, points, radius, group_size)
    patches = gather_points(points, idx) - centres.unsqueeze(2)
    if features is not None:
        patches = torch.cat([patches, gather_points(features, idx)], dim=-1)
    return centres, patches


# --- Mamba (Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces"), with the parameter
# names of mamba-ssm's ``Mamba`` module so that checkpoints convert by name. Used by Mamba3D and Point Cloud Mamba.


class MambaMixer(nn.Module):
    """Selective-SSM mixer: in_proj -> [causal depthwise conv + SiLU -> selective scan gated by SiLU(z)] -> out_proj.

    ``bidirectional="channel_flip"`` adds Mamba3D's backward branch ("bimamba v4"): separate conv / x_proj / dt_proj
    / A / D parameters run on the in-projected ``[x; z]`` flipped along the channel axis; the result is flipped back
    and added before ``out_proj``.

    ``[B, L, d_model]`` -> ``[B, L, d_model]``.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        bidirectional: str | None = None,
        scan_backend: str = "auto",
    ):
        super().__init__()
        if bidirectional not in (None, "channel_flip"):
            raise ValueError(f"MambaMixer: `bidirectional` must be None or 'channel_flip', got {bidirectional!r}")
        self.d_inner = expand * d_model
        self.d_state = d_state
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.dt_min, self.dt_max, self.dt_init_floor = dt_min, dt_max, dt_init_floor
        self.bidirectional = bidirectional
        self.scan_backend = scan_backend
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        suffixes = ["", "_b"] if bidirectional else [""]
        for s in suffixes:
            self.add_module(f"conv1d{s}", nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner))
            self.add_module(f"x_proj{s}", nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False))
            self.add_module(f"dt_proj{s}", nn.Linear(self.dt_rank, self.d_inner, bias=True))
            a_name = "A_log" if s == "" else "A_b_log"
            self.register_parameter(a_name, nn.Parameter(torch.empty(self.d_inner, d_state)))
            self.register_parameter(f"D{s}", nn.Parameter(torch.empty(self.d_inner)))
        self.reset_ssm_parameters()

    def _branches(self):
        yield self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D
        if self.bidirectional:
            yield self.conv1d_b, self.x_proj_b, self.dt_proj_b, self.A_b_log, self.D_b

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """Mamba's initialisation of the SSM parameters (mamba-ssm ``Mamba.__init__``): dt_proj weight uniform in
        +-dt_rank^-0.5; dt bias = softplus^-1(dt) with dt log-uniform in [dt_min, dt_max] (floored); A = -(1..N) per
        channel (stored as log); D = 1. Through ``transformers.initialization`` so that loaded weights are kept."""
        std = self.dt_rank**-0.5
        for _, _, dt_proj, A_log, D in self._branches():
            init.uniform_(dt_proj.weight, -std, std)
            if not getattr(dt_proj.bias, "_is_hf_initialized", False):
                dt = torch.exp(
                    torch.rand(self.d_inner) * (math.log(self.dt_max) - math.log(self.dt_min)) + math.log(self.dt_min)
                ).clamp_min(self.dt_init_floor)
                init.copy_(dt_proj.bias, dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus
            a = torch.arange(1, self.d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
            init.copy_(A_log, torch.log(a))
            init.ones_(D)

    def _ssm(self, xz: torch.Tensor, conv1d, x_proj, dt_proj, A_log, D) -> torch.Tensor:
        from ..ops.selective_scan import causal_conv1d, selective_scan

        x, z = xz.chunk(2, dim=1)  # [B, d_inner, L] each
        conv_backend = "torch" if self.scan_backend == "torch" else "auto"
        x = causal_conv1d(x, conv1d.weight.squeeze(1), conv1d.bias, activation="silu", backend=conv_backend)
        # The projections run channels-first (a batched matmul with the weight broadcast over the batch), so that
        # x needs no transposed copy and B, C, dt come out with the time axis innermost, as the scan kernel reads them
        # (mamba-ssm copies any input whose last stride is not 1).
        batch = x.shape[0]
        x_dbl = torch.bmm(x_proj.weight.expand(batch, -1, -1), x)  # [B, dt_rank + 2N, L]
        dt, B_ssm, C_ssm = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=1)
        dt = torch.bmm(dt_proj.weight.expand(batch, -1, -1), dt)  # [B, d_inner, L]; the bias is added in the scan
        return selective_scan(
            x,
            dt,
            -torch.exp(A_log.float()),
            B_ssm,  # [B, N, L]
            C_ssm,
            D.float(),
            z=z,
            delta_bias=dt_proj.bias.float(),
            delta_softplus=True,
            backend=self.scan_backend,
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        xz = self.in_proj(hidden_states).transpose(1, 2)  # [B, 2 d_inner, L]
        branches = self._branches()
        y = self._ssm(xz, *next(branches))
        if self.bidirectional:
            y = y + self._ssm(xz.flip(1), *next(branches)).flip(1)
        return self.out_proj(y.transpose(1, 2))


class FrozenNetwork(nn.Module):
    """A frozen pre-trained network (the SD VAE, LPIPS's VGG) that is built on first use and kept out of the model's
    state dict, ``parameters()``, optimiser and checkpoints: the config refers to it by name or path instead.

    It is stored outside PyTorch's module registry, so ``model.to()`` does not move it; :meth:`load` moves it to the
    device it is called with. Deep copies (e.g. an EMA copy of the model) share the one loaded network. The network
    always stays in eval mode with ``requires_grad=False``; gradients still flow through it to its inputs.

    Args:
        builder: zero-argument callable returning the network (e.g. a ``functools.partial`` of a loader).
        description: what it is, for ``repr`` and error messages.
    """

    def __init__(self, builder, description: str):
        super().__init__()
        self.builder = builder
        self.description = description
        self.__dict__["_network"] = None

    @property
    def is_loaded(self) -> bool:
        return self.__dict__["_network"] is not None

    def load(self, device: torch.device | str | None = None) -> nn.Module:
        """Build the network if needed and return it (on ``device`` when given)."""
        network = self.__dict__["_network"]
        if network is None:
            network = self.builder()
            network.requires_grad_(False)
            network.eval()
            self.__dict__["_network"] = network
        if device is not None:
            device = torch.device(device)
            first = next(network.parameters(), None)
            if first is not None and (
                first.device.type != device.type or (device.index is not None and first.device.index != device.index)
            ):
                network.to(device)
        return network

    def __deepcopy__(self, memo):
        twin = FrozenNetwork(self.builder, self.description)
        twin.__dict__["_network"] = self.__dict__["_network"]
        twin.train(self.training)
        return twin

    def extra_repr(self) -> str:
        return f"{self.description}, loaded={self.is_loaded}"
