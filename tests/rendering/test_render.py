import math

import pytest
import torch

from unipre3d_hf.rendering import Cameras, Gaussians, render
from unipre3d_hf.rendering.sh import SH_C0
from unipre3d_hf.rendering.synthetic import object_workload, orbit_cameras, random_gaussians


def single_gaussian(mean, scale, opacity, rgb, dtype=torch.float32):
    dc = (torch.tensor(rgb, dtype=dtype) - 0.5) / SH_C0
    return Gaussians(
        means=torch.tensor([[mean]], dtype=dtype),
        quats=torch.tensor([[[1.0, 0.0, 0.0, 0.0]]], dtype=dtype),
        scales=torch.full((1, 1, 3), scale, dtype=dtype),
        opacities=torch.tensor([[opacity]], dtype=dtype),
        sh=dc.reshape(1, 1, 1, 3),
    )


def test_isotropic_gaussian_renders_the_analytic_blob():
    # Off-centre principal point and fx != fy: the blob must sit at (cx, cy) with per-axis widths fx s / z, fy s / z.
    fx, fy, cx, cy, z, s, o = 120.0, 90.0, 37.3, 21.8, 2.0, 0.06, 0.8
    cams = Cameras(
        torch.eye(4, dtype=torch.float64)[None, None],
        torch.tensor([[[fx, fy, cx, cy]]], dtype=torch.float64),
        width=72,
        height=48,
    )
    g = single_gaussian([0.0, 0.0, z], s, o, [0.9, 0.4, 0.1], dtype=torch.float64)
    bg = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    out = render(g, cams, background=bg, backend="torch")

    var_x, var_y = (fx * s / z) ** 2 + 0.3, (fy * s / z) ** 2 + 0.3
    comp = math.sqrt((fx * s / z) ** 2 * (fy * s / z) ** 2 / (var_x * var_y))
    ys, xs = torch.meshgrid(
        torch.arange(48, dtype=torch.float64) + 0.5, torch.arange(72, dtype=torch.float64) + 0.5, indexing="ij"
    )
    alpha = (o * comp * torch.exp(-0.5 * ((xs - cx) ** 2 / var_x + (ys - cy) ** 2 / var_y))).clamp(max=0.999)
    alpha = torch.where(alpha >= 1 / 255, alpha, torch.zeros_like(alpha))
    expected = alpha[..., None] * torch.tensor([0.9, 0.4, 0.1], dtype=torch.float64) + (1 - alpha[..., None]) * bg
    torch.testing.assert_close(out.colors[0, 0], expected, atol=1e-9, rtol=0)
    torch.testing.assert_close(out.alphas[0, 0], alpha, atol=1e-9, rtol=0)
    # the peak sits on the pixel containing (cx, cy), and depth is z wherever something was drawn
    peak = divmod(int(out.alphas[0, 0].argmax()), 72)
    assert peak == (int(cy), int(cx))
    drawn = out.alphas[0, 0] > 0
    torch.testing.assert_close(out.depths[0, 0][drawn], torch.full_like(out.depths[0, 0][drawn], z))
    assert (out.depths[0, 0][~drawn] == 0).all()


def test_classic_mode_has_no_opacity_compensation():
    cams = Cameras(torch.eye(4)[None, None], torch.tensor([[[100.0, 100.0, 16.0, 16.0]]]), width=32, height=32)
    g = single_gaussian([0.0, 0.0, 2.0], 0.01, 0.5, [1.0, 1.0, 1.0])  # 0.5 px wide: the low-pass dominates
    aa = render(g, cams, backend="torch").alphas.max()
    classic = render(g, cams, backend="torch", antialiased=False).alphas.max()
    var = 0.25 + 0.3
    assert float(classic) == pytest.approx(0.5 * math.exp(-0.25 / var), rel=1e-5)
    assert float(aa) == pytest.approx(0.5 * math.sqrt(0.25**2 / var**2) * math.exp(-0.25 / var), rel=1e-5)


def test_opaque_gaussian_occludes_the_one_behind():
    cams = Cameras(torch.eye(4)[None, None], torch.tensor([[[100.0, 100.0, 16.0, 16.0]]]), width=32, height=32)
    front = single_gaussian([0.0, 0.0, 1.0], 0.2, 1.0, [0.0, 1.0, 0.0])
    back = single_gaussian([0.0, 0.0, 3.0], 0.2, 1.0, [1.0, 0.0, 0.0])
    for first, second in ((front, back), (back, front)):  # storage order must not matter, depth order does
        g = Gaussians(
            *(
                torch.cat([getattr(first, k), getattr(second, k)], 1)
                for k in ("means", "quats", "scales", "opacities", "sh")
            )
        )
        out = render(g, cams, background=[0.0, 0.0, 1.0], backend="torch")
        centre = out.colors[0, 0, 16, 16]
        # the front one has alpha ~0.9986 (< the 0.999 cap); the back one would bring T below 1e-4, so the pixel
        # stops before it: no red at all, and the blue background shows through the remaining transmittance
        a = float(out.alphas[0, 0, 16, 16])
        assert 0.998 < a <= 0.999
        torch.testing.assert_close(centre, torch.tensor([0.0, a, 1 - a]), atol=1e-6, rtol=0)
        assert float(out.depths[0, 0, 16, 16]) == pytest.approx(1.0, abs=1e-5)


def test_empty_masked_and_culled_sets_render_the_background():
    cams = orbit_cameras(2, 3, radius=2.0, width=24, height=20, fov_x_deg=60)
    bg = torch.tensor([[0.1, 0.2, 0.3], [1.0, 1.0, 1.0]])
    empty = Gaussians(
        torch.zeros(2, 0, 3), torch.zeros(2, 0, 4), torch.zeros(2, 0, 3), torch.zeros(2, 0), torch.zeros(2, 0, 1, 3)
    )
    full = random_gaussians(2, 50, extent=0.3, scale_range=(0.02, 0.05))
    masked = Gaussians(
        full.means, full.quats, full.scales, full.opacities, full.sh, torch.zeros(2, 50, dtype=torch.bool)
    )
    for g in (empty, masked):
        out = render(g, cams, background=bg, backend="torch")
        assert out.colors.shape == (2, 3, 20, 24, 3)
        torch.testing.assert_close(out.colors, bg[:, None, None, None, :].expand(2, 3, 20, 24, 3))
        assert (out.alphas == 0).all() and (out.depths == 0).all()
    # behind every camera's near plane: culled
    cams_near = Cameras(cams.world_to_camera, cams.intrinsics, 24, 20, near=100.0, far=200.0)
    out = render(full, cams_near, background=bg, backend="torch")
    assert (out.alphas == 0).all()


def test_backward_of_an_empty_render_gives_zero_gradients():
    g = random_gaussians(1, 10, extent=0.3, scale_range=(0.02, 0.05))
    for name in ("means", "scales", "opacities", "sh"):
        getattr(g, name).requires_grad_(True)
    cams = Cameras(torch.eye(4)[None, None], torch.tensor([[[50.0, 50.0, 8.0, 8.0]]]), 16, 16, near=50.0)
    render(g, cams, backend="torch").colors.sum().backward()
    assert g.means.grad is not None and (g.means.grad == 0).all()


def test_gradients_match_finite_differences():
    torch.manual_seed(0)
    g = random_gaussians(1, 4, extent=0.15, scale_range=(0.08, 0.15), sh_degree=1, seed=3, dtype=torch.float64)
    cams = orbit_cameras(1, 2, radius=1.5, width=12, height=10, fov_x_deg=50, seed=1, dtype=torch.float64)
    weights = torch.rand(1, 2, 10, 12, 3, dtype=torch.float64)
    depth_weights = torch.rand(1, 2, 10, 12, dtype=torch.float64)

    def fn(means, quats, scales, opacities, sh):
        out = render(
            Gaussians(means, quats, scales, opacities, sh),
            cams,
            background=[0.3, 0.2, 0.1],
            backend="torch",
            tile_size=4,
        )
        return (
            (out.colors * weights).sum() + (out.alphas * depth_weights).sum() + 0.1 * (out.depths * depth_weights).sum()
        )

    inputs = tuple(t.clone().requires_grad_(True) for t in (g.means, g.quats, g.scales, g.opacities, g.sh))
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_every_gaussian_parameter_receives_gradient():
    g, cams = object_workload(batch=2, views=2, num=64, size=32)
    params = [t.clone().requires_grad_(True) for t in (g.means, g.quats, g.scales, g.opacities, g.sh)]
    out = render(Gaussians(*params), cams, backend="torch")
    (out.colors.mean() + out.depths.mean()).backward()
    for name, p in zip(("means", "quats", "scales", "opacities", "sh"), params):
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_batch_with_padding_equals_samples_rendered_alone():
    a = random_gaussians(1, 40, extent=0.3, scale_range=(0.02, 0.06), seed=1)
    b = random_gaussians(1, 25, extent=0.3, scale_range=(0.02, 0.06), seed=2)
    cams = orbit_cameras(2, 3, radius=1.5, width=32, height=24, fov_x_deg=55, seed=4)
    batch_index = torch.cat([torch.zeros(40, dtype=torch.long), torch.ones(25, dtype=torch.long)])
    packed = Gaussians.from_packed(
        *(torch.cat([getattr(a, k)[0], getattr(b, k)[0]]) for k in ("means", "quats", "scales", "opacities", "sh")),
        batch_index=batch_index,
    )
    assert packed.means.shape == (2, 40, 3) and packed.mask.sum(1).tolist() == [40, 25]
    # padding holds garbage-free zeros; give it values that would show if it were rendered
    packed.opacities.data[1, 25:] = 1.0
    packed.scales.data[1, 25:] = 0.5
    batched = render(packed, cams, background=[0.5, 0.5, 0.5], backend="torch")
    for i, single in enumerate((a, b)):
        cam_i = Cameras(cams.world_to_camera[i : i + 1], cams.intrinsics[i : i + 1], 32, 24)
        alone = render(single, cam_i, background=[0.5, 0.5, 0.5], backend="torch")
        torch.testing.assert_close(batched.colors[i], alone.colors[0], atol=1e-6, rtol=0)
        torch.testing.assert_close(batched.depths[i], alone.depths[0], atol=1e-5, rtol=0)


def test_from_packed_keeps_order_and_validates():
    means = torch.arange(15, dtype=torch.float32).reshape(5, 3)
    idx = torch.tensor([1, 0, 1, 1, 0])
    g = Gaussians.from_packed(
        means, torch.randn(5, 4), torch.ones(5, 3), torch.ones(5), torch.zeros(5, 1, 3), idx, batch_size=3
    )
    assert g.means.shape == (3, 3, 3)
    torch.testing.assert_close(g.means[0, :2], means[[1, 4]])
    torch.testing.assert_close(g.means[1], means[[0, 2, 3]])
    assert g.mask.tolist() == [[True, True, False], [True, True, True], [False, False, False]]
    with pytest.raises(ValueError, match="batch_size"):
        Gaussians.from_packed(
            means, torch.randn(5, 4), torch.ones(5, 3), torch.ones(5), torch.zeros(5, 1, 3), idx, batch_size=1
        )
    with pytest.raises(ValueError, match="opacities"):
        Gaussians.from_packed(means, torch.randn(5, 4), torch.ones(5, 3), torch.ones(5, 1), torch.zeros(5, 1, 3), idx)


def test_chunked_checkpointed_render_equals_single_chunk():
    # float64: chunking changes the order in which per-pixel terms are summed into each gradient, and in float32 a
    # gradient entry near a cancellation differs by up to ~1e-3 relative between the two orders
    g, cams = object_workload(batch=2, views=2, num=200, size=48, seed=5)
    cams = cams.to(dtype=torch.float64)
    results = []
    for chunk in (None, 4096):  # 4096 elements: many chunks, each recomputed in backward
        fields = (g.means, g.quats, g.scales, g.opacities, g.sh)
        params = [t.double().clone().requires_grad_(True) for t in fields]
        out = render(Gaussians(*params), cams, backend="torch", chunk_elements=chunk)
        (out.colors.square().sum() + out.depths.sum()).backward()
        results.append((out.colors.detach(), [p.grad for p in params]))
    torch.testing.assert_close(results[0][0], results[1][0])
    for g0, g1 in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(g0, g1, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("tile_size", [4, 8, 16])
def test_tile_size_does_not_change_the_image(tile_size):
    g, cams = object_workload(batch=1, views=2, num=150, size=40, seed=7)
    ref = render(g, cams, backend="torch", tile_size=16)
    out = render(g, cams, backend="torch", tile_size=tile_size)
    torch.testing.assert_close(out.colors, ref.colors, atol=1e-6, rtol=0)


def test_lower_sh_degree_drops_view_dependence():
    g = random_gaussians(1, 30, extent=0.3, scale_range=(0.03, 0.08), sh_degree=2, seed=2)
    cams = orbit_cameras(1, 2, radius=1.5, width=24, height=24, fov_x_deg=55)
    dc_only = Gaussians(g.means, g.quats, g.scales, g.opacities, g.sh[:, :, :1])
    torch.testing.assert_close(render(g, cams, sh_degree=0).colors, render(dc_only, cams).colors)
    with pytest.raises(ValueError, match="sh_degree"):
        render(g, cams, sh_degree=3)


def _valid_parts():
    return dict(
        means=torch.zeros(1, 2, 3) + torch.tensor([0.0, 0.0, 2.0]),
        quats=torch.tensor([[[1.0, 0, 0, 0]] * 2]),
        scales=torch.full((1, 2, 3), 0.1),
        opacities=torch.full((1, 2), 0.5),
        sh=torch.zeros(1, 2, 1, 3),
    )


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("means", torch.zeros(2, 3), r"means.*\[B, N, 3\]"),
        ("quats", torch.zeros(1, 2, 3), r"quats.*\[1, 2, 4\]"),
        ("scales", torch.zeros(1, 3, 3), r"scales.*\[1, 2, 3\]"),
        ("opacities", torch.zeros(1, 2, 1), r"opacities.*\[1, 2\]"),
        ("sh", torch.zeros(1, 2, 5, 3), r"sh.*K = \(degree \+ 1\)\^2"),
    ],
)
def test_bad_shapes_raise_naming_the_field(field, value, message):
    parts = _valid_parts()
    parts[field] = value
    with pytest.raises(ValueError, match=message):
        Gaussians(**parts)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("means", torch.tensor([[[float("nan"), 0, 2], [0, 0, 2]]]), "means.*NaN"),
        ("quats", torch.zeros(1, 2, 4), "quats.*normalised"),
        ("scales", -torch.ones(1, 2, 3), "scales.*>= 0"),
        ("opacities", torch.full((1, 2), 1.5), r"opacities.*\[0, 1\]"),
    ],
)
def test_bad_values_raise_naming_the_field(field, value, message):
    parts = _valid_parts()
    parts[field] = value
    cams = Cameras(torch.eye(4)[None, None], torch.tensor([[[50.0, 50.0, 8.0, 8.0]]]), 16, 16)
    with pytest.raises(ValueError, match=message):
        render(Gaussians(**parts), cams, backend="torch")


def test_bad_render_arguments_raise():
    g = Gaussians(**_valid_parts())
    cams = Cameras(torch.eye(4)[None, None], torch.tensor([[[50.0, 50.0, 8.0, 8.0]]]), 16, 16)
    meta = Gaussians(**{k: v.to("meta") for k, v in _valid_parts().items()})
    with pytest.raises(ValueError, match="cameras.*device|on meta"):
        render(meta, cams, backend="torch")
    two_cams = Cameras(torch.eye(4).expand(2, 1, 4, 4), torch.tensor([50.0, 50.0, 8.0, 8.0]).expand(2, 1, 4), 16, 16)
    with pytest.raises(ValueError, match="B=2"):
        render(g, two_cams)
    with pytest.raises(ValueError, match="backend"):
        render(g, cams, backend="vulkan")
    with pytest.raises(ValueError, match="background"):
        render(g, cams, background=torch.zeros(4))
    with pytest.raises((ImportError, ValueError), match="gsplat"):  # not installed, or installed but on CPU
        render(g, cams, backend="gsplat")


def test_auto_backend_is_torch_on_cpu():
    g = Gaussians(**_valid_parts())
    cams = Cameras(torch.eye(4)[None, None], torch.tensor([[[50.0, 50.0, 8.0, 8.0]]]), 16, 16)
    assert render(g, cams).backend == "torch"


def test_cameras_follow_the_gaussians_dtype():
    g64 = random_gaussians(1, 20, extent=0.3, scale_range=(0.03, 0.08), dtype=torch.float64)
    cams32 = orbit_cameras(1, 2, radius=1.5, width=16, height=16, fov_x_deg=55)
    out = render(g64, cams32)
    assert out.colors.dtype == torch.float64
    g32 = Gaussians(*(getattr(g64, k).float() for k in ("means", "quats", "scales", "opacities", "sh")))
    torch.testing.assert_close(out.colors.float(), render(g32, cams32).colors, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "background, message",
    [
        (torch.tensor([0.0, float("nan"), 0.0]), r"`background` must be finite and in \[0, 1\].*NaN"),
        (
            torch.tensor([[255.0, 255.0, 255.0]]),
            r"`background` must be finite and in \[0, 1\], got values in \[255.0, 255.0\]",
        ),
        (torch.tensor([[0.0, 0.0, float("inf")]]), "`background` must be finite"),
        ((0.0, -0.5, 1.0), r"`background` must be 3 finite numbers in \[0, 1\], got \[0.0, -0.5, 1.0\]"),
        (float("nan"), "`background` must be 3 finite numbers"),
        (torch.ones(3, dtype=torch.int64), "floating-point"),
    ],
)
def test_bad_background_values_raise_naming_background(background, message):
    g = Gaussians(**_valid_parts())
    cams = Cameras(torch.eye(4)[None, None], torch.tensor([[[50.0, 50.0, 8.0, 8.0]]]), 16, 16)
    with pytest.raises(ValueError, match=message):
        render(g, cams, background=background, backend="torch")


def test_valid_background_tensor_renders_finite_and_unchecked_tensors_skip_the_sync():
    g = Gaussians(**_valid_parts())
    cams = Cameras(torch.eye(4)[None, None], torch.tensor([[[50.0, 50.0, 8.0, 8.0]]]), 16, 16)
    out = render(g, cams, background=torch.tensor([[0.2, 0.4, 1.0]]), backend="torch")
    assert torch.isfinite(out.colors).all()
    # check_inputs=False leaves tensor values to the caller (the pre-training model checks its own inputs)
    out = render(g, cams, background=torch.tensor([2.0, 2.0, 2.0]), backend="torch", check_inputs=False)
    assert out.colors.shape == (1, 1, 16, 16, 3)
