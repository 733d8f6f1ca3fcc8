"""A batch of 3D Gaussians in the **padded** form used everywhere in the package.

Object-level samples all have the same number of Gaussians; scene-level samples don't. One form serves both:
``[B, N, ...]`` tensors padded to the largest sample, with a boolean ``mask`` ``[B, N]`` marking the real Gaussians
(``None`` means all are real). Packed per-point outputs (a ``batch_index`` per Gaussian, as a sparse backbone
produces) are converted with :meth:`Gaussians.from_packed`; padding never renders.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import Tensor

#: Quaternions shorter than this can't be normalised into a rotation.
MIN_QUATERNION_NORM = 1e-8


@dataclass
class Gaussians:
    """3D Gaussians, padded per sample.

    Args:
        means (`Tensor` of shape `[B, N, 3]`): centres in world coordinates.
        quats (`Tensor` of shape `[B, N, 4]`): rotations as quaternions ``(w, x, y, z)``, real part first as in 3DGS.
            They need not be unit length: renderers normalise them (each one on its own).
        scales (`Tensor` of shape `[B, N, 3]`): standard deviations along the rotated axes (already activated; >= 0).
        opacities (`Tensor` of shape `[B, N]`): in ``[0, 1]`` (already activated).
        sh (`Tensor` of shape `[B, N, K, 3]`): spherical-harmonics coefficients per colour channel, ``K = (d + 1)^2``
            for degree ``d`` in 0..3; coefficient 0 is the DC term. Colour = ``max(SH(dir) + 0.5, 0)`` as in 3DGS.
        mask (`Tensor` of shape `[B, N]`, *optional*): ``True`` for real Gaussians, ``False`` for padding.
    """

    means: Tensor
    quats: Tensor
    scales: Tensor
    opacities: Tensor
    sh: Tensor
    mask: Tensor | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.means, Tensor) or self.means.dim() != 3 or self.means.shape[-1] != 3:
            shape = tuple(self.means.shape) if isinstance(self.means, Tensor) else type(self.means).__name__
            raise ValueError(f"`means` must have shape [B, N, 3], got {shape}")
        batch, num = self.means.shape[:2]
        expected = {
            "quats": (batch, num, 4),
            "scales": (batch, num, 3),
            "opacities": (batch, num),
        }
        for name, shape in expected.items():
            value = getattr(self, name)
            if not isinstance(value, Tensor) or tuple(value.shape) != shape:
                got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(f"`{name}` must have shape [B={batch}, N={num}, ...] = {list(shape)}, got {got}")
        if (
            not isinstance(self.sh, Tensor)
            or self.sh.dim() != 4
            or tuple(self.sh.shape[:2]) != (batch, num)
            or self.sh.shape[-1] != 3
            or self.sh.shape[2] not in (1, 4, 9, 16)
        ):
            got = tuple(self.sh.shape) if isinstance(self.sh, Tensor) else type(self.sh).__name__
            raise ValueError(
                f"`sh` must have shape [B={batch}, N={num}, K, 3] with K = (degree + 1)^2 in (1, 4, 9, 16), got {got}"
            )
        if self.mask is not None:
            if not isinstance(self.mask, Tensor) or tuple(self.mask.shape) != (batch, num):
                got = tuple(self.mask.shape) if isinstance(self.mask, Tensor) else type(self.mask).__name__
                raise ValueError(f"`mask` must be a bool tensor of shape [B={batch}, N={num}], got {got}")
            if self.mask.dtype != torch.bool:
                raise ValueError(f"`mask` must be a bool tensor, got {self.mask.dtype}")
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and value.device != self.means.device:
                raise ValueError(f"`{f.name}` is on {value.device} but `means` is on {self.means.device}")
            if f.name != "mask" and not value.is_floating_point():
                raise ValueError(f"`{f.name}` must be a floating-point tensor, got {value.dtype}")

    @property
    def batch_size(self) -> int:
        return self.means.shape[0]

    @property
    def num_gaussians(self) -> int:
        """Padded number of Gaussians per sample (``N``)."""
        return self.means.shape[1]

    @property
    def sh_degree(self) -> int:
        return math.isqrt(self.sh.shape[2]) - 1

    @property
    def device(self) -> torch.device:
        return self.means.device

    def valid_mask(self) -> Tensor:
        """``[B, N]`` bool: the mask, or all ``True``."""
        if self.mask is None:
            return torch.ones(self.means.shape[:2], dtype=torch.bool, device=self.means.device)
        return self.mask

    def check_values(self) -> None:
        """Raise ``ValueError`` naming the field when a real (unmasked) Gaussian holds invalid values.

        Checked: finite means, scales, opacities and SH; quaternions long enough to normalise; scales >= 0;
        opacities in [0, 1]. Padding is not checked.
        """
        valid = self.valid_mask()
        for name in ("means", "scales", "opacities", "sh"):
            value = getattr(self, name)
            finite = torch.isfinite(value)
            if finite.dim() > 2:
                finite = finite.flatten(2).all(-1)
            if not finite[valid].all():
                raise ValueError(f"`{name}` contains NaN or Inf values")
        norms = self.quats.norm(dim=-1)
        if not ((norms > MIN_QUATERNION_NORM) & torch.isfinite(norms))[valid].all():
            raise ValueError(
                f"`quats` contains quaternions that can't be normalised (norm <= {MIN_QUATERNION_NORM} or not finite)"
            )
        if (self.scales < 0).any(-1)[valid].any():
            raise ValueError("`scales` must be >= 0 (pass activated scales, e.g. exp(raw))")
        if ((self.opacities < 0) | (self.opacities > 1))[valid].any():
            raise ValueError("`opacities` must lie in [0, 1] (pass activated opacities, e.g. sigmoid(raw))")

    @classmethod
    def from_packed(
        cls,
        means: Tensor,
        quats: Tensor,
        scales: Tensor,
        opacities: Tensor,
        sh: Tensor,
        batch_index: Tensor,
        batch_size: int | None = None,
    ) -> Gaussians:
        """Pad packed Gaussians (``[P, ...]`` with a ``batch_index`` ``[P]``) into ``[B, N_max, ...]`` with a mask.

        The order of the Gaussians of each sample is kept. ``batch_size`` defaults to ``batch_index.max() + 1``;
        pass it to keep empty trailing samples.
        """
        if batch_index.dim() != 1 or batch_index.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"`batch_index` must be an integer tensor of shape [P], got {tuple(batch_index.shape)}")
        num = batch_index.shape[0]
        for name, value, trailing in (
            ("means", means, (3,)),
            ("quats", quats, (4,)),
            ("scales", scales, (3,)),
            ("opacities", opacities, ()),
        ):
            if tuple(value.shape) != (num, *trailing):
                raise ValueError(f"`{name}` must have shape {[num, *trailing]} (packed), got {tuple(value.shape)}")
        if sh.dim() != 3 or sh.shape[0] != num or sh.shape[-1] != 3:
            raise ValueError(f"`sh` must have shape [{num}, K, 3] (packed), got {tuple(sh.shape)}")
        batch_index = batch_index.long()
        if batch_size is None:  # the number of samples (one host read more than with batch_size given)
            batch_size = max(int(batch_index.max()), 0) + 1 if num else 0
        # the padded size N_max is data-dependent: it is read with the range of batch_index, in one host sync. The
        # counts are a scatter into batch_size bins, not bincount (whose CUDA kernel reads the maximum on the host),
        # clamped so that a bad index reaches the checks
        counts = torch.zeros(batch_size, dtype=torch.long, device=batch_index.device)
        max_count = 0
        if num:
            if batch_size:
                counts.index_add_(0, batch_index.clamp(0, batch_size - 1), torch.ones_like(batch_index))
            largest = counts.max() if batch_size else counts.new_zeros(())
            lo, hi, max_count = torch.stack([*torch.aminmax(batch_index), largest]).tolist()
            if lo < 0:
                raise ValueError("`batch_index` must be non-negative")
            if hi >= batch_size:
                raise ValueError(f"`batch_index` holds {hi}, not < batch_size={batch_size}")
        # position of each Gaussian within its sample, keeping the packed order (stable sort by sample)
        order = torch.sort(batch_index, stable=True).indices
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.empty_like(batch_index)
        slot[order] = torch.arange(num, device=batch_index.device) - starts[batch_index[order]]

        def pad(value: Tensor) -> Tensor:
            out = value.new_zeros(batch_size, max_count, *value.shape[1:])
            out[batch_index, slot] = value
            return out

        mask = torch.zeros(batch_size, max_count, dtype=torch.bool, device=means.device)
        mask[batch_index, slot] = True
        quats_padded = pad(quats)
        quats_padded[..., 0] = torch.where(mask, quats_padded[..., 0], torch.ones_like(quats_padded[..., 0]))
        return cls(pad(means), quats_padded, pad(scales), pad(opacities), pad(sh), mask)
