import math

import pytest
import torch

from unipre3d_hf.data import silhouette_hits, unproject_depth_to_world
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


def test_silhouette_hits_hand_computed_pixels_and_tolerance():
    # camera at the origin looking down +z, fx = fy = 10, cx = cy = 4 on an 8x8 image: (x, y, 1) -> (10x + 4, 10y + 4)
    c2w = torch.eye(4, dtype=torch.float64)[None]
    intr = torch.tensor([10.0, 10.0, 4.0, 4.0], dtype=torch.float64)
    mask = torch.zeros(1, 8, 8, dtype=torch.uint8)
    mask[0, 2, 5] = 255  # row 2, column 5 covers u in [5, 6), v in [2, 3)
    points = torch.tensor(
        [
            [0.15, -0.15, 1.0],  # (u, v) = (5.5, 2.5): the pixel itself
            [0.199, -0.101, 1.0],  # (5.99, 2.99): still inside it
            [0.2, -0.15, 1.0],  # (6.0, 2.5): the pixel to the right (half-open)
            [0.25, -0.05, 1.0],  # (6.5, 3.5): a diagonal neighbour
            [0.35, -0.15, 1.0],  # (7.5, 2.5): two pixels away
            [0.15, -0.15, -1.0],  # behind the camera
            [0.6, -0.15, 1.0],  # (10, 2.5): outside the image
        ],
        dtype=torch.float64,
    )
    strict = silhouette_hits(points, c2w, intr, mask)
    loose = silhouette_hits(points, c2w, intr, mask, tolerance=1)
    assert strict.shape == (1, 7) and strict.dtype == torch.bool
    assert strict[0].tolist() == [True, True, False, False, False, False, False]
    assert loose[0].tolist() == [True, True, True, True, False, False, False]
    assert silhouette_hits(points, c2w, intr, mask, tolerance=2)[0].tolist()[:5] == [True] * 5


def test_silhouette_hits_agree_with_cameras_project():
    gen = torch.Generator().manual_seed(1)
    eye = torch.randn(3, 3, generator=gen, dtype=torch.float64) + torch.tensor([0.0, 0.0, 2.5])
    c2w = look_at(eye, torch.zeros(3, 3, dtype=torch.float64))
    intr = torch.tensor([[20.0, 21.0, 8.3, 7.9]], dtype=torch.float64).expand(3, 4)
    masks = torch.rand(3, 16, 17, generator=gen) > 0.5
    points = torch.randn(50, 3, generator=gen, dtype=torch.float64) * 0.3
    uv, _ = Cameras.from_camera_to_world(c2w[None], intr[None], 17, 16).project(points[None])
    col, row = uv[0].floor().long().unbind(-1)  # [V, N]
    inside = (col >= 0) & (col < 17) & (row >= 0) & (row < 16)
    expected = masks[torch.arange(3)[:, None], row.clamp(0, 15), col.clamp(0, 16)] & inside
    assert inside.float().mean() > 0.8
    torch.testing.assert_close(silhouette_hits(points, c2w, intr, masks), expected)


def test_silhouette_hits_bad_input_names_the_argument():
    c2w, intr, masks = torch.eye(4)[None], torch.tensor([1.0, 1.0, 1.0, 1.0]), torch.ones(1, 4, 4)
    with pytest.raises(ValueError, match=r"`points` must be a tensor of shape \[N, 3\]"):
        silhouette_hits(torch.zeros(5, 2), c2w, intr, masks)
    with pytest.raises(ValueError, match=r"`camera_to_world` must be a tensor of shape \[V = 1, 4, 4\]"):
        silhouette_hits(torch.zeros(5, 3), torch.eye(4)[None].expand(2, 4, 4), intr, masks)
    with pytest.raises(ValueError, match="`masks`"):
        silhouette_hits(torch.zeros(5, 3), c2w, intr, torch.ones(4, 4))
    with pytest.raises(ValueError, match="`tolerance`"):
        silhouette_hits(torch.zeros(5, 3), c2w, intr, masks, tolerance=-1)
