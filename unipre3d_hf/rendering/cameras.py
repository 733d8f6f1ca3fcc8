"""Pinhole cameras, batched per sample and view, in OpenCV axes (x right, y down, z forward).

A :class:`Cameras` holds, for ``B`` samples with ``V`` views each, the world-to-camera transform and the intrinsics
``(fx, fy, cx, cy)`` in pixels. Focal lengths are kept per axis: ScanNet frames are 4:3, and deriving both axes from a
single field of view (as the paper's code does) squashes the image vertically.

Pixel convention (gsplat's): pixel ``(row i, column j)`` covers ``[j, j+1) x [i, i+1)`` and its centre is at
``(j + 0.5, i + 0.5)``; a camera-space point ``(X, Y, Z)`` lands at ``u = fx X / Z + cx``, ``v = fy Y / Z + cy``.
With ``cx = W / 2`` the optical axis hits the centre of the image, which is what the 3DGS rasterizer assumes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import InitVar, dataclass
from functools import partial

import torch
from torch import Tensor

#: tolerance of the rigidity checks: ``max |R^T R - I|`` (unitless, so relative) and ``max |last row - [0, 0, 0, 1]|``;
#: for low-precision dtypes it grows to 8 machine epsilons of the dtype (bf16 rounds a rotation entry by up to 4e-3)
RIGID_TOLERANCE = 1e-4


def _check_matrix_batch(name: str, value: Tensor, trailing: tuple[int, ...]) -> None:
    """Type and shape of a ``[B, V, *trailing]`` float tensor (host only; the values: :func:`_check_finite`)."""
    if not isinstance(value, Tensor):
        raise ValueError(f"`{name}` must be a torch.Tensor of shape [B, V, {', '.join(map(str, trailing))}]")
    if value.dim() != 2 + len(trailing) or tuple(value.shape[2:]) != trailing:
        raise ValueError(f"`{name}` must have shape [B, V, {', '.join(map(str, trailing))}], got {tuple(value.shape)}")
    if not value.is_floating_point():
        raise ValueError(f"`{name}` must be a floating-point tensor, got {value.dtype}")


def _check_finite(name: str, value: Tensor) -> None:
    if not torch.isfinite(value).all():
        index = tuple(torch.nonzero(~torch.isfinite(value))[0].tolist())
        raise ValueError(f"`{name}` contains NaN or Inf values (first at {list(index)}: {value[index].item()})")


def run_value_checks(checks: Sequence[tuple[Tensor, Callable[[], None]]]) -> None:
    """Value checks of device tensors for one host sync: each check is ``(ok, check)``, a 0-dim bool tensor (True:
    the values are fine) and the function that raises the ``ValueError`` naming the field. All flags are read with
    one ``.tolist()``; only a failing check runs its function (which reads what its message needs: the error path
    may sync). Each ``ok`` must be the very predicate its function tests, so that the function raises."""
    if not checks:
        return
    device = checks[0][0].device
    flags = torch.stack([ok.to(device) for ok, _ in checks]).tolist()
    for ok, (_, check) in zip(flags, checks):
        if not ok:
            check()


def finite_ok(value: Tensor) -> Tensor:
    """0-dim bool: every value of ``value`` is finite (the flag of :func:`_check_finite`)."""
    return torch.isfinite(value).all()


def _pose_value_checks(name: str, matrix: Tensor) -> tuple:
    """The value checks of a pose batch for :func:`run_value_checks`: finite (the first bad entry named), then a
    rigid transform (:func:`check_rigid_transforms`), both under ``name``."""
    return (
        (finite_ok(matrix), partial(_check_finite, name, matrix)),
        (rigid_transforms_ok(name, matrix), partial(check_rigid_transforms, name, matrix)),
    )


def _as_rigid_batch(name: str, matrix, atol: float | None) -> tuple[Tensor, Tensor, float]:
    """``(matrix as a tensor, its [M, 4, 4] float64 copy, the tolerance)``; raises unless the shape is [..., 4, 4]."""
    m = torch.as_tensor(matrix)
    if m.dim() < 2 or tuple(m.shape[-2:]) != (4, 4):
        raise ValueError(f"`{name}` must have shape [..., 4, 4], got {tuple(m.shape)}")
    if atol is None:
        atol = max(RIGID_TOLERANCE, 8 * torch.finfo(m.dtype).eps) if m.is_floating_point() else RIGID_TOLERANCE
    return m, m.detach().reshape(-1, 4, 4).to(torch.float64), atol


def _rigid_defects(flat: Tensor, atol: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Of ``[M, 4, 4]`` float64 matrices: ``finite [M]``, ``bottom_err [M]``, ``ortho_err [M]``, ``det [M]`` and
    ``bad [M]`` (any defect), all on the device."""
    finite = torch.isfinite(flat).flatten(1).all(1)
    safe = torch.where(finite[:, None, None], flat, torch.eye(4, dtype=flat.dtype, device=flat.device))
    bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=flat.dtype, device=flat.device)
    bottom_err = (safe[:, 3] - bottom).abs().amax(-1)
    rot = safe[:, :3, :3]
    eye = torch.eye(3, dtype=flat.dtype, device=flat.device)
    ortho_err = (rot.transpose(-1, -2) @ rot - eye).abs().amax((-1, -2))
    det = (rot[:, 0] * torch.cross(rot[:, 1], rot[:, 2], dim=-1)).sum(-1)
    bad = ~finite | (bottom_err > atol) | (ortho_err > atol) | (det <= 0)
    return finite, bottom_err, ortho_err, det, bad


def rigid_transforms_ok(name: str, matrix: Tensor, atol: float | None = None) -> Tensor:
    """0-dim bool on the device: :func:`check_rigid_transforms` would pass (no host sync; a bad shape raises now)."""
    _, flat, atol = _as_rigid_batch(name, matrix, atol)
    return ~_rigid_defects(flat, atol)[-1].any()


def check_rigid_transforms(name: str, matrix, atol: float | None = None) -> None:
    """Raise ``ValueError`` unless every ``[..., 4, 4]`` matrix of ``matrix`` (tensor or array) is a rigid transform:
    finite, last row ``[0, 0, 0, 1]``, rotation block orthonormal (``R^T R = I``) with determinant +1, each within
    ``atol`` (default :data:`RIGID_TOLERANCE`, or 8 epsilons of a low-precision dtype). The message names ``name``,
    the index of the first bad matrix, what is wrong and the matrix itself.
    """
    m, flat, atol = _as_rigid_batch(name, matrix, atol)
    if flat.shape[0] == 0:
        return
    finite, bottom_err, ortho_err, det, bad = _rigid_defects(flat, atol)
    if not bad.any():
        return
    i = int(torch.nonzero(bad)[0])
    index = list(torch.unravel_index(torch.tensor(i), tuple(m.shape[:-2]))) if m.dim() > 2 else []
    index = [int(k) for k in index]
    if not finite[i]:
        why = "it contains NaN or Inf"
    elif bottom_err[i] > atol:
        why = f"its last row must be [0, 0, 0, 1], got {[round(float(x), 6) for x in flat[i, 3]]}"
    elif ortho_err[i] > atol:
        why = f"its rotation is not orthonormal: max |R^T R - I| = {float(ortho_err[i]):.3g} > {atol:g}"
    else:
        why = f"its rotation has determinant {float(det[i]):.4g}, not +1 (a reflection)"
    values = [[round(float(x), 6) for x in row] for row in flat[i]]
    raise ValueError(f"`{name}`{index} is not a rigid transform: {why}; the matrix is {values}")


def intrinsics_ok(intrinsics: Tensor) -> Tensor:
    """0-dim bool: ``(fx, fy, cx, cy)`` ``[..., 4]`` all finite with fx, fy > 0 (the flag of
    :func:`check_intrinsics`)."""
    return torch.isfinite(intrinsics).all() & (intrinsics[..., :2] > 0).all()


def check_intrinsics(name: str, intrinsics: Tensor) -> None:
    """Finite values and fx, fy > 0; the message names the first bad view and its values."""
    _check_finite(name, intrinsics)
    bad = ~(intrinsics[..., :2] > 0).all(-1)
    if bad.any():
        index = tuple(torch.nonzero(bad)[0].tolist())
        values = [round(float(x), 6) for x in intrinsics[index]]
        raise ValueError(
            f"`{name}` focal lengths (fx, fy) must be positive, got (fx, fy, cx, cy) = {values} at {list(index)}"
        )


def _rigid_inverse(matrix: Tensor) -> Tensor:
    """Inverse of rigid 4x4 transforms ``[..., 4, 4]`` (rotation + translation), computed as ``[R^T, -R^T t]``."""
    rot = matrix[..., :3, :3]
    trans = matrix[..., :3, 3:]
    rot_t = rot.transpose(-1, -2)
    top = torch.cat([rot_t, -rot_t @ trans], dim=-1)
    bottom = torch.zeros_like(matrix[..., 3:, :])
    bottom[..., 3] = 1
    return torch.cat([top, bottom], dim=-2)


def _as_intrinsics_vector(intrinsics: Tensor) -> Tensor:
    """Accept ``[B, V, 4]`` (fx, fy, cx, cy) or ``[B, V, 3, 3]`` (K matrices); return ``[B, V, 4]``."""
    if isinstance(intrinsics, Tensor) and intrinsics.dim() == 4 and tuple(intrinsics.shape[-2:]) == (3, 3):
        return torch.stack(
            [intrinsics[..., 0, 0], intrinsics[..., 1, 1], intrinsics[..., 0, 2], intrinsics[..., 1, 2]], dim=-1
        )
    return intrinsics


@dataclass
class Cameras:
    """A batch of pinhole cameras, ``V`` views for each of ``B`` samples.

    Args:
        world_to_camera (`Tensor` of shape `[B, V, 4, 4]`): rigid transforms from world to camera coordinates, OpenCV
            axes (x right, y down, z forward), column-vector convention (``x_cam = M @ x_world``).
        intrinsics (`Tensor` of shape `[B, V, 4]`): ``(fx, fy, cx, cy)`` in pixels.
        width (`int`): image width in pixels (shared by every view of the batch).
        height (`int`): image height in pixels.
        near (`float`, defaults to 0.01): Gaussians whose camera-space depth is below ``near`` are culled.
        far (`float`, defaults to 1e10): Gaussians whose depth is above ``far`` are culled.

    Use the constructors :meth:`from_camera_to_world`, :meth:`from_fov` and :meth:`from_3dgs` rather than
    building one from raw fields when your data is in another convention.
    """

    world_to_camera: Tensor
    intrinsics: Tensor
    width: int
    height: int
    near: float = 0.01
    far: float = 1e10
    # set by the constructors: `_pose_checks`, the value checks of the poses that `world_to_camera` is the inverse of
    # (under the caller's names; they replace world_to_camera's own finite and rigid checks, the inverse of a finite
    # rigid transform being one); `_values_checked`, the caller has checked every value. All value checks of one
    # construction are read in one host sync (`run_value_checks`).
    _pose_checks: InitVar[tuple | None] = None
    _values_checked: InitVar[bool] = False

    def __post_init__(self, _pose_checks: tuple | None = None, _values_checked: bool = False) -> None:
        self.intrinsics = _as_intrinsics_vector(self.intrinsics)
        _check_matrix_batch("world_to_camera", self.world_to_camera, (4, 4))
        _check_matrix_batch("intrinsics", self.intrinsics, (4,))
        if tuple(self.intrinsics.shape[:2]) != tuple(self.world_to_camera.shape[:2]):
            raise ValueError(
                f"`intrinsics` has batch shape {tuple(self.intrinsics.shape[:2])} but `world_to_camera` has "
                f"{tuple(self.world_to_camera.shape[:2])}; both must be [B, V]"
            )
        if self.intrinsics.device != self.world_to_camera.device:
            raise ValueError(
                f"`intrinsics` is on {self.intrinsics.device} but `world_to_camera` is on {self.world_to_camera.device}"
            )
        if not _values_checked:
            pose_checks = _pose_checks
            if pose_checks is None:
                pose_checks = _pose_value_checks("world_to_camera", self.world_to_camera)
            intrinsics_check = (
                intrinsics_ok(self.intrinsics),
                partial(check_intrinsics, "intrinsics", self.intrinsics),
            )
            run_value_checks([*pose_checks, intrinsics_check])
        for name in ("width", "height"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"`{name}` must be a positive int, got {value!r}")
        if not (0 < self.near < self.far):
            raise ValueError(f"need 0 < near < far, got near={self.near}, far={self.far}")

    # ------------------------------------------------------------------------------------------------ constructors
    @classmethod
    def from_camera_to_world(
        cls,
        camera_to_world: Tensor,
        intrinsics: Tensor,
        width: int,
        height: int,
        near: float = 0.01,
        far: float = 1e10,
        check_values: bool = True,
    ) -> Cameras:
        """Build from camera-to-world poses ``[B, V, 4, 4]`` (OpenCV axes, e.g. ScanNet's ``pose/*.txt``).

        ``intrinsics`` is ``[B, V, 4]`` (fx, fy, cx, cy) or ``[B, V, 3, 3]`` K matrices. The poses must be finite
        rigid transforms (the inverse below assumes it) and the focal lengths positive: checked in one host sync.
        ``check_values=False`` is for callers that have checked these values themselves (under their own names).
        """
        _check_matrix_batch("camera_to_world", camera_to_world, (4, 4))
        # the flags are computed only when they are read (without check_values the caller has read its own)
        pose_checks = _pose_value_checks("camera_to_world", camera_to_world) if check_values else ()
        return cls(
            _rigid_inverse(camera_to_world), intrinsics, width, height, near, far,
            _pose_checks=pose_checks, _values_checked=not check_values,
        )  # fmt: skip

    @classmethod
    def from_fov(
        cls,
        camera_to_world: Tensor,
        fov_x: float,
        width: int,
        height: int,
        fov_y: float | None = None,
        near: float = 0.01,
        far: float = 1e10,
    ) -> Cameras:
        """Build from fields of view in **radians**, with the principal point at the image centre.

        This is the paper's convention (``focal = (W / 2) / tan(fov_x / 2)``). Given only ``fov_x``, square pixels are
        assumed: ``fy = fx``, which gives the correct vertical field of view for any aspect ratio. The paper's
        ShapeNet views are ``from_fov(c2w, math.radians(49.13434264120263), 128, 128)``, i.e. fx = fy = 140 px.
        """
        _check_matrix_batch("camera_to_world", camera_to_world, (4, 4))
        if not (0 < fov_x < math.pi) or (fov_y is not None and not (0 < fov_y < math.pi)):
            raise ValueError(f"fields of view must be in (0, pi) radians, got fov_x={fov_x}, fov_y={fov_y}")
        fx = 0.5 * width / math.tan(0.5 * fov_x)
        fy = fx if fov_y is None else 0.5 * height / math.tan(0.5 * fov_y)
        values = torch.tensor([fx, fy, 0.5 * width, 0.5 * height], dtype=camera_to_world.dtype)
        intrinsics = values.to(camera_to_world.device).expand(*camera_to_world.shape[:2], 4).clone()
        return cls.from_camera_to_world(camera_to_world, intrinsics, width, height, near, far)

    @classmethod
    def from_3dgs(
        cls,
        world_view_transform: Tensor,
        tanfovx: float | Tensor,
        tanfovy: float | Tensor,
        width: int,
        height: int,
        near: float = 0.01,
        far: float = 1e10,
    ) -> Cameras:
        """Build from the 3DGS / paper-code convention.

        Args:
            world_view_transform (`Tensor` of shape `[B, V, 4, 4]`): the **transposed** world-to-camera matrix
                (row-vector convention, ``x_cam^T = x_world^T @ M``), as stored by 3DGS and the UniPre3D code.
            tanfovx, tanfovy: ``tan(fov / 2)`` per axis (scalars or ``[B, V]`` tensors). The principal point is the
                image centre, as 3DGS assumes.
        """
        _check_matrix_batch("world_view_transform", world_view_transform, (4, 4))
        name, w2c = "world_view_transform (transposed)", world_view_transform.transpose(-1, -2)
        pose_checks = (
            (finite_ok(world_view_transform), partial(_check_finite, "world_view_transform", world_view_transform)),
            (rigid_transforms_ok(name, w2c), partial(check_rigid_transforms, name, w2c)),
        )
        ref = world_view_transform
        tx = torch.as_tensor(tanfovx, dtype=ref.dtype, device=ref.device).expand(ref.shape[:2])
        ty = torch.as_tensor(tanfovy, dtype=ref.dtype, device=ref.device).expand(ref.shape[:2])
        intrinsics = torch.stack(
            [0.5 * width / tx, 0.5 * height / ty, torch.full_like(tx, 0.5 * width), torch.full_like(ty, 0.5 * height)],
            dim=-1,
        )
        return cls(
            world_view_transform.transpose(-1, -2).contiguous(), intrinsics, width, height, near, far,
            _pose_checks=pose_checks,
        )  # fmt: skip

    # ---------------------------------------------------------------------------------------------------- views
    @property
    def batch_size(self) -> int:
        return self.world_to_camera.shape[0]

    @property
    def num_views(self) -> int:
        return self.world_to_camera.shape[1]

    @property
    def device(self) -> torch.device:
        return self.world_to_camera.device

    @property
    def dtype(self) -> torch.dtype:
        return self.world_to_camera.dtype

    @property
    def camera_to_world(self) -> Tensor:
        """``[B, V, 4, 4]`` camera-to-world transforms."""
        return _rigid_inverse(self.world_to_camera)

    @property
    def camera_centers(self) -> Tensor:
        """``[B, V, 3]`` camera positions in world coordinates."""
        rot = self.world_to_camera[..., :3, :3]
        trans = self.world_to_camera[..., :3, 3:]
        return -(rot.transpose(-1, -2) @ trans).squeeze(-1)

    @property
    def K(self) -> Tensor:  # noqa: N802 (the usual name of the intrinsics matrix)
        """``[B, V, 3, 3]`` intrinsics matrices."""
        fx, fy, cx, cy = self.intrinsics.unbind(-1)
        zero, one = torch.zeros_like(fx), torch.ones_like(fx)
        rows = [torch.stack([fx, zero, cx], -1), torch.stack([zero, fy, cy], -1), torch.stack([zero, zero, one], -1)]
        return torch.stack(rows, dim=-2)

    @property
    def tan_half_fov(self) -> Tensor:
        """``[B, V, 2]`` ``(tan(fov_x / 2), tan(fov_y / 2)) = (W / 2fx, H / 2fy)``."""
        return torch.stack(
            [0.5 * self.width / self.intrinsics[..., 0], 0.5 * self.height / self.intrinsics[..., 1]], -1
        )

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Cameras:
        return Cameras(
            self.world_to_camera.to(device=device, dtype=dtype),
            self.intrinsics.to(device=device, dtype=dtype),
            self.width,
            self.height,
            self.near,
            self.far,
        )

    def to_3dgs(self) -> dict[str, Tensor]:
        """The matrices the 3DGS rasterizer takes, all in its transposed (row-vector) convention.

        Returns a dict with ``world_view_transform`` ``[B, V, 4, 4]`` (= W2C^T), ``full_proj_transform``
        ``[B, V, 4, 4]`` (= (P @ W2C)^T with the 3DGS projection ``P``, extended with the principal-point offset so
        that off-centre intrinsics place means correctly), ``camera_center`` ``[B, V, 3]`` and ``tan_half_fov``
        ``[B, V, 2]``.
        """
        fx, fy, cx, cy = self.intrinsics.unbind(-1)
        n, f = self.near, self.far
        proj = torch.zeros(*self.intrinsics.shape[:2], 4, 4, dtype=self.dtype, device=self.device)
        # 3DGS getProjectionMatrix (Kerbl et al. 2023, utils/graphics_utils.py) with z_sign = +1, written with
        # intrinsics: ndc_x = (2 fx / W) X / Z + (2 cx / W - 1); the rasterizer maps ndc to pixels as
        # ((ndc + 1) W - 1) / 2, i.e. u = fx X / Z + cx - 0.5 in its integer-centred pixel grid.
        proj[..., 0, 0] = 2 * fx / self.width
        proj[..., 1, 1] = 2 * fy / self.height
        proj[..., 0, 2] = 2 * cx / self.width - 1
        proj[..., 1, 2] = 2 * cy / self.height - 1
        proj[..., 2, 2] = f / (f - n)
        proj[..., 2, 3] = -(f * n) / (f - n)
        proj[..., 3, 2] = 1.0
        world_view = self.world_to_camera.transpose(-1, -2)
        full_proj = (proj @ self.world_to_camera).transpose(-1, -2)
        return {
            "world_view_transform": world_view.contiguous(),
            "full_proj_transform": full_proj.contiguous(),
            "camera_center": self.camera_centers,
            "tan_half_fov": self.tan_half_fov,
        }

    def project(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """Project world points ``[B, N, 3]`` into every view.

        Returns:
            pixels (`Tensor` of shape `[B, V, N, 2]`): continuous ``(u, v)`` pixel coordinates (column, row).
            depths (`Tensor` of shape `[B, V, N]`): camera-space z; points with ``z <= 0`` are behind the camera and
                their pixel coordinates are meaningless.
        """
        if points.dim() != 3 or points.shape[-1] != 3 or points.shape[0] != self.batch_size:
            raise ValueError(f"`points` must have shape [B={self.batch_size}, N, 3], got {tuple(points.shape)}")
        rot = self.world_to_camera[..., :3, :3]
        trans = self.world_to_camera[..., :3, 3]
        cam = torch.einsum("bvij,bnj->bvni", rot, points.to(self.dtype)) + trans[:, :, None, :]
        z = cam[..., 2]
        safe_z = torch.where(z.abs() > 1e-12, z, torch.full_like(z, 1e-12))
        fx, fy, cx, cy = (t[:, :, None] for t in self.intrinsics.unbind(-1))
        uv = torch.stack([fx * cam[..., 0] / safe_z + cx, fy * cam[..., 1] / safe_z + cy], dim=-1)
        return uv, z


def look_at(eye: Tensor, target: Tensor, up: tuple[float, float, float] = (0.0, 0.0, 1.0)) -> Tensor:
    """Camera-to-world matrices ``[..., 4, 4]`` (OpenCV axes) for cameras at ``eye`` ``[..., 3]`` looking at
    ``target`` ``[..., 3]``, with image "up" (-y) towards ``up``. ``eye - target`` must not be parallel to ``up``."""
    up_t = torch.tensor(up, dtype=eye.dtype, device=eye.device).expand_as(eye)
    forward = torch.nn.functional.normalize(target - eye, dim=-1)
    right = torch.nn.functional.normalize(torch.cross(forward, up_t, dim=-1), dim=-1)
    down = torch.cross(forward, right, dim=-1)
    c2w = torch.zeros(*eye.shape[:-1], 4, 4, dtype=eye.dtype, device=eye.device)
    c2w[..., :3, 0], c2w[..., :3, 1], c2w[..., :3, 2], c2w[..., :3, 3] = right, down, forward, eye
    c2w[..., 3, 3] = 1
    return c2w
