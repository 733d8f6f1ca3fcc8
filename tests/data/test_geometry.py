import math

import pytest
import torch

from unipre3d_hf.data import unproject_depth_to_world
from unipre3d_hf.rendering import Cameras
from unipre3d_hf.rendering.cameras import look_at


def test_hand_computed_pixel():
    depth = torch.zeros(3, 5, dtype=torch.float64)
    depth[1, 3] = 2.0
    c2w = torch.eye(4, dtype=torch.float64)
    c2w[:3, :3] = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # 90 deg about z
    c2w[:3, 3] = torch.tensor([1.0, 2.0, 3.0])
    intr = torch.tensor([10.0, 20.0, 2.0, 1.0], dtype=torch.float64)
    points, valid = unproject_depth_to_world(depth, c2w, intr)
    assert points.shape == (3, 5, 3) and valid.shape == (3, 5) and valid.sum() == 1 and valid[1, 3]
    # pixel (row 1, column 3) has its centre at (u, v) = (3.5, 1.5): camera point
    # ((3.5 - 2) 2 / 10, (1.5 - 1) 2 / 20, 2) = (0.3, 0.05, 2); rotated (-0.05, 0.3, 2); translated (0.95, 2.3, 5)
    torch.testing.assert_close(points[1, 3], torch.tensor([0.95, 2.3, 5.0], dtype=torch.float64))
    torch.testing.assert_close(points[0, 0], c2w[:3, 3])  # invalid pixels sit at the camera centre


def test_round_trip_through_cameras_project_lands_on_pixel_centres():
    gen = torch.Generator().manual_seed(0)
    b, v, h, w = 2, 3, 6, 8
    eye = torch.randn(b, v, 3, generator=gen, dtype=torch.float64) * 2 + torch.tensor([0.0, 0.0, 0.5])
    c2w = look_at(eye, torch.zeros(b, v, 3, dtype=torch.float64))
    intr = torch.tensor([7.0, 6.5, 3.7, 3.2], dtype=torch.float64).expand(b, v, 4).clone()
    depth = torch.rand(b, v, h, w, generator=gen, dtype=torch.float64) * 3 + 0.5
    points, valid = unproject_depth_to_world(depth, c2w, intr)
    assert points.shape == (b, v, h, w, 3) and valid.all()
    cams = Cameras.from_camera_to_world(c2w, intr, w, h)
    for i in range(v):  # project every view's points into the same view
        uv, z = cams.project(points[:, i].reshape(b, -1, 3))
        jj, ii = torch.meshgrid(torch.arange(w), torch.arange(h), indexing="xy")
        centres = torch.stack([jj + 0.5, ii + 0.5], -1).reshape(-1, 2).to(torch.float64)
        torch.testing.assert_close(uv[:, i], centres.expand(b, -1, -1))
        torch.testing.assert_close(z[:, i], depth[:, i].reshape(b, -1))


def test_valid_mask_min_depth_broadcasting_and_gradients():
    depth = torch.tensor([[0.0, 0.04, 0.05, 0.06], [float("nan"), float("inf"), -1.0, 3.0]], requires_grad=True)
    c2w = torch.eye(4).expand(5, 4, 4).clone().requires_grad_(True)
    intr = torch.tensor([2.0, 2.0, 2.0, 1.0])  # one set for every frame
    points, valid = unproject_depth_to_world(depth, c2w, intr)
    assert points.shape == (5, 2, 4, 3) and valid.shape == (5, 2, 4) and torch.isfinite(points).all()
    assert valid[0].tolist() == [[False, False, False, True], [False, False, False, True]]
    _, valid_low = unproject_depth_to_world(depth, c2w, intr, min_depth=0.01)
    assert valid_low[0, 0].tolist() == [False, True, True, True]
    points.sum().backward()
    assert torch.isfinite(depth.grad).all() and depth.grad[1, 3] != 0 and c2w.grad.abs().sum() > 0


def test_bad_input_names_the_argument_and_shape():
    depth, c2w, intr = torch.ones(2, 4, 5), torch.eye(4).expand(2, 4, 4), torch.ones(2, 4)
    with pytest.raises(ValueError, match=r"`depth` must be a tensor of shape \[\.\.\., H, W\]"):
        unproject_depth_to_world(torch.ones(5), c2w, intr)
    with pytest.raises(ValueError, match="`depth` must be floating-point metres"):
        unproject_depth_to_world(torch.ones(2, 4, 5, dtype=torch.int32), c2w, intr)
    with pytest.raises(ValueError, match=r"`camera_to_world` must be a tensor of shape \[\.\.\., 4, 4\], got \(2, 3,"):
        unproject_depth_to_world(depth, torch.ones(2, 3, 4), intr)
    with pytest.raises(ValueError, match=r"`intrinsics` must be a tensor of shape \[\.\.\., 4\]"):
        unproject_depth_to_world(depth, c2w, torch.ones(2, 3, 3))
    with pytest.raises(ValueError, match="must broadcast"):
        unproject_depth_to_world(depth, torch.eye(4).expand(3, 4, 4), intr)
    assert math.isclose(float(unproject_depth_to_world(depth, c2w, intr)[0][0, 0, 0, 2]), 1.0)
