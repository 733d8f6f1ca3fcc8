"""Serialized patch attention (PTv3): attention inside patches of consecutive voxels along a space-filling curve.

Patches (identical for every backend, and independent of the other scenes in the batch). For a scene of n voxels in
serialized order and patch size K:
  - n <= K: one patch holding the whole scene;
  - n > K: patches ``[0, K), [K, 2K), ...``; when K does not divide n, the last patch is the scene's last K voxels
    ``[n - K, n)``, and only its ``n mod K`` new voxels take their output from it (the others keep the output of their
    earlier patch).
This is exactly what Pointcept's PTv3 flash path computes (its padding copies the preceding voxels into the last
patch). Pointcept's non-flash path instead shrinks K to the smallest scene of the batch, which makes outputs depend on
batch composition; ours does not.

Backends:
  - ``"flash_attn"``: ``flash_attn.flash_attn_varlen_qkvpacked_func`` (CUDA, fp16/bf16);
  - ``"torch_varlen"``: ``torch.nn.attention.varlen.varlen_attn`` (CUDA, fp16/bf16; torch >= 2.10);
  - ``"torch"``: patches padded to the longest patch, ``F.scaled_dot_product_attention`` with a key mask (any device,
    any dtype): the pure-torch twin.
  - ``"auto"``: flash_attn, else torch_varlen, for CUDA tensors; else torch.
The varlen kernels need half precision: fp32 inputs are cast to ``half_dtype`` (fp16, as Pointcept's ``qkv.half()``)
for the kernel and the output is cast back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..utils.import_utils import is_flash_attn_available, require_package

ATTENTION_BACKENDS = ("auto", "torch", "torch_varlen", "flash_attn")


def _torch_varlen_available() -> bool:
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_attention_backend(backend: str, device: torch.device) -> str:
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"`attention_backend` must be one of {ATTENTION_BACKENDS}, got {backend!r}")
    if backend == "auto":
        if device.type != "cuda":
            return "torch"
        if is_flash_attn_available():
            return "flash_attn"
        return "torch_varlen" if _torch_varlen_available() else "torch"
    if backend == "flash_attn":
        require_package("flash_attn", 'attention_backend="flash_attn"')
    if backend == "torch_varlen" and not _torch_varlen_available():
        raise ImportError('attention_backend="torch_varlen" needs torch >= 2.10 (torch.nn.attention.varlen)')
    if backend in ("flash_attn", "torch_varlen") and device.type != "cuda":
        raise ValueError(f'attention_backend="{backend}" runs on CUDA tensors only; use "torch" on {device.type}')
    return backend


@dataclass
class PatchLayout:
    """Patches over a serialized sequence of N tokens (scene after scene).

    Attributes:
        token_index: ``[L]`` position (in the serialized sequence) of each patch slot, patch after patch.
        cu_seqlens: ``[num_patches + 1]`` int32 patch boundaries in ``token_index``.
        patch_lengths: ``[num_patches]`` int64.
        max_len: the longest patch.
        owner: ``[N]`` slot in ``token_index`` whose output each token takes.
        num_tokens: N.
        padded: some patch is shorter than ``max_len`` (the torch twin then masks its padding).
    """

    token_index: torch.Tensor
    cu_seqlens: torch.Tensor
    patch_lengths: torch.Tensor
    max_len: int
    owner: torch.Tensor
    num_tokens: int
    padded: bool


def build_patches(counts: torch.Tensor, patch_size: int) -> PatchLayout:
    """Patch layout for scenes of ``counts [B]`` tokens (each > 0) laid out one after another. One host sync: the
    ``B`` counts are read once, and every size of the layout is computed from them on the host."""
    if patch_size < 1:
        raise ValueError(f"`patch_size` must be >= 1, got {patch_size}")
    device = counts.device
    counts = counts.long()
    k = patch_size
    host_counts = counts.tolist()
    host_patches = [1 if n <= k else -(-n // k) for n in host_counts]
    total_patches = sum(host_patches)
    total_slots = sum(min(n, k) * p for n, p in zip(host_counts, host_patches))  # every patch holds min(n, K) slots
    num_tokens = sum(host_counts)
    max_len = min(max(host_counts), k)
    num_patches = torch.where(counts <= k, torch.ones_like(counts), (counts + k - 1) // k)  # [B]
    slots = torch.where(counts <= k, counts, num_patches * k)  # [B] slots per scene
    scene_start = torch.cumsum(counts, 0) - counts
    slot_start = torch.cumsum(slots, 0) - slots
    # per patch: scene, local start, length
    scenes = torch.arange(counts.numel(), device=device)
    patch_scene = torch.repeat_interleave(scenes, num_patches, output_size=total_patches)
    first_patch = torch.cumsum(num_patches, 0) - num_patches
    j = torch.arange(total_patches, device=device) - first_patch[patch_scene]  # patch number within its scene
    n = counts[patch_scene]
    is_last = j == num_patches[patch_scene] - 1
    local_start = torch.where(is_last & (n > k), n - k, j * k)
    length = torch.where(n <= k, n, torch.full_like(n, k))
    cu = torch.zeros(total_patches + 1, dtype=torch.long, device=device)
    cu[1:] = torch.cumsum(length, 0)
    slot_patch = torch.repeat_interleave(torch.arange(total_patches, device=device), length, output_size=total_slots)
    rank = torch.arange(total_slots, device=device) - cu[:-1][slot_patch]
    token_index = scene_start[patch_scene][slot_patch] + local_start[slot_patch] + rank
    # owner of every token: its slot in its first patch
    token_scene = torch.repeat_interleave(scenes, counts, output_size=num_tokens)
    local = torch.arange(num_tokens, device=device) - scene_start[token_scene]
    tn = counts[token_scene]
    full = (tn // k) * k  # tokens covered by the regular patches
    in_tail = (tn > k) & (local >= full)
    local_slot = torch.where(in_tail, (num_patches[token_scene] - 1) * k + local - (tn - k), local)
    owner = slot_start[token_scene] + local_slot
    padded = any(min(n, k) < max_len for n in host_counts)
    return PatchLayout(token_index, cu.int(), length, max_len, owner, num_tokens, padded)


def patch_attention_torch(qkv: torch.Tensor, layout: PatchLayout, scale: float) -> torch.Tensor:
    """Pure-torch twin: pad each patch to ``layout.max_len``, mask the padding, run SDPA.

    Args:
        qkv: ``[L, 3, H, D]`` per patch slot (already gathered by ``layout.token_index``).
    Returns:
        ``[L, H, D]``.
    """
    num_patches = layout.patch_lengths.numel()
    kmax = layout.max_len
    slot_patch = torch.repeat_interleave(
        torch.arange(num_patches, device=qkv.device), layout.patch_lengths, output_size=qkv.shape[0]
    )
    rank = torch.arange(qkv.shape[0], device=qkv.device) - layout.cu_seqlens[:-1].long()[slot_patch]
    flat = slot_patch * kmax + rank
    padded = qkv.new_zeros(num_patches * kmax, *qkv.shape[1:]).index_copy(0, flat, qkv)
    padded = padded.view(num_patches, kmax, 3, qkv.shape[2], qkv.shape[3]).permute(2, 0, 3, 1, 4)  # [3, P, H, K, D]
    q, k, v = padded.unbind(0)
    mask = None
    if layout.padded:
        valid = torch.arange(kmax, device=qkv.device)[None] < layout.patch_lengths[:, None]  # [P, K]
        mask = valid[:, None, None, :]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)  # [P, H, K, D]
    return out.permute(0, 2, 1, 3).reshape(num_patches * kmax, qkv.shape[2], qkv.shape[3])[flat]


def _patch_attention_varlen(qkv, layout: PatchLayout, scale: float, backend: str, half_dtype) -> torch.Tensor:
    dtype = qkv.dtype
    if dtype not in (torch.float16, torch.bfloat16):
        qkv = qkv.to(half_dtype)
    if backend == "flash_attn":
        from flash_attn import flash_attn_varlen_qkvpacked_func

        out = flash_attn_varlen_qkvpacked_func(
            qkv, layout.cu_seqlens, layout.max_len, dropout_p=0.0, softmax_scale=scale
        )
    else:
        from torch.nn.attention.varlen import varlen_attn

        q, k, v = qkv.unbind(1)
        cu = layout.cu_seqlens
        out = varlen_attn(q, k, v, cu, cu, layout.max_len, layout.max_len, scale=scale)
    return out.to(dtype)


def serialized_patch_attention(
    qkv: torch.Tensor,
    order: torch.Tensor,
    inverse: torch.Tensor,
    counts: torch.Tensor,
    patch_size: int,
    scale: float | None = None,
    backend: str = "torch",
    half_dtype: torch.dtype = torch.float16,
    layout: PatchLayout | None = None,
) -> torch.Tensor:
    """Attention within serialized patches.

    Args:
        qkv: ``[N, 3, H, D]`` queries, keys and values of N voxels (any row order).
        order: ``[N]`` rows in serialized order (scene after scene: ``argsort`` of codes with the scene in the high
            bits).
        inverse: ``[N]`` position of each row in ``order`` (``order[inverse] == arange(N)``).
        counts: ``[B]`` voxels per scene (each > 0).
        patch_size: K.
        scale: softmax scale (default ``D ** -0.5``).
        backend: a resolved backend: ``"torch"``, ``"torch_varlen"`` or ``"flash_attn"``.
        half_dtype: precision of the varlen kernels for fp32 inputs.
        layout: a precomputed ``build_patches(counts, patch_size)`` (reused across the blocks of a stage).
    Returns:
        ``[N, H, D]`` in the row order of ``qkv``.
    """
    if qkv.ndim != 4 or qkv.shape[1] != 3:
        raise ValueError(f"`qkv` must have shape [N, 3, H, D], got {tuple(qkv.shape)}")
    layout = build_patches(counts, patch_size) if layout is None else layout
    if layout.num_tokens != qkv.shape[0]:  # the layout's count, read on the host when it was built
        raise ValueError(f"`counts` must sum to N = {qkv.shape[0]}, got {layout.num_tokens}")
    scale = qkv.shape[-1] ** -0.5 if scale is None else scale
    slots = qkv[order[layout.token_index]]  # [L, 3, H, D]
    if backend == "torch":
        out = patch_attention_torch(slots, layout, scale)
    elif backend in ("flash_attn", "torch_varlen"):
        out = _patch_attention_varlen(slots, layout, scale, backend, half_dtype)
    else:
        raise ValueError(
            f"`backend` must be a resolved attention backend (torch, torch_varlen, flash_attn), got {backend!r}"
        )
    return out[layout.owner][inverse]


__all__ = [
    "ATTENTION_BACKENDS",
    "PatchLayout",
    "build_patches",
    "patch_attention_torch",
    "resolve_attention_backend",
    "serialized_patch_attention",
]
