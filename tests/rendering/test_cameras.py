import math

import pytest
import torch

from unipre3d_hf.rendering import Cameras
from unipre3d_hf.rendering.cameras import look_at
from unipre3d_hf.rendering.synthetic import orbit_cameras


def test_from_fov_matches_paper_intrinsics():
    cams = Cameras.from_fov(torch.eye(4).expand(2, 3, 4, 4), math.radians(49.13434264120263), 128, 128)
    torch.testing.assert_close(cams.intrinsics, torch.tensor([140.0, 140.0, 64.0, 64.0]).expand(2, 3, 4))
    assert cams.K.shape == (2, 3, 3, 3)
    torch.testing.assert_close(cams.K[0, 0], torch.tensor([[140.0, 0, 64], [0, 140, 64], [0, 0, 1]]))


def test_from_fov_non_square_keeps_square_pixels_and_separate_fovs():
    # ScanNet at 160x120: fx = fy = 144.47 px. The paper's code used the horizontal FoV for both axes.
    fx = 577.870605 / 4
    fov_x = 2 * math.atan(80 / fx)
    cams = Cameras.from_fov(torch.eye(4)[None, None], fov_x, 160, 120)
    torch.testing.assert_close(cams.intrinsics[0, 0], torch.tensor([fx, fx, 80.0, 60.0]))
    fov_y = 2 * math.atan(60 / fx)
    torch.testing.assert_close(cams.tan_half_fov[0, 0], torch.tensor([math.tan(fov_x / 2), math.tan(fov_y / 2)]))
    assert math.degrees(fov_y) == pytest.approx(45.108, abs=1e-3)  # the true vertical FoV (not 57.95 deg)
    explicit = Cameras.from_fov(torch.eye(4)[None, None], fov_x, 160, 120, fov_y=fov_y)
    torch.testing.assert_close(explicit.intrinsics, cams.intrinsics)


def test_camera_to_world_round_trip_and_centres():
    cams = orbit_cameras(2, 5, radius=2.0, width=64, height=48, fov_x_deg=60, dtype=torch.float64)
    c2w = cams.camera_to_world
    again = Cameras.from_camera_to_world(c2w, cams.intrinsics, 64, 48)
    torch.testing.assert_close(again.world_to_camera, cams.world_to_camera)
    torch.testing.assert_close(c2w @ cams.world_to_camera, torch.eye(4, dtype=torch.float64).expand(2, 5, 4, 4))
    torch.testing.assert_close(cams.camera_centers, c2w[..., :3, 3])
    torch.testing.assert_close(cams.camera_centers.norm(dim=-1), torch.full((2, 5), 2.0, dtype=torch.float64))


def test_3dgs_round_trip_and_projection_matrix():
    cams = orbit_cameras(1, 4, radius=1.75, width=128, height=96, fov_x_deg=50, dtype=torch.float64, near=0.5)
    mats = cams.to_3dgs()
    again = Cameras.from_3dgs(
        mats["world_view_transform"], mats["tan_half_fov"][..., 0], mats["tan_half_fov"][..., 1], 128, 96, near=0.5
    )
    torch.testing.assert_close(again.world_to_camera, cams.world_to_camera)
    torch.testing.assert_close(again.intrinsics, cams.intrinsics)
    # 3DGS maps a world point with the transposed full projection, then ndc -> pixel as ((ndc + 1) * S - 1) / 2
    # in its integer-centred grid, i.e. our continuous pixel coordinate minus 0.5.
    points = torch.randn(1, 20, 3, dtype=torch.float64) * 0.3
    uv, depth = cams.project(points)
    hom = torch.cat([points, torch.ones_like(points[..., :1])], -1)  # [1, N, 4]
    clip = torch.einsum("bni,bvij->bvnj", hom, mats["full_proj_transform"])
    ndc = clip[..., :2] / clip[..., 3:]
    pix = ((ndc + 1) * torch.tensor([128.0, 96.0], dtype=torch.float64) - 1) / 2
    torch.testing.assert_close(pix, uv - 0.5)
    torch.testing.assert_close(clip[..., 3], depth)


def test_3dgs_projection_with_off_centre_principal_point():
    c2w = look_at(torch.tensor([[[0.0, -2.0, 0.3]]], dtype=torch.float64), torch.zeros(1, 1, 3, dtype=torch.float64))
    intr = torch.tensor([[[150.0, 120.0, 70.0, 41.0]]], dtype=torch.float64)
    cams = Cameras.from_camera_to_world(c2w, intr, 128, 96)
    points = torch.randn(1, 10, 3, dtype=torch.float64) * 0.2
    uv, _ = cams.project(points)
    clip = torch.einsum(
        "bni,bvij->bvnj",
        torch.cat([points, torch.ones_like(points[..., :1])], -1),
        cams.to_3dgs()["full_proj_transform"],
    )
    pix = ((clip[..., :2] / clip[..., 3:] + 1) * torch.tensor([128.0, 96.0], dtype=torch.float64) - 1) / 2
    torch.testing.assert_close(pix, uv - 0.5)


def test_project_known_point():
    cams = Cameras.from_camera_to_world(torch.eye(4)[None, None], torch.tensor([[[100.0, 80.0, 32.0, 24.0]]]), 64, 48)
    uv, depth = cams.project(torch.tensor([[[0.2, -0.1, 2.0]]]))
    torch.testing.assert_close(uv, torch.tensor([[[[32 + 100 * 0.1, 24 - 80 * 0.05]]]]))
    torch.testing.assert_close(depth, torch.tensor([[[2.0]]]))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(world_to_camera=torch.eye(4)[None], intrinsics=torch.ones(1, 1, 4)), "world_to_camera"),
        (dict(world_to_camera=torch.eye(4)[None, None], intrinsics=torch.ones(1, 1, 3)), "intrinsics"),
        (dict(world_to_camera=torch.eye(4)[None, None], intrinsics=torch.ones(1, 2, 4)), "intrinsics"),
        (dict(world_to_camera=torch.full((1, 1, 4, 4), float("nan")), intrinsics=torch.ones(1, 1, 4)), "NaN"),
        (dict(world_to_camera=torch.eye(4)[None, None], intrinsics=-torch.ones(1, 1, 4)), "positive"),
        (dict(world_to_camera=torch.ones(1, 1, 4, 4), intrinsics=torch.ones(1, 1, 4)), "last row"),
    ],
)
def test_bad_cameras_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Cameras(width=8, height=8, **kwargs)


def test_bad_size_and_planes_raise():
    with pytest.raises(ValueError, match="width"):
        Cameras(torch.eye(4)[None, None], torch.ones(1, 1, 4), width=0, height=8)
    with pytest.raises(ValueError, match="near < far"):
        Cameras(torch.eye(4)[None, None], torch.ones(1, 1, 4), width=8, height=8, near=2.0, far=1.0)
    with pytest.raises(ValueError, match="points"):
        Cameras(torch.eye(4)[None, None], torch.ones(1, 1, 4), width=8, height=8).project(torch.zeros(2, 5, 3))


def _orbit_c2w(views=3, dtype=torch.float64):
    eye = torch.stack([2.0 * torch.cos(torch.arange(views) * 1.0), 2.0 * torch.sin(torch.arange(views) * 1.0)], -1)
    eye = torch.cat([eye, torch.full((views, 1), 0.4)], -1).to(dtype)
    return look_at(eye, torch.zeros(views, 3, dtype=dtype))[None]


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (
            lambda m: m[0, 1, :3, :3].mul_(1.1),
            r"`camera_to_world`\[0, 1\] is not a rigid transform: its rotation is not orthonormal",
        ),
        (lambda m: m[0, 2, :3, 0].neg_(), r"`camera_to_world`\[0, 2\] .*determinant -1"),
        (
            lambda m: m[0, 0, 3].copy_(torch.tensor([0.0, 0.0, 0.5, 1.0])),
            r"\[0, 0\] .*last row must be \[0, 0, 0, 1\], got \[0.0, 0.0, 0.5, 1.0\]",
        ),
        (lambda m: m[0, 1, :3, :3].zero_(), r"\[0, 1\] .*not orthonormal"),  # singular
        (lambda m: m[0, 1, 0, 3].fill_(float("inf")), "NaN or Inf"),
    ],
)
def test_non_rigid_camera_to_world_is_refused_naming_field_view_and_value(corrupt, message):
    c2w = _orbit_c2w()
    corrupt(c2w)
    intr = torch.tensor([50.0, 50.0, 16.0, 12.0], dtype=torch.float64).expand(1, 3, 4)
    with pytest.raises(ValueError, match=message):
        Cameras.from_camera_to_world(c2w, intr, 32, 24)
    with pytest.raises(ValueError, match="camera_to_world"):
        Cameras.from_fov(c2w, 1.0, 32, 24)


def test_world_to_camera_and_3dgs_matrices_are_checked_too():
    w2c = torch.linalg.inv(_orbit_c2w())
    intr = torch.tensor([50.0, 50.0, 16.0, 12.0], dtype=torch.float64).expand(1, 3, 4)
    Cameras(w2c, intr, 32, 24)  # rigid: accepted
    sheared = w2c.clone()
    sheared[0, 2, 0, 1] += 0.01
    with pytest.raises(ValueError, match=r"`world_to_camera`\[0, 2\] is not a rigid transform.*orthonormal"):
        Cameras(sheared, intr, 32, 24)
    with pytest.raises(ValueError, match=r"`world_view_transform \(transposed\)`\[0, 2\]"):
        Cameras.from_3dgs(sheared.transpose(-1, -2), 0.5, 0.5, 32, 24)
    # a deviation inside the tolerance (float32 rounding of a composed pose) is accepted
    close = w2c.clone()
    close[0, 0, :3, :3] *= 1 + 2e-5
    Cameras(close, intr, 32, 24)


def test_rigidity_tolerance_follows_low_precision_dtypes():
    cams = orbit_cameras(1, 4, radius=1.75, width=16, height=16, fov_x_deg=50)
    for dtype in (torch.float16, torch.bfloat16):  # bf16 rounds rotation entries by up to 4e-3: still rigid
        assert cams.to(dtype=dtype).dtype == dtype


def test_zero_focal_length_names_the_view_and_values():
    intr = torch.tensor([[[50.0, 50.0, 16.0, 12.0], [0.0, 50.0, 16.0, 12.0]]])
    with pytest.raises(ValueError, match=r"`intrinsics` focal lengths .* \[0.0, 50.0, 16.0, 12.0\] at \[0, 1\]"):
        Cameras(torch.eye(4).expand(1, 2, 4, 4), intr, 32, 24)
