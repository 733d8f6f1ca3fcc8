"""Mamba's selective scan and causal depthwise conv, each with a fast kernel and a pure-PyTorch twin.

The selective scan is the recurrence of Mamba's S6 layer (Gu & Dao, "Mamba: Linear-Time Sequence Modeling with
Selective State Spaces", 2023, arXiv:2312.00752, Algorithm 2 and Section 3.3), with the argument conventions of
mamba-ssm's ``selective_scan_fn``:

    delta <- softplus(delta + delta_bias)          (bias and softplus optional)
    h_t    = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t          h_t in R^{dim x N}, h_{-1} = 0
    y_t    = <C_t, h_t> + D * u_t
    y      = y * silu(z)                           (optional)

Backends:
  - ``"cuda"`` / ``"mamba_ssm"``: mamba-ssm's fused CUDA kernel (``pip install mamba-ssm``), imported lazily;
  - ``"torch"``: a chunked parallel scan in plain PyTorch, on any device and dtype, differentiable by autograd;
  - ``"auto"``: mamba-ssm when it is installed, the tensors are on CUDA and their dtype is one the kernel takes
    (float32, float16, bfloat16); otherwise the torch twin.

Importing this module imports neither mamba-ssm nor causal-conv1d.
"""

from __future__ import annotations

import importlib.util
from functools import cache

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..utils.import_utils import is_mamba_ssm_available, require_package

__all__ = ["causal_conv1d", "selective_scan", "selective_scan_torch", "DEFAULT_CHUNK_SIZE"]

# Time steps per chunk of the torch twin. Each chunk costs log2(chunk) vectorised steps, and the loop over chunks costs
# L / chunk Python iterations (on CPU, 32 was faster than 16 or 64 at Mamba3D size; GPU not tuned yet).
DEFAULT_CHUNK_SIZE = 32

_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_BACKENDS = ("auto", "torch", "cuda", "mamba_ssm")


def _shape_error(name: str, expected: str, tensor: torch.Tensor) -> ValueError:
    return ValueError(f"selective_scan: `{name}` must have shape {expected}, got {tuple(tensor.shape)}")


def _check_inputs(u, delta, A, B, C, D, z, delta_bias) -> int:
    """Validate shapes; return the number of groups G of the variable B/C (1 when neither is grouped)."""
    if u.dim() != 3:
        raise _shape_error("u", "[batch, dim, L]", u)
    batch, dim, length = u.shape
    if delta.shape != u.shape:
        raise _shape_error("delta", f"[batch, dim, L] = {tuple(u.shape)} (the shape of u)", delta)
    if A.dim() != 2 or A.shape[0] != dim:
        raise _shape_error("A", f"[dim, N] with dim = {dim}", A)
    if A.is_complex():
        raise ValueError("selective_scan: `A` must be real; complex A (S4D-style) is not supported here")
    n_state = A.shape[1]
    groups = set()
    for name, t in (("B", B), ("C", C)):
        if t.dim() == 2:  # time-invariant [dim, N]
            if tuple(t.shape) != (dim, n_state):
                raise _shape_error(name, f"[dim, N] = {(dim, n_state)}, [batch, N, L] or [batch, G, N, L]", t)
        elif t.dim() == 3:
            if tuple(t.shape) != (batch, n_state, length):
                raise _shape_error(name, f"[batch, N, L] = {(batch, n_state, length)}", t)
            groups.add(1)
        elif t.dim() == 4:
            if t.shape[0] != batch or t.shape[2:] != (n_state, length) or t.shape[1] < 1 or dim % t.shape[1]:
                expected = f"[batch, G, N, L] = ({batch}, G, {n_state}, {length}) with G dividing {dim}"
                raise _shape_error(name, expected, t)
            groups.add(t.shape[1])
        else:
            raise _shape_error(name, "[dim, N], [batch, N, L] or [batch, G, N, L]", t)
        if t.is_complex():
            raise ValueError(f"selective_scan: `{name}` must be real")
    if len(groups) > 1:
        raise ValueError(f"selective_scan: `B` and `C` must have the same number of groups, got {sorted(groups)}")
    if D is not None and tuple(D.shape) != (dim,):
        raise _shape_error("D", f"[dim] = ({dim},)", D)
    if z is not None and z.shape != u.shape:
        raise _shape_error("z", f"[batch, dim, L] = {tuple(u.shape)} (the shape of u)", z)
    if delta_bias is not None and tuple(delta_bias.shape) != (dim,):
        raise _shape_error("delta_bias", f"[dim] = ({dim},)", delta_bias)
    return groups.pop() if groups else 1


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    backend: str = "auto",
):
    """Selective scan (Mamba S6), same semantics and shapes as mamba-ssm's ``selective_scan_fn``.

    Args:
        u: input ``[batch, dim, L]``.
        delta: time steps ``[batch, dim, L]`` (before ``delta_bias`` and softplus).
        A: real state matrix ``[dim, N]`` (negative in Mamba: ``A = -exp(A_log)``).
        B, C: input-dependent ``[batch, N, L]``, grouped ``[batch, G, N, L]`` (channel ``d`` uses group
            ``d // (dim // G)``), or time-invariant ``[dim, N]``.
        D: skip connection ``[dim]``.
        z: gate ``[batch, dim, L]``; the output is multiplied by ``silu(z)``.
        delta_bias: ``[dim]``, added to ``delta`` before the softplus.
        delta_softplus: apply softplus to ``delta + delta_bias``.
        return_last_state: also return the final state ``h_{L-1}`` ``[batch, dim, N]`` (float32, or float64 for
            float64 inputs on the torch backend).
        backend: ``"auto"``, ``"torch"``, ``"cuda"`` or ``"mamba_ssm"`` (the last two are the same kernel).

    Returns:
        ``y`` ``[batch, dim, L]`` in the dtype of ``u``; or ``(y, last_state)`` with ``return_last_state``.

    Raises:
        ValueError: on a bad shape (the message names the argument and the expected shape) or an unknown backend.
        ImportError: for ``backend="cuda"`` without mamba-ssm installed.
    """
    if backend not in _BACKENDS:
        raise ValueError(f"selective_scan: backend must be one of {_BACKENDS}, got {backend!r}")
    _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    if backend == "auto":
        use_kernel = is_mamba_ssm_available() and u.is_cuda and u.dtype in _KERNEL_DTYPES
        backend = "cuda" if use_kernel else "torch"
    if backend == "torch":
        return selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    require_package("mamba_ssm", f'selective_scan(backend="{backend}")')
    if not u.is_cuda:
        raise ValueError(f'selective_scan(backend="{backend}") needs CUDA tensors, got `u` on {u.device}')
    if u.dtype not in _KERNEL_DTYPES:
        raise ValueError(f'selective_scan(backend="{backend}") takes float32/float16/bfloat16, got {u.dtype}')
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    # The kernel wants A, D, delta_bias (and a time-invariant B/C) in float32, everything else in u's dtype.
    itype = u.dtype
    B = B.float() if B.dim() == 2 else B.to(itype)
    C = C.float() if C.dim() == 2 else C.to(itype)
    return selective_scan_fn(
        u,
        delta.to(itype),
        A.float(),
        B,
        C,
        D=None if D is None else D.float(),
        z=None if z is None else z.to(itype),
        delta_bias=None if delta_bias is None else delta_bias.float(),
        delta_softplus=delta_softplus,
        return_last_state=return_last_state,
    )


def _scan_chunk(
    h0: torch.Tensor, dt: torch.Tensor, dtu: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk of T steps of h_t = a_t h_{t-1} + b_t, solved by a Hillis-Steele scan (log2 T vectorised steps).

    Shapes (G groups of dg channels; B and C broadcast over whichever axes they do not vary along):
        h0 [b, G, dg, N]; dt, dtu [b, G, dg, T]; A [1, G, dg, 1, N]; B, C [b|1, G, 1|dg, T|1, N].
    Returns y [b, G, dg, T] = <C_t, h_t> and the last state h_{T-1} [b, G, dg, N].

    Every factor a_t = exp(dt_t A) lies in [0, 1] (A < 0), so products of them never overflow, unlike the
    exp(cumsum) / exp(-cumsum) factorisation whose second factor explodes for long chunks or large dt.
    """
    a = torch.exp(dt.unsqueeze(-1) * A)  # [b, G, dg, T, N]
    x = dtu.unsqueeze(-1) * B
    # Fold the incoming state into the first step: b_0 <- b_0 + a_0 h0. The scan then yields h_t directly.
    x = torch.cat([x[..., :1, :] + a[..., :1, :] * h0.unsqueeze(-2), x[..., 1:, :]], dim=-2)
    length = x.shape[-2]
    k = 1
    while k < length:
        # After this step, (a_t, x_t) composes the last 2k steps ending at t (fewer near the start). Shifting by
        # zero-padding (ones for the decays) keeps full-size ops whose backward is a cheap slice.
        x = torch.addcmul(x, a, F.pad(x[..., :-k, :], (0, 0, k, 0)))
        if 2 * k < length:  # the last step does not need the composed decays
            a = a * F.pad(a[..., :-k, :], (0, 0, k, 0), value=1.0)
        k *= 2
    y = (x * C).sum(-1)
    return y, x[..., -1, :]


def selective_scan_torch(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    checkpoint_chunks: bool | None = None,
):
    """Pure-PyTorch twin of :func:`selective_scan`: a chunked parallel scan (no Python loop over time steps).

    The sequence is cut into chunks of ``chunk_size`` steps. Inside a chunk the linear recurrence
    ``h_t = a_t h_{t-1} + b_t`` (``a_t = exp(delta_t A)``, ``b_t = delta_t B_t u_t``) is solved for all t at once by a
    Hillis-Steele scan over the pairs ``(a_t, b_t)`` with ``(a, b) o (a', b') = (a a', a' b + b')``: log2(T)
    vectorised steps, numerically safe because it only multiplies decays in [0, 1]. The state at the end of a chunk
    is carried into the next by a loop over the L / T chunks.

    Memory: a chunk's intermediates are ``[batch, dim, T, N]``; nothing of size ``[batch, dim, L, N]`` is kept for
    backward when ``checkpoint_chunks`` is on (the default whenever autograd records the call), because each chunk is
    recomputed in backward from its inputs and incoming state (``torch.utils.checkpoint``).

    Computes in float32 (float64 when any input is float64) and returns ``u``'s dtype. Arguments as for
    :func:`selective_scan`, plus ``chunk_size`` and ``checkpoint_chunks`` (None: on when grad is needed).
    """
    groups = _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    if chunk_size < 1:
        raise ValueError(f"selective_scan_torch: chunk_size must be >= 1, got {chunk_size}")
    batch, dim, length = u.shape
    n_state = A.shape[1]
    dg = dim // groups
    tensors = [t for t in (u, delta, A, B, C, D, z, delta_bias) if t is not None]
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
    out_dtype = u.dtype

    dt = delta.to(dtype)
    if delta_bias is not None:
        dt = dt + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    uf = u.to(dtype)
    dtu = dt * uf
    # Channels split as [G, dg]; B/C laid out [.., T, N] so the scan runs along dim -2 and N is innermost.
    dt_g = dt.view(batch, groups, dg, length)
    dtu_g = dtu.view(batch, groups, dg, length)
    A_g = A.to(dtype).view(1, groups, dg, 1, n_state)

    def layout(t: torch.Tensor) -> torch.Tensor:
        t = t.to(dtype)
        if t.dim() == 2:  # [dim, N] -> [1, G, dg, 1, N]
            return t.view(1, groups, dg, 1, n_state)
        if t.dim() == 3:  # [b, N, L] -> [b, 1, 1, L, N]
            return t.transpose(1, 2).unsqueeze(1).unsqueeze(1)
        return t.transpose(2, 3).unsqueeze(2)  # [b, G, N, L] -> [b, G, 1, L, N]

    B_g, C_g = layout(B), layout(C)
    variable_B, variable_C = B.dim() > 2, C.dim() > 2

    if checkpoint_chunks is None:
        checkpoint_chunks = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    h = torch.zeros(batch, groups, dg, n_state, dtype=dtype, device=u.device)
    ys = []
    for start in range(0, length, chunk_size):
        stop = min(start + chunk_size, length)
        args = (
            h,
            dt_g[..., start:stop],
            dtu_g[..., start:stop],
            A_g,
            B_g[..., start:stop, :] if variable_B else B_g,
            C_g[..., start:stop, :] if variable_C else C_g,
        )
        if checkpoint_chunks:
            y, h = checkpoint(_scan_chunk, *args, use_reentrant=False)
        else:
            y, h = _scan_chunk(*args)
        ys.append(y)
    y = torch.cat(ys, dim=-1).reshape(batch, dim, length)
    if D is not None:
        y = y + D.to(dtype)[:, None] * uf
    if z is not None:
        y = y * F.silu(z.to(dtype))
    y = y.to(out_dtype)
    if return_last_state:
        return y, h.reshape(batch, dim, n_state)
    return y


@cache
def _is_causal_conv1d_available() -> bool:
    try:
        return importlib.util.find_spec("causal_conv1d") is not None
    except (ImportError, ValueError):
        return False


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Causal depthwise 1-D convolution, as in Mamba's block (before the selective scan).

    ``out[b, d, t] = act(bias[d] + sum_k weight[d, k] * x[b, d, t - (width - 1) + k])`` with zeros before t = 0.

    Backends: ``"torch"`` is ``F.conv1d`` with ``groups=dim`` and left padding ``width - 1`` (the padded conv's
    output truncated to L), on any device. ``"cuda"`` is ``causal_conv1d_fn`` from the optional ``causal-conv1d``
    package (``pip install causal-conv1d``; CUDA tensors, width 2..4). ``"auto"`` takes the package when it is
    installed, the tensors are on CUDA and the width is 2..4, else the torch path. Nothing is imported at module load.

    Args:
        x: ``[batch, dim, L]``.
        weight: ``[dim, width]``.
        bias: ``[dim]`` or None.
        activation: None, ``"silu"`` or ``"swish"`` (the same as silu).
    """
    if x.dim() != 3:
        raise ValueError(f"causal_conv1d: `x` must have shape [batch, dim, L], got {tuple(x.shape)}")
    dim = x.shape[1]
    if weight.dim() != 2 or weight.shape[0] != dim:
        shape = tuple(weight.shape)
        raise ValueError(f"causal_conv1d: `weight` must have shape [dim, width] with dim = {dim}, got {shape}")
    if bias is not None and tuple(bias.shape) != (dim,):
        raise ValueError(f"causal_conv1d: `bias` must have shape [dim] = ({dim},), got {tuple(bias.shape)}")
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"causal_conv1d: activation must be None, 'silu' or 'swish', got {activation!r}")
    if backend not in ("auto", "torch", "cuda"):
        raise ValueError(f"causal_conv1d: backend must be 'auto', 'torch' or 'cuda', got {backend!r}")
    width = weight.shape[1]
    if backend == "auto":
        backend = "cuda" if _is_causal_conv1d_available() and x.is_cuda and 2 <= width <= 4 else "torch"
    if backend == "cuda":
        if not _is_causal_conv1d_available():
            raise ImportError(
                'causal_conv1d(backend="cuda") needs the optional package `causal_conv1d`, which is not installed: '
                "pip install causal-conv1d"
            )
        if not x.is_cuda:
            raise ValueError(f'causal_conv1d(backend="cuda") needs CUDA tensors, got `x` on {x.device}')
        from causal_conv1d import causal_conv1d_fn

        return causal_conv1d_fn(x, weight, bias, activation)
    bias = None if bias is None else bias.to(x.dtype)
    out = F.conv1d(x, weight.unsqueeze(1).to(x.dtype), bias, padding=width - 1, groups=dim)
    out = out[..., : x.shape[-1]]
    return F.silu(out) if activation is not None else out
