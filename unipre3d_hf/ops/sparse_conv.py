"""Sparse 3D convolution (submanifold, strided, inverse) with two interchangeable backends.

- ``"spconv"``: Yan Yan's spconv 2.x (``pip install spconv-cu126``), used by the paper through Pointcept.
- ``"torch"``: a pure-PyTorch gather-GEMM-scatter twin. Voxels are hashed into sorted int64 keys
  (``batch | x | y | z``, 16 bits per axis); a kernel map (for every kernel offset, the pairs (input row, output row))
  is built with ``torch.searchsorted``; the convolution is then, per offset ``k``,
  ``out.index_add_(0, out_rows_k, features[in_rows_k] @ W_k)``.

Both backends share one parameter layout, spconv's: ``weight [out, kD, kH, kW, in]`` (plus an optional ``bias [out]``),
with kernel axis ``kD`` along grid axis x (the first column of ``grid_coords``), so a checkpoint trained with one runs
with the other. The index conventions are spconv's (checked against spconv in ``tests/ops/test_sparse_conv.py``):
  - submanifold conv, odd kernel k, centre c = k // 2: ``out[v] = sum_k W_k x[v + k - c]`` on the input voxels only
    (``padding`` is ignored, as spconv does for submanifold convs);
  - strided conv (kernel k, stride s, padding p): input ``i`` feeds output ``o`` through offset ``k`` when
    ``o * s - p + k = i`` (per axis); the outputs are every cell reached;
  - 1x1x1 convs: spconv multiplies by ``weight.view(in, out)`` (the raw storage read as [in, out], not the transpose
    of ``weight[:, 0, 0, 0, :]``); the torch twin does the same;
  - inverse conv: the transpose of the strided conv registered under the same ``indice_key``; its outputs are that
    conv's input voxels, in the same row order.

Kernel maps are cached per ``indice_key`` in ``SparseVoxels.kernel_maps`` (a dict shared by every tensor derived in one
forward pass, as spconv's ``indice_dict``), so each level builds its maps once. Difference from spconv: spconv drops
strided outputs beyond ``spatial_shape``; the torch twin has no upper bound (models give spconv a margin of 96 cells,
as Pointcept's SpUNet does, so neither drops anything).

Voxels that occur twice (e.g. an image pixel lifted onto an occupied 3D voxel by a fusion hook) are allowed: each row
gets its own output, and a neighbour lookup finds the first of the duplicates (by row).

On CPU the torch backend is the default: spconv's CPU build gives wrong results unless ``torch.set_num_threads(1)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from itertools import product

import torch
from torch import nn

from ..utils.import_utils import is_spconv_available, require_package

SPARSE_CONV_BACKENDS = ("auto", "torch", "spconv")
_AXIS_BITS = 16
MAX_GRID_COORD = (1 << _AXIS_BITS) - 1  # grid coordinates must lie in [0, MAX_GRID_COORD)
MAX_BATCH = 1 << 14


def resolve_sparse_conv_backend(backend: str, device: torch.device) -> str:
    """``"auto"`` -> ``"spconv"`` for CUDA tensors when spconv is installed, else ``"torch"``; ``"spconv"`` raises an
    ImportError naming the extra when spconv is missing."""
    if backend not in SPARSE_CONV_BACKENDS:
        raise ValueError(f"`sparse_conv_backend` must be one of {SPARSE_CONV_BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "spconv" if device.type == "cuda" and is_spconv_available() else "torch"
    if backend == "spconv":
        require_package("spconv", 'sparse_conv_backend="spconv"')
    return backend


def pack_voxel_keys(batch_index: torch.Tensor, grid_coords: torch.Tensor) -> torch.Tensor:
    """``[N]`` int64 keys ``batch << 48 | x << 32 | y << 16 | z`` (coordinates in ``[0, 2^16)``)."""
    g = grid_coords.long()
    return (batch_index.long() << (3 * _AXIS_BITS)) | (g[:, 0] << (2 * _AXIS_BITS)) | (g[:, 1] << _AXIS_BITS) | g[:, 2]


class VoxelHash:
    """Sorted-key lookup table over a set of voxels (duplicates allowed: lookups return the first row)."""

    def __init__(self, batch_index: torch.Tensor, grid_coords: torch.Tensor):
        keys = pack_voxel_keys(batch_index, grid_coords)
        self.sorted_keys, self.rows = torch.sort(keys, stable=True)

    def lookup(self, batch_index: torch.Tensor, grid_coords: torch.Tensor) -> torch.Tensor:
        """Row of each queried voxel, or -1 where it is absent. ``grid_coords`` may leave the valid range."""
        valid = ((grid_coords >= 0) & (grid_coords <= MAX_GRID_COORD)).all(dim=1)
        keys = pack_voxel_keys(batch_index, grid_coords.clamp(0, MAX_GRID_COORD))
        if self.sorted_keys.numel() == 0:
            return torch.full_like(keys, -1)
        pos = torch.searchsorted(self.sorted_keys, keys).clamp_(max=self.sorted_keys.numel() - 1)
        found = valid & (self.sorted_keys[pos] == keys)
        return torch.where(found, self.rows[pos], torch.full_like(pos, -1))


@dataclass
class KernelMap:
    """Pairs of a sparse convolution, grouped by kernel offset.

    ``in_rows[starts[k]:starts[k+1]]`` feed ``out_rows[starts[k]:starts[k+1]]`` through ``W_k``. ``num_out`` rows are
    produced. A strided map also records its output voxels and its input voxels (the inverse conv's outputs).
    """

    in_rows: torch.Tensor
    out_rows: torch.Tensor
    starts: list[int]
    num_out: int
    identity_offset: int | None = None  # submanifold maps: the centre offset maps every row to itself
    out_batch: torch.Tensor | None = None
    out_grid: torch.Tensor | None = None
    in_batch: torch.Tensor | None = None
    in_grid: torch.Tensor | None = None
    num_in: int = 0

    def transposed(self) -> KernelMap:
        return KernelMap(
            self.out_rows, self.in_rows, self.starts, self.num_in, None,
            self.in_batch, self.in_grid, self.out_batch, self.out_grid, self.num_out,
        )  # fmt: skip


def _kernel_offsets(kernel_size: tuple[int, int, int], device) -> torch.Tensor:
    """``[K, 3]`` offsets ``(kd, kh, kw)`` in the row-major order of the weight's kernel axes."""
    return torch.tensor(list(product(*(range(k) for k in kernel_size))), dtype=torch.long, device=device).reshape(-1, 3)


def _pairs_by_offset(hit: torch.Tensor, found: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """The pairs of a kernel map from ``hit [K, N]`` (pair (offset k, row n) exists) and ``found [K, N]`` (its other
    row): ``(found rows, n rows, starts)`` grouped by k, then by n (the order of a loop over k of ``[hit[k]]``).

    One host read, the pair counts per offset (the map's sizes); the pairs are scattered to their cumulative
    positions, not gathered by ``nonzero`` (a second sync)."""
    counts = hit.sum(dim=1)
    sizes = counts.tolist()
    starts = [0]
    for c in sizes:
        starts.append(starts[-1] + c)
    flat = hit.flatten()
    slot = torch.where(flat, torch.cumsum(flat, 0) - 1, starts[-1])  # pairs to their slot, the rest to a spare one
    rows = torch.arange(hit.shape[1], device=hit.device).expand_as(hit).flatten()
    out = torch.empty(starts[-1] + 1, dtype=torch.long, device=hit.device)
    found_rows = out.clone().scatter_(0, slot, found.flatten())[:-1]
    n_rows = out.scatter_(0, slot, rows)[:-1]
    return found_rows, n_rows, starts


def build_submanifold_map(batch_index: torch.Tensor, grid_coords: torch.Tensor, kernel_size) -> KernelMap:
    """Kernel map of a submanifold conv (odd kernel): output rows = input rows. All offsets are looked up at once
    (``[K, N]``): one host sync per map."""
    if any(k % 2 == 0 for k in kernel_size):
        raise ValueError(f"submanifold convolution needs an odd kernel size, got {tuple(kernel_size)}")
    n = grid_coords.shape[0]
    rows = torch.arange(n, device=grid_coords.device)
    if all(k == 1 for k in kernel_size):  # a 1x1x1 conv is a per-voxel linear map
        return KernelMap(rows, rows, [0, n], n, 0, batch_index, grid_coords, batch_index, grid_coords, n)
    table = VoxelHash(batch_index, grid_coords)
    centre = [k // 2 for k in kernel_size]
    offsets = _kernel_offsets(kernel_size, grid_coords.device) - torch.tensor(centre, device=grid_coords.device)
    identity = math.prod(kernel_size) // 2  # the centre offset, (c, c, c) in row-major order
    num_offsets = offsets.shape[0]
    query = (grid_coords[None] + offsets[:, None]).reshape(-1, 3)  # [K * N, 3]
    found = table.lookup(batch_index.repeat(num_offsets), query).view(num_offsets, n)
    found[identity] = rows  # every row is its own centre neighbour (a duplicate cell's lookup finds its first copy)
    in_rows, out_rows, starts = _pairs_by_offset(found >= 0, found)
    return KernelMap(in_rows, out_rows, starts, n, identity, batch_index, grid_coords, batch_index, grid_coords, n)


def build_strided_map(batch_index, grid_coords, kernel_size, stride, padding) -> KernelMap:
    """Kernel map of a strided (down-sampling) conv: outputs are the cells ``o`` with ``o * s - p + k = i``. Two host
    syncs: the pair counts and the number of outputs (unique)."""
    device = grid_coords.device
    s = torch.tensor(stride, device=device)
    offsets = _kernel_offsets(kernel_size, device)
    num = grid_coords[None] + torch.tensor(padding, device=device) - offsets[:, None]  # [K, N, 3]
    ok = ((num % s) == 0).all(-1) & (num >= 0).all(-1)  # [K, N]
    out_cells = torch.div(num, s, rounding_mode="floor")
    k_all = torch.arange(offsets.shape[0], device=device)[:, None].expand_as(ok)
    k_idx, in_idx, starts = _pairs_by_offset(ok, k_all)  # sorted by k, then by input row
    cand_batch = batch_index[in_idx]
    cand_grid = out_cells[k_idx, in_idx]
    keys = pack_voxel_keys(cand_batch, cand_grid)
    uniq, out_idx = torch.unique(keys, sorted=True, return_inverse=True)
    first = torch.full((uniq.numel(),), keys.numel(), dtype=torch.long, device=device)
    first.scatter_reduce_(0, out_idx, torch.arange(keys.numel(), device=device), reduce="amin")
    return KernelMap(
        in_idx, out_idx, starts, uniq.numel(), None,
        cand_batch[first], cand_grid[first], batch_index, grid_coords, grid_coords.shape[0],
    )  # fmt: skip


def gather_gemm_scatter(features: torch.Tensor, weight: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
    """The torch twin of a sparse conv: ``out[o] = sum over pairs (i, o, k) of features[i] @ W_k``.

    Args:
        features: ``[N_in, C_in]``.
        weight: ``[C_out, kD, kH, kW, C_in]`` (spconv layout).
        kmap: the kernel map (its offsets enumerate the kernel in row-major ``(kD, kH, kW)`` order).
    Returns:
        ``[kmap.num_out, C_out]``.
    """
    w = weight.flatten(1, 3).permute(1, 2, 0)  # [K, C_in, C_out]
    out = None
    if kmap.identity_offset is not None:
        out = features @ w[kmap.identity_offset]
    for k in range(w.shape[0]):
        lo, hi = kmap.starts[k], kmap.starts[k + 1]
        if hi == lo or k == kmap.identity_offset:
            continue
        contrib = features.index_select(0, kmap.in_rows[lo:hi]) @ w[k]
        if out is None:
            out = contrib.new_zeros(kmap.num_out, w.shape[2])
        out.index_add_(0, kmap.out_rows[lo:hi], contrib)
    if out is None:
        out = features.new_zeros(kmap.num_out, w.shape[2]) + 0.0 * w.sum()
    return out


@dataclass
class SparseVoxels:
    """A batch of sparse voxel grids: the tensor that the sparse convs consume and produce, and the object a scene
    backbone hands to its ``fusion_hook``.

    Attributes:
        features: ``[T, C]`` one feature row per voxel.
        grid_coords: ``[T, 3]`` int64 grid cell of each voxel, in ``[0, 2^16 - 1)`` (``floor((p - scene_min) /
            grid_size)`` at full resolution).
        batch_index: ``[T]`` int64 scene of each voxel.
        coords: ``[T, 3]`` float continuous position (metres) of each voxel, or None (coarse levels).
        batch_size: number of scenes B.
        backend: the resolved sparse-conv backend, ``"torch"`` or ``"spconv"``.
        kernel_maps: cache of kernel maps by ``indice_key`` (shared by every tensor on the same voxels, and with the
            strided/inverse pairs of a U-Net). Reset it (``append``/``index_select`` do) when the voxel set changes.
        spatial_shape: per-axis grid extent for spconv (``max(grid) + 96``); None lets the first conv compute it.
        grid_max: the per-axis largest cell ``grid_coords.max(0)`` when the host knows it (read with other values
            by whoever built the voxels): spconv's ``spatial_shape`` then comes from it without a host sync.
    """

    features: torch.Tensor
    grid_coords: torch.Tensor
    batch_index: torch.Tensor
    coords: torch.Tensor | None = None
    batch_size: int = 1
    backend: str = "torch"
    kernel_maps: dict = field(default_factory=dict)
    spatial_shape: list[int] | None = None
    grid_max: list[int] | None = None

    @property
    def num_voxels(self) -> int:
        return self.features.shape[0]

    def replace_features(self, features: torch.Tensor) -> SparseVoxels:
        """Same voxels (and kernel-map cache), new features ``[T, C']``."""
        if features.shape[0] != self.num_voxels:
            raise ValueError(f"`features` must have {self.num_voxels} rows, got {tuple(features.shape)}")
        return replace(self, features=features)

    def append(
        self,
        features: torch.Tensor,
        grid_coords: torch.Tensor,
        batch_index: torch.Tensor,
        coords: torch.Tensor | None = None,
    ) -> SparseVoxels:
        """New voxels appended after the existing rows (duplicates of existing cells allowed). Returns a tensor with a
        fresh kernel-map cache, so every conv afterwards rebuilds its map on the union.

        Args:
            features: ``[M, C]`` with the same C as ``self.features``.
            grid_coords: ``[M, 3]`` int64, on the same grid (same scene minimum and grid size) as the existing voxels.
            batch_index: ``[M]`` int64 in ``[0, batch_size)``.
            coords: ``[M, 3]`` continuous positions (required when ``self.coords`` is set).
        """
        m = features.shape[0]
        if features.ndim != 2 or features.shape[1] != self.features.shape[1]:
            raise ValueError(f"`features` must have shape [M, {self.features.shape[1]}], got {tuple(features.shape)}")
        if grid_coords.shape != (m, 3) or grid_coords.dtype != torch.long:
            raise ValueError(f"`grid_coords` must be an int64 tensor of shape [{m}, 3], got {tuple(grid_coords.shape)}")
        if batch_index.shape != (m,):
            raise ValueError(f"`batch_index` must have shape [{m}], got {tuple(batch_index.shape)}")
        grid_max = self.grid_max
        if m:  # both ranges, and the new cells' per-axis maximum (for the union's grid_max), in one host read
            grid_ok = (grid_coords.min() >= 0) & (grid_coords.max() < MAX_GRID_COORD)
            batch_ok = (batch_index.min() >= 0) & (batch_index.max() < self.batch_size)
            flags = torch.cat([torch.stack([grid_ok, batch_ok]).long(), grid_coords.amax(0)])
            grid_ok, batch_ok, *new_max = flags.tolist()
            if not grid_ok:
                raise ValueError(f"`grid_coords` must lie in [0, {MAX_GRID_COORD}) (cells of the scene's grid)")
            if not batch_ok:
                raise ValueError(f"`batch_index` must lie in [0, {self.batch_size})")
            grid_max = None if grid_max is None else [max(a, b) for a, b in zip(grid_max, new_max)]
        new_coords = None
        if self.coords is not None:
            if coords is None or coords.shape != (m, 3):
                raise ValueError(f"`coords` must have shape [{m}, 3] (continuous xyz of the appended voxels)")
            new_coords = torch.cat([self.coords, coords.to(self.coords.dtype)])
        return SparseVoxels(
            torch.cat([self.features, features.to(self.features.dtype)]),
            torch.cat([self.grid_coords, grid_coords]),
            torch.cat([self.batch_index, batch_index.long()]),
            new_coords, self.batch_size, self.backend, {}, None, grid_max,
        )  # fmt: skip

    def index_select(self, rows: torch.Tensor, permutation: bool = False) -> SparseVoxels:
        """The voxels ``rows`` (a permutation or a subset), with a fresh kernel-map cache. ``permutation=True`` says
        that ``rows`` holds every row once (``grid_max`` is then kept)."""
        return SparseVoxels(
            self.features[rows], self.grid_coords[rows], self.batch_index[rows],
            None if self.coords is None else self.coords[rows], self.batch_size, self.backend, {}, None,
            self.grid_max if permutation else None,
        )  # fmt: skip

    # -- spconv interop ------------------------------------------------------------------------------------------
    def to_spconv(self):
        import spconv.pytorch as spconv

        indices = torch.cat([self.batch_index[:, None], self.grid_coords], dim=1).int()
        if self.spatial_shape is None and self.grid_max is not None:
            self.spatial_shape = [m + 96 for m in self.grid_max]
        elif self.spatial_shape is None:  # a host sync
            self.spatial_shape = (self.grid_coords.max(0).values + 96).tolist() if self.num_voxels else [96, 96, 96]
        return spconv.SparseConvTensor(
            self.features, indices, self.spatial_shape, self.batch_size, indice_dict=self.kernel_maps
        )

    def from_spconv(self, tensor) -> SparseVoxels:
        # spconv may hand its output a copy of the indice dict: keep every map it built in our shared cache
        if tensor.indice_dict is not self.kernel_maps:
            self.kernel_maps.update(tensor.indice_dict)
        same = tensor.indices.shape[0] == self.num_voxels and tensor.spatial_shape == self.spatial_shape
        if same:  # submanifold conv: same voxels, same rows
            return replace(self, features=tensor.features)
        indices = tensor.indices.long()
        return SparseVoxels(
            tensor.features, indices[:, 1:].contiguous(), indices[:, 0].contiguous(), None, self.batch_size,
            self.backend, self.kernel_maps, list(tensor.spatial_shape),
        )  # fmt: skip


def _triple(v) -> tuple[int, int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v, v)


class _SparseConvBase(nn.Module):
    """Parameters in spconv's layout: ``weight [out, kD, kH, kW, in]`` and optional ``bias [out]``."""

    _spconv_cls_name = ""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True, indice_key=None):
        super().__init__()
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.stride, self.padding = _triple(kernel_size), _triple(stride), _triple(padding)
        self.indice_key = indice_key
        self.weight = nn.Parameter(torch.empty(out_channels, *self.kernel_size, in_channels))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # spconv's default (that of torch's ConvNd): kaiming-uniform with a = sqrt(5) over fan_in = in * prod(kernel)
        fan_in = self.in_channels * math.prod(self.kernel_size)
        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"bias={self.bias is not None}, indice_key={self.indice_key!r}"
        )

    def forward(self, voxels: SparseVoxels) -> SparseVoxels:
        if voxels.features.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects features [T, {self.in_channels}], got {tuple(voxels.features.shape)}"
            )
        if voxels.backend == "spconv":
            return self._forward_spconv(voxels)
        return self._forward_torch(voxels)

    def _cached_map(self, voxels: SparseVoxels, build) -> KernelMap:
        if self.indice_key is None:
            return build()
        key = f"torch:{self.indice_key}"
        if key not in voxels.kernel_maps:
            voxels.kernel_maps[key] = build()
        return voxels.kernel_maps[key]

    def _spconv_module(self):
        # The spconv module is built lazily and kept outside the registered submodules (so the state dict holds only
        # our `weight`/`bias`); it is handed our Parameters on every call, so both backends train the same tensors.
        module = self.__dict__.get("_spconv_impl")
        if module is None:
            import spconv.pytorch as spconv

            cls = getattr(spconv, self._spconv_cls_name)
            if self._spconv_cls_name == "SparseInverseConv3d":
                module = cls(self.in_channels, self.out_channels, self.kernel_size, self.indice_key, bias=False)
            else:
                module = cls(
                    self.in_channels, self.out_channels, self.kernel_size, stride=self.stride, padding=self.padding,
                    bias=False, indice_key=self.indice_key,
                )  # fmt: skip
            del module.weight
            self.__dict__["_spconv_impl"] = module
        module.weight = self.weight
        module.bias = self.bias
        return module

    def _forward_spconv(self, voxels: SparseVoxels) -> SparseVoxels:
        module = self._spconv_module()
        out = module(voxels.to_spconv())
        return voxels.from_spconv(out)

    def _add_bias(self, out: torch.Tensor) -> torch.Tensor:
        return out if self.bias is None else out + self.bias.to(out.dtype)


class SubMConv3d(_SparseConvBase):
    """Submanifold sparse conv (Graham et al. 2018): outputs only at the input voxels. Same arguments as spconv's."""

    _spconv_cls_name = "SubMConv3d"

    def _forward_torch(self, voxels):
        if self.kernel_size == (1, 1, 1):
            # spconv computes a 1x1x1 conv as `features @ weight.view(in, out)`: it reads the [out, 1, 1, 1, in]
            # storage as an [in, out] matrix (spconv/pytorch/conv.py, the `conv1x1` branch, FILTER_HWIO False). We do
            # the same so that spconv-trained checkpoints (Pointcept's SpUNet has 1x1 convs) give the same outputs.
            out = voxels.features @ self.weight.reshape(self.in_channels, self.out_channels)
            return voxels.replace_features(self._add_bias(out))
        kmap = self._cached_map(
            voxels, lambda: build_submanifold_map(voxels.batch_index, voxels.grid_coords, self.kernel_size)
        )
        return voxels.replace_features(self._add_bias(gather_gemm_scatter(voxels.features, self.weight, kmap)))


class SparseConv3d(_SparseConvBase):
    """Strided (down-sampling) sparse conv. Register it with an ``indice_key`` for a matching inverse conv."""

    _spconv_cls_name = "SparseConv3d"

    def _forward_torch(self, voxels):
        kmap = self._cached_map(
            voxels,
            lambda: build_strided_map(
                voxels.batch_index, voxels.grid_coords, self.kernel_size, self.stride, self.padding
            ),
        )
        out = self._add_bias(gather_gemm_scatter(voxels.features, self.weight, kmap))
        return SparseVoxels(
            out, kmap.out_grid, kmap.out_batch, None, voxels.batch_size, voxels.backend, voxels.kernel_maps
        )


class SparseInverseConv3d(_SparseConvBase):
    """Inverse of the ``SparseConv3d`` registered under the same ``indice_key``: back to that conv's input voxels."""

    _spconv_cls_name = "SparseInverseConv3d"

    def __init__(self, in_channels, out_channels, kernel_size, indice_key: str, bias: bool = True):
        if indice_key is None:
            raise ValueError("SparseInverseConv3d needs the `indice_key` of the strided conv it inverts")
        super().__init__(in_channels, out_channels, kernel_size, bias=bias, indice_key=indice_key)

    def _forward_torch(self, voxels):
        key = f"torch:{self.indice_key}"
        if key not in voxels.kernel_maps:
            raise ValueError(f"no strided conv with indice_key {self.indice_key!r} ran on these voxels before")
        kmap = voxels.kernel_maps[key]
        if kmap.num_out != voxels.num_voxels:
            raise ValueError(f"indice_key {self.indice_key!r} maps {kmap.num_out} voxels, got {voxels.num_voxels}")
        out = self._add_bias(gather_gemm_scatter(voxels.features, self.weight, kmap.transposed()))
        return SparseVoxels(
            out, kmap.in_grid, kmap.in_batch, None, voxels.batch_size, voxels.backend, voxels.kernel_maps
        )


__all__ = [
    "SPARSE_CONV_BACKENDS",
    "KernelMap",
    "SparseConv3d",
    "SparseInverseConv3d",
    "SparseVoxels",
    "SubMConv3d",
    "VoxelHash",
    "build_strided_map",
    "build_submanifold_map",
    "gather_gemm_scatter",
    "pack_voxel_keys",
    "resolve_sparse_conv_backend",
]
