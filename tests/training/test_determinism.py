"""What is bit-identical on CPU: the torch renderer's backward with several threads (class 10 of issue 19).

Before, the gathers of the per-tile Gaussian lists took their gradient through ``index_put_(accumulate=True)``, whose
CPU kernel adds float32 with atomics when several threads run: identical backward passes differed by up to ~3e-5 on
this very scene (and two same-seed training runs ended with different weights). Now they add up through
``index_add_``, in index order."""

from __future__ import annotations

import pytest
import torch

from unipre3d_hf.rendering import Cameras, Gaussians, render


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _gradients(num_gaussians=4000, size=48, views=2):
    g = torch.Generator().manual_seed(0)
    tensors = [
        torch.rand(1, num_gaussians, 3, generator=g) - 0.5,
        torch.randn(1, num_gaussians, 4, generator=g),
        torch.full((1, num_gaussians, 3), 0.03),
        torch.rand(1, num_gaussians, generator=g),
        torch.randn(1, num_gaussians, 4, 3, generator=g) * 0.3,
    ]
    for t in tensors:
        t.requires_grad_(True)
    c2w = torch.eye(4).repeat(1, views, 1, 1)
    c2w[..., 2, 3] = -2.5
    intrinsics = torch.tensor([[0.95 * size, 0, size / 2], [0, 0.95 * size, size / 2], [0, 0, 1]]).repeat(
        1, views, 1, 1
    )
    cameras = Cameras.from_camera_to_world(c2w, intrinsics, size, size)
    out = render(Gaussians(*tensors), cameras, torch.zeros(1, views, 3), backend="torch")
    ((out.colors**2).sum() + out.alphas.sum() + 0.01 * out.depths.sum()).backward()
    return [t.grad for t in tensors]


def test_torch_renderer_backward_is_bit_identical_with_two_threads(two_threads):
    first = _gradients()
    assert all(g is not None and g.abs().sum() > 0 for g in first)  # every parameter of many Gaussians gets gradient
    again = _gradients()
    assert all(torch.equal(a, b) for a, b in zip(first, again))
