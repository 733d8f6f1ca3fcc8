"""The torch twin of the selective scan against a float64 sequential reference (a plain loop over time)."""

import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from unipre3d_hf.ops.selective_scan import causal_conv1d, selective_scan, selective_scan_torch
from unipre3d_hf.utils import is_mamba_ssm_available

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def sequential_reference(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Mamba's recurrence one time step at a time (Gu & Dao 2023, Alg. 2); returns y and the last state."""
    batch, dim, length = u.shape
    dt = delta if delta_bias is None else delta + delta_bias[:, None]
    if delta_softplus:
        dt = F.softplus(dt)

    def steps(M):  # per time step, broadcastable to [batch, dim, N]
        if M.dim() == 2:  # time-invariant [dim, N]
            return [M.unsqueeze(0)] * length
        if M.dim() == 3:  # [batch, N, L]
            return [m.unsqueeze(1) for m in M.unbind(-1)]
        return [m.repeat_interleave(dim // M.shape[1], dim=1) for m in M.unbind(-1)]  # [batch, G, N, L]

    h = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for dt_t, u_t, B_t, C_t in zip(dt.unbind(-1), u.unbind(-1), steps(B), steps(C)):
        h = torch.exp(dt_t[..., None] * A) * h + (dt_t * u_t)[..., None] * B_t
        ys.append((h * C_t).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D[:, None] * u
    if z is not None:
        y = y * F.silu(z)
    return y, h


def mamba_like_inputs(batch, dim, length, n_state=16, *, seed=0, dtype=torch.float64, groups=None, invariant=False):
    """Inputs at the magnitudes of an initialised Mamba layer: A = -exp(log(1..N)), dt in [1e-3, 1e-1]."""
    g = torch.Generator().manual_seed(seed)
    A_log = torch.log(torch.arange(1, n_state + 1, dtype=dtype)).repeat(dim, 1)
    A = -torch.exp(A_log)
    dt = torch.exp(torch.rand(dim, generator=g, dtype=dtype) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    delta_bias = dt + torch.log(-torch.expm1(-dt))  # softplus^-1(dt), as Mamba initialises dt_proj.bias
    if groups is None and not invariant:
        bc_shape = (batch, n_state, length)
    elif invariant:
        bc_shape = (dim, n_state)
    else:
        bc_shape = (batch, groups, n_state, length)
    return {
        "u": torch.randn(batch, dim, length, generator=g, dtype=dtype),
        "delta": 0.5 * torch.randn(batch, dim, length, generator=g, dtype=dtype),  # the dt_proj output
        "A": A,
        "B": torch.randn(*bc_shape, generator=g, dtype=dtype),
        "C": torch.randn(*bc_shape, generator=g, dtype=dtype),
        "D": torch.ones(dim, dtype=dtype) + 0.1 * torch.randn(dim, generator=g, dtype=dtype),
        "z": torch.randn(batch, dim, length, generator=g, dtype=dtype),
        "delta_bias": delta_bias,
    }


def outputs_and_grads(fn, inputs, used, softplus, **kwargs):
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in inputs.items() if k in used}
    kw = {k: leaves.get(k) for k in NAMES}
    out = fn(**kw, delta_softplus=softplus, **kwargs)
    y = out[0] if isinstance(out, tuple) else out
    weight = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(y.dtype)
    (y * weight).sum().backward()
    return y.detach(), {k: v.grad for k, v in leaves.items()}


def max_rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


FULL = set(NAMES)
BARE = {"u", "delta", "A", "B", "C"}


@pytest.mark.parametrize(
    "name, length, used, softplus, kwargs, mk",
    [
        ("everything, L not a multiple of the chunk", 70, FULL, True, {}, {}),
        ("no D/z/bias/softplus", 45, BARE, False, {}, {}),
        ("D and z only, no softplus", 33, BARE | {"D", "z"}, False, {}, {}),
        ("bias and softplus only", 64, BARE | {"delta_bias"}, True, {}, {}),
        ("L = 1", 1, FULL, True, {}, {}),
        ("chunk 1", 11, FULL, True, {"chunk_size": 1}, {}),
        ("chunk 7", 30, FULL, True, {"chunk_size": 7}, {}),
        ("chunk longer than L", 20, FULL, True, {"chunk_size": 64}, {}),
        ("no checkpointing", 40, FULL, True, {"checkpoint_chunks": False}, {}),
        ("grouped B/C, G=2", 37, FULL, True, {}, {"groups": 2}),
        ("time-invariant B/C", 37, FULL, True, {}, {"invariant": True}),
    ],
)
def test_twin_matches_sequential_reference_float64(name, length, used, softplus, kwargs, mk):
    inputs = mamba_like_inputs(2, 6, length, **mk)
    if not softplus:  # delta is then used as is: make it a valid positive step
        inputs["delta"] = F.softplus(inputs["delta"] + inputs["delta_bias"][:, None])

    def ref(**kw):
        return sequential_reference(**kw)[0]

    y_ref, g_ref = outputs_and_grads(ref, inputs, used, softplus)
    y, g = outputs_and_grads(selective_scan_torch, inputs, used, softplus, **kwargs)
    assert y.shape == (2, 6, length) and y.dtype == torch.float64
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    assert set(g) == used
    for k in used:
        assert g[k] is not None and torch.isfinite(g[k]).all(), k
        torch.testing.assert_close(g[k], g_ref[k], rtol=1e-9, atol=1e-11, msg=lambda m, k=k: f"grad {k}: {m}")


def test_last_state_and_auto_backend_on_cpu():
    inputs = mamba_like_inputs(2, 4, 50)
    y_ref, h_ref = sequential_reference(**inputs, delta_softplus=True)
    y, h = selective_scan(**inputs, delta_softplus=True, return_last_state=True)  # "auto" is the twin on CPU
    assert h.shape == (2, 4, 16)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(h, h_ref, rtol=1e-10, atol=1e-12)


def test_long_sequence_float32():
    """PCM-length sequence (L = 1100, 35 chunks) in float32 against the float64 loop, outputs and gradients."""
    inputs64 = mamba_like_inputs(2, 8, 1100, seed=3)
    inputs32 = {k: v.float() for k, v in inputs64.items()}
    y_ref, g_ref = outputs_and_grads(lambda **kw: sequential_reference(**kw)[0], inputs64, FULL, True)
    y, g = outputs_and_grads(selective_scan_torch, inputs32, FULL, True)
    assert y.dtype == torch.float32
    assert max_rel(y.double(), y_ref) < 1e-5
    for k in NAMES:
        assert max_rel(g[k].double(), g_ref[k]) < 1e-4, k


def test_large_steps_stay_finite():
    """Large delta * |A| (decays of exp(-800) per step) must neither overflow nor give inf * 0 = NaN."""
    inputs = mamba_like_inputs(1, 4, 100, seed=5)
    inputs["delta"] = 50.0 + 0 * inputs["delta"]
    y_ref, g_ref = outputs_and_grads(lambda **kw: sequential_reference(**kw)[0], inputs, FULL, True)
    inputs32 = {k: v.float() for k, v in inputs.items()}
    y, g = outputs_and_grads(selective_scan_torch, inputs32, FULL, True)
    assert torch.isfinite(y).all() and all(torch.isfinite(v).all() for v in g.values())
    assert max_rel(y.double(), y_ref) < 1e-5
    for k in NAMES:
        assert max_rel(g[k].double(), g_ref[k]) < 1e-4, k


def test_gradcheck_float64():
    inputs = mamba_like_inputs(1, 3, 9, n_state=4, seed=7)
    inputs["A"] = inputs["A"] * 0.3  # keep the decays away from 0 so every input has a visible effect
    leaves = tuple(inputs[k].clone().requires_grad_(True) for k in NAMES)

    def fn(*args):
        return selective_scan_torch(*args, delta_softplus=True, chunk_size=4)

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_low_precision_input_returns_its_dtype():
    inputs = mamba_like_inputs(2, 4, 40, seed=2)
    y_ref, _ = sequential_reference(**inputs, delta_softplus=True)
    half = dict(inputs, u=inputs["u"].bfloat16(), delta=inputs["delta"].bfloat16(), z=inputs["z"].bfloat16())
    half = {k: (v if v.dtype == torch.bfloat16 else v.float()) for k, v in half.items()}
    y = selective_scan_torch(**half, delta_softplus=True)
    assert y.dtype == torch.bfloat16
    assert max_rel(y.double(), y_ref) < 3e-2  # bf16 rounding of u, delta, z and of the output


BAD_SHAPES = [
    ("u", lambda k: k["u"][0], "[batch, dim, L]"),
    ("delta", lambda k: k["delta"][..., :-1], "[batch, dim, L]"),
    ("A", lambda k: k["A"][:-1], "[dim, N]"),
    ("B", lambda k: k["B"][..., :-1], "[batch, N, L]"),
    ("C", lambda k: k["C"][:, :-1], "[batch, N, L]"),
    ("B", lambda k: k["B"].unsqueeze(1).expand(-1, 5, -1, -1), "[batch, G, N, L]"),
    ("C", lambda k: k["C"][0, 0], "[dim, N]"),
    ("D", lambda k: k["D"][:-1], "[dim]"),
    ("z", lambda k: k["z"].transpose(1, 2), "[batch, dim, L]"),
    ("delta_bias", lambda k: k["delta_bias"][None], "[dim]"),
]


@pytest.mark.parametrize("name, corrupt, expected", BAD_SHAPES)
def test_bad_shapes_raise_value_error_naming_the_argument(name, corrupt, expected):
    inputs = mamba_like_inputs(2, 6, 10)
    bad = dict(inputs, **{name: corrupt(inputs)})
    for fn in (selective_scan, selective_scan_torch):
        with pytest.raises(ValueError, match=rf"`{name}` must have shape {expected[:4]}".replace("[", r"\[")) as err:
            fn(**bad)
        assert expected in str(err.value)


def test_bad_groups_backend_and_complex_a():
    inputs = mamba_like_inputs(2, 6, 10, groups=2)
    with pytest.raises(ValueError, match="same number of groups"):
        selective_scan(**dict(inputs, C=inputs["C"][:, :1]))
    with pytest.raises(ValueError, match="backend"):
        selective_scan(**inputs, backend="triton")
    with pytest.raises(ValueError, match="`A` must be real"):
        selective_scan(**dict(inputs, A=inputs["A"].to(torch.complex128)))


@pytest.mark.skipif(is_mamba_ssm_available(), reason="checks the message shown when mamba-ssm is missing")
def test_cuda_backend_without_mamba_ssm_raises_import_error():
    with pytest.raises(ImportError, match="mamba-ssm"):
        selective_scan(**mamba_like_inputs(1, 2, 3), backend="cuda")


def test_import_does_not_import_kernels():
    code = (
        "import sys, unipre3d_hf.ops.selective_scan as m; "
        "assert 'mamba_ssm' not in sys.modules and 'causal_conv1d' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_causal_conv1d_matches_explicit_sum():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 13, generator=g, dtype=torch.float64)
    w = torch.randn(5, 4, generator=g, dtype=torch.float64)
    b = torch.randn(5, generator=g, dtype=torch.float64)
    xp = F.pad(x, (3, 0))
    expected = b[:, None] + sum(w[:, k, None] * xp[..., k : k + 13] for k in range(4))
    torch.testing.assert_close(causal_conv1d(x, w, b), expected)
    torch.testing.assert_close(causal_conv1d(x, w, b, activation="silu"), F.silu(expected))
    torch.testing.assert_close(causal_conv1d(x, w), expected - b[:, None])
    # causal: changing x at time 7 leaves outputs before 7 unchanged
    x2 = x.clone()
    x2[..., 7] += 1.0
    out, out2 = causal_conv1d(x, w, b), causal_conv1d(x2, w, b)
    torch.testing.assert_close(out2[..., :7], out[..., :7])
    assert (out2[..., 7:11] != out[..., 7:11]).all()
    torch.testing.assert_close(out2[..., 11:], out[..., 11:])


def test_causal_conv1d_bad_shapes():
    x, w = torch.randn(2, 5, 13), torch.randn(5, 4)
    with pytest.raises(ValueError, match=r"`x` must have shape \[batch, dim, L\]"):
        causal_conv1d(x[0], w)
    with pytest.raises(ValueError, match=r"`weight` must have shape \[dim, width\]"):
        causal_conv1d(x, w[:4])
    with pytest.raises(ValueError, match=r"`bias` must have shape \[dim\]"):
        causal_conv1d(x, w, torch.zeros(4))
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d(x, w, activation="relu")
