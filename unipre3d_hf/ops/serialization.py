"""Space-filling-curve serialization of voxel grids (z-order / Morton and Hilbert), pure torch and batched.

PTv3 (Wu et al., CVPR 2024, "Point Transformer V3: Simpler, Faster, Stronger") orders the voxels of a scene along a
space-filling curve and cuts that sequence into patches; Point Cloud Mamba orders points the same way. The functions
here encode integer grid coordinates ``[N, 3]`` into one int64 code per point; sorting by the code gives the order.

Conventions (those of Pointcept's ``pointcept/models/utils/serialization``, re-derived here):
  - z-order: bit ``i`` of x, y, z goes to bit ``3i + 2``, ``3i + 1``, ``3i`` of the code (x most significant in each
    triple; the O-CNN ``xyz2key`` layout).
  - Hilbert: John Skilling's algorithm ("Programming the Hilbert curve", AIP Conf. Proc. 707, 2004): axes -> "transpose"
    form by undoing excess work and Gray-encoding, then the transposed bits are interleaved with x most significant.
  - "-trans" orders swap x and y before encoding (Pointcept's ``grid_coord[:, [1, 0, 2]]``).
  - ``serialize`` puts the batch index above the ``3 * depth`` code bits, so sorting the codes sorts by scene first.

Depth. Pointcept derives the depth from the data (``(max grid coord + 1).bit_length()`` over the whole batch); for the
Hilbert curve that makes a scene's order depend on the other scenes in its batch, since the curve's orientation
depends on the number of bits. ``serialize(depth=None)`` therefore uses the fixed ``MAX_DEPTH = 16``: a Hilbert curve
of depth 16 restricted to the low corner cube ``[0, 2^k)^3`` is a Hilbert curve of that cube, so nothing is lost,
and the order of a scene is the same alone or in any batch. Codes of a coarser level are ``code >> 3`` (the parent
cell), as Pointcept's pooling does.
"""

from __future__ import annotations

import torch

MAX_DEPTH = 16
ORDERS = ("z", "z-trans", "hilbert", "hilbert-trans")


def _check_grid(grid_coords: torch.Tensor, depth: int, check_range: bool = True) -> None:
    if grid_coords.ndim != 2 or grid_coords.shape[1] != 3:
        raise ValueError(f"`grid_coords` must have shape [N, 3], got {tuple(grid_coords.shape)}")
    if grid_coords.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"`grid_coords` must be an integer (int64) tensor, got {grid_coords.dtype}")
    if not 1 <= depth <= MAX_DEPTH:
        raise ValueError(f"`depth` must be in [1, {MAX_DEPTH}], got {depth}")
    # the range check reads the data (a graph break and a host sync): eager calls run it, torch.compile skips it, as
    # ops/voxelize.py does (PCM's compiled backbone builds its grids as floor(p / grid_size) - min, never negative)
    if check_range and not torch.compiler.is_compiling():
        check_grid_range(grid_coords, depth)


def check_grid_range(grid_coords: torch.Tensor, depth: int) -> None:
    """Raise unless every coordinate lies in ``[0, 2^depth)`` (one host sync)."""
    if grid_coords.numel() and bool((grid_coords.min() < 0) | (grid_coords.max() >= (1 << depth))):
        raise ValueError(f"`grid_coords` must lie in [0, 2^depth) = [0, {1 << depth}) for depth {depth}")


def _spread_bits(v: torch.Tensor) -> torch.Tensor:
    """Insert two zero bits between the low 16 bits of ``v`` (bit i -> bit 3i): the standard "magic number" spreading
    (e.g. Sean Anderson, "Bit Twiddling Hacks", interleave bits by binary magic numbers, extended to 3D)."""
    v = v & 0xFFFF
    v = (v | (v << 16)) & 0x0000FF0000FF
    v = (v | (v << 8)) & 0x00F00F00F00F
    v = (v | (v << 4)) & 0x0C30C30C30C3
    v = (v | (v << 2)) & 0x249249249249
    return v


def z_order_encode(grid_coords: torch.Tensor, depth: int = MAX_DEPTH, check_range: bool = True) -> torch.Tensor:
    """Morton code of integer coordinates.

    Args:
        grid_coords: ``[N, 3]`` int64, each in ``[0, 2^depth)``.
        depth: bits per axis (at most 16).
        check_range: check the range (a host sync); False for callers that know it.
    Returns:
        ``[N]`` int64 codes in ``[0, 8^depth)``; bit ``i`` of x/y/z lands on bit ``3i+2``/``3i+1``/``3i``.
    """
    _check_grid(grid_coords, depth, check_range)
    g = grid_coords.long()
    return (_spread_bits(g[:, 0]) << 2) | (_spread_bits(g[:, 1]) << 1) | _spread_bits(g[:, 2])


def hilbert_encode(grid_coords: torch.Tensor, depth: int = MAX_DEPTH, check_range: bool = True) -> torch.Tensor:
    """Hilbert index of integer coordinates (Skilling 2004), vectorised over points; loops only over bits and axes.

    Args:
        grid_coords: ``[N, 3]`` int64, each in ``[0, 2^depth)``.
        depth: bits per axis (at most 16).
        check_range: check the range (a host sync); False for callers that know it.
    Returns:
        ``[N]`` int64 codes in ``[0, 8^depth)``; consecutive codes are face-adjacent cells of the ``2^depth`` cube.
    """
    _check_grid(grid_coords, depth, check_range)
    x = [grid_coords[:, i].long().clone() for i in range(3)]
    # Skilling, AxestoTranspose: "inverse undo" of the excess work, from the top bit down to bit 1.
    q = 1 << (depth - 1)
    while q > 1:
        p = q - 1
        for i in range(3):
            has_bit = (x[i] & q) != 0
            # invert the low bits of x[0] where x[i] has bit q, else exchange the low bits of x[0] and x[i]
            t = (x[0] ^ x[i]) & p
            new_x0 = torch.where(has_bit, x[0] ^ p, x[0] ^ t)
            if i != 0:
                x[i] = torch.where(has_bit, x[i], x[i] ^ t)
            x[0] = new_x0
        q >>= 1
    # Gray encode
    x[1] = x[1] ^ x[0]
    x[2] = x[2] ^ x[1]
    t = torch.zeros_like(x[0])
    q = 1 << (depth - 1)
    while q > 1:
        t = torch.where((x[2] & q) != 0, t ^ (q - 1), t)
        q >>= 1
    x = [xi ^ t for xi in x]
    # The transposed index: bit b of x[0], x[1], x[2] become bits 3b+2, 3b+1, 3b of the Hilbert index.
    return (_spread_bits(x[0]) << 2) | (_spread_bits(x[1]) << 1) | _spread_bits(x[2])


def serialize(
    grid_coords: torch.Tensor,
    batch_index: torch.Tensor,
    order: str = "z",
    depth: int | None = None,
    check_range: bool = True,
) -> torch.Tensor:
    """Serialization code of each voxel, with its scene index in the high bits (Pointcept's ``encode``).

    Args:
        grid_coords: ``[N, 3]`` int64 non-negative grid coordinates.
        batch_index: ``[N]`` int64 scene index of each voxel (at most 2^15 - 1).
        order: one of ``"z"``, ``"z-trans"``, ``"hilbert"``, ``"hilbert-trans"``.
        depth: bits per axis; ``None`` uses ``MAX_DEPTH`` (16) so the order does not depend on the batch (see the
            module docstring).
        check_range: check that the coordinates lie in ``[0, 2^depth)`` (a host sync); False for callers that know
            it (e.g. once for several orders of the same grid).
    Returns:
        ``[N]`` int64 codes ``batch << (3 * depth) | curve_code``; ``torch.argsort(codes)`` is the serialized order.
    """
    depth = MAX_DEPTH if depth is None else int(depth)
    if batch_index.shape != grid_coords.shape[:1]:
        raise ValueError(
            f"`batch_index` must have shape [N] = [{grid_coords.shape[0]}], got {tuple(batch_index.shape)}"
        )
    if order not in ORDERS:
        raise ValueError(f"`order` must be one of {ORDERS}, got {order!r}")
    if order.endswith("-trans"):
        grid_coords = grid_coords[:, [1, 0, 2]]
    encode = z_order_encode if order.startswith("z") else hilbert_encode
    code = encode(grid_coords, depth, check_range)
    return (batch_index.long() << (3 * depth)) | code


__all__ = ["MAX_DEPTH", "ORDERS", "check_grid_range", "hilbert_encode", "serialize", "z_order_encode"]


AXIS_ORDERS = ("xyz", "xzy", "yxz", "yzx", "zxy", "zyx")


def serialize_pcm_legacy(grid_coords: torch.Tensor, batch_index: torch.Tensor, order: str) -> torch.Tensor:
    """Serialization codes exactly as UniPre3D's Point Cloud Mamba computes them, for parity with its checkpoints
    (``openpoints/models/PCM/serialization.py``: ``Point.serialization`` with ``depth=None``, ``encode``,
    ``encode_cts``).

    - Depth: ``int(grid_coords.max()).bit_length()`` over the whole batch (not ``MAX_DEPTH``), so the Hilbert and
      z-order curves of a cloud depend on its batch mates.
    - Axis orders (``"xyz"``, ``"xzy"``, ...): with ``a, b, c`` the coordinates in that axis order and ``A, B, C``
      their maxima over the batch, ``encode_cts`` builds ``code1 = n(B) * A + s(B) * a``,
      ``code2 = n(C) * A * B + s(C) * code1`` and ``code = batch * A * B * C + code2``, where ``s(m) = +1`` for even
      ``m`` and ``-1`` for odd ``m`` and ``n(m) = m`` (even) or ``m + 1`` (odd): it uses the batch-wide *maxima* of
      the 2nd and 3rd axes where a snake order would use their coordinates, so the code is a monotone function of
      the first axis alone (plus the sample), and the many ties are broken by the sort.

    The original sorts these codes with a non-stable ``torch.argsort`` on the GPU, whose tie order cannot be
    reproduced; sort them with ``stable=True`` (ties in index order). The codes themselves are reproduced exactly.

    Args:
        grid_coords: ``[N, 3]`` int64 non-negative grid coordinates (the batch flattened).
        batch_index: ``[N]`` int64 sample index.
        order: ``"xyz"``-style axis order, or ``"z"``, ``"z-trans"``, ``"hilbert"``, ``"hilbert-trans"``.
    Returns:
        ``[N]`` int64 codes.
    """
    if grid_coords.ndim != 2 or grid_coords.shape[1] != 3:
        raise ValueError(f"`grid_coords` must have shape [N, 3], got {tuple(grid_coords.shape)}")
    if order in ORDERS:
        depth = 1
        if grid_coords.numel():  # the range and the depth from one read of the extremes
            lo, hi = torch.stack([grid_coords.amin(), grid_coords.amax()]).tolist()
            if lo < 0 or hi >= 1 << MAX_DEPTH:
                raise ValueError(f"`grid_coords` must lie in [0, 2^{MAX_DEPTH}), got values in [{lo}, {hi}]")
            depth = max(int(hi).bit_length(), 1)
        return serialize(grid_coords.long(), batch_index, order, depth=depth, check_range=False)
    if order not in AXIS_ORDERS:
        raise ValueError(f"`order` must be one of {AXIS_ORDERS + ORDERS}, got {order!r}")
    g = grid_coords.long()[:, ["xyz".index(axis) for axis in order]]
    a = g[:, 0]
    maxima = g.amax(dim=0)
    code, base = a, maxima[0]
    for m in (maxima[1], maxima[2]):
        odd = m % 2  # on the device: s(m) = 1 - 2 * odd, n(m) = m + odd (no host read of the parity)
        code = (m + odd) * base + (1 - 2 * odd) * code
        base = base * m
    return batch_index.long() * base + code


__all__ += ["AXIS_ORDERS", "serialize_pcm_legacy"]
