import math

import numpy as np
import pytest
import torch

from unipre3d_hf.training import (
    ViewMetricAccumulator,
    accuracy,
    confusion_matrix,
    iou_per_class,
    mean_iou,
    psnr,
    ssim,
)


def test_psnr_known_values_per_image():
    target = torch.full((2, 4, 3, 8, 8), 0.6, dtype=torch.float64)
    pred = target.clone()
    pred[0, 0] -= 0.1  # mse 1e-2 -> 20 dB
    pred[1, 3] += 0.01  # mse 1e-4 -> 40 dB
    out = psnr(pred, target)
    assert out.shape == (2, 4)
    assert out[0, 0].item() == pytest.approx(20.0, abs=1e-9)
    assert out[1, 3].item() == pytest.approx(40.0, abs=1e-9)
    assert math.isinf(out[0, 1].item())
    # not clamped: a render above 1 is scored as it is
    assert psnr(torch.full((3, 2, 2), 1.5), torch.ones(3, 2, 2)).item() == pytest.approx(-10 * math.log10(0.25))


def _ssim_reference(x: np.ndarray, y: np.ndarray, size: int = 11, sigma: float = 1.5) -> float:
    """Direct float64 SSIM: zero-padded 2-D Gaussian window sums, one offset at a time (no separable convolution)."""
    c1, c2 = 0.01**2, 0.03**2
    r = size // 2
    g = np.exp(-((np.arange(size) - r) ** 2) / (2 * sigma**2))
    g2 = np.outer(g, g) / np.outer(g, g).sum()
    _, h, w = x.shape
    xp = np.pad(x, ((0, 0), (r, r), (r, r)))
    yp = np.pad(y, ((0, 0), (r, r), (r, r)))

    def window_sum(a):
        out = np.zeros_like(x)
        for i in range(size):
            for j in range(size):
                out += g2[i, j] * a[:, i : i + h, j : j + w]
        return out

    mx, my = window_sum(xp), window_sum(yp)
    sxx = window_sum(xp * xp) - mx**2
    syy = window_sum(yp * yp) - my**2
    sxy = window_sum(xp * yp) - mx * my
    m = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return float(m.mean())


def test_ssim_matches_direct_window_reference():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 12, 13, generator=gen, dtype=torch.float64)
    y = (x + 0.2 * torch.randn(2, 3, 12, 13, generator=gen, dtype=torch.float64)).clamp(0, 1)
    out = ssim(x, y)
    assert out.shape == (2,)
    for b in range(2):
        assert out[b].item() == pytest.approx(_ssim_reference(x[b].numpy(), y[b].numpy()), abs=1e-12)
    assert 0.0 < out.min().item() < out.max().item() < 1.0


def test_ssim_of_identical_images_is_one_and_float32_agrees():
    x = torch.rand(4, 3, 16, 16)
    assert torch.allclose(ssim(x, x), torch.ones(4), atol=1e-5)
    y = torch.rand(4, 3, 16, 16)
    assert torch.allclose(ssim(x, y), ssim(x.double(), y.double()).float(), atol=1e-5)


def test_image_metrics_reject_bad_shapes():
    with pytest.raises(ValueError, match=r"`pred` must have shape \[..., 3, H, W\]"):
        psnr(torch.rand(2, 4, 8, 8), torch.rand(2, 4, 8, 8))
    with pytest.raises(ValueError, match="`target` must have the shape"):
        ssim(torch.rand(3, 8, 8), torch.rand(3, 8, 9))


def _views(deltas, bg_views=(), size=8, seed=0):
    """target random in [0.2, 0.8]; pred = target + delta, so PSNR = -20 log10(delta); bg views are all black."""
    gen = torch.Generator().manual_seed(seed)
    b, v = len(deltas), len(deltas[0])
    target = 0.2 + 0.6 * torch.rand(b, v, 3, size, size, generator=gen, dtype=torch.float64)
    pred = target + torch.tensor(deltas, dtype=torch.float64)[:, :, None, None, None]
    for i, j in bg_views:
        target[i, j] = 0.0
    return pred, target


def test_accumulator_averages_per_example_then_across_examples():
    # example 0: reference 20 dB; novel 40 and 20 dB.  example 1: reference 40 dB; novel (black, skipped) and 60 dB
    deltas = [[0.1, 0.01, 0.1], [0.01, 0.5, 0.001]]
    pred, target = _views(deltas, bg_views=[(1, 1)])
    acc = ViewMetricAccumulator(lpips_fn=lambda p, t: (p - t).abs().mean(dim=(1, 2, 3)))
    acc.add(pred, target, is_reference=torch.tensor([True, False, False]))
    out = acc.compute()
    assert out["psnr_reference"] == pytest.approx((20 + 40) / 2)
    assert out["psnr_novel"] == pytest.approx(((40 + 20) / 2 + 60) / 2)  # a flat mean over views would give 40
    assert out["lpips_reference"] == pytest.approx((0.1 + 0.01) / 2)
    assert out["lpips_novel"] == pytest.approx(((0.01 + 0.1) / 2 + 0.001) / 2)
    s = ssim(pred, target)
    assert out["ssim_reference"] == pytest.approx((s[0, 0] + s[1, 0]).item() / 2)
    assert out["ssim_novel"] == pytest.approx((((s[0, 1] + s[0, 2]) / 2 + s[1, 2]) / 2).item())
    assert out["num_examples_reference"] == 2 and out["num_examples_novel"] == 2


def test_accumulator_state_merges_like_one_process():
    deltas = [[0.1, 0.01, 0.1], [0.01, 0.5, 0.001], [0.02, 0.03, 0.5]]
    pred, target = _views(deltas, bg_views=[(1, 1), (2, 2)])
    is_ref = torch.tensor([[True, False, False], [True, False, False], [False, True, False]])
    whole = ViewMetricAccumulator()
    whole.add(pred, target, is_ref)
    rank0, rank1 = ViewMetricAccumulator(), ViewMetricAccumulator()
    rank0.add(pred[:2], target[:2], is_ref[:2])
    rank1.add(pred[2:], target[2:], is_ref[2:])
    merged = {k: rank0.state()[k] + rank1.state()[k] for k in ("sums", "counts")}
    got, expected = rank0.compute_from_state(merged), whole.compute()
    assert got == pytest.approx(expected)
    # example 2 has reference view 1 only (its third view is black): psnr_novel = mean(30, 60, -20 log10 0.02)
    assert expected["psnr_novel"] == pytest.approx((30 + 60 + -20 * math.log10(0.02)) / 3)
    assert expected["num_examples_novel"] == 3


def test_accumulator_background_per_example_and_empty_kinds():
    pred, target = _views([[0.1, 0.01], [0.1, 0.01]])
    target[1, 1] = 1.0  # white: the background of example 1 only
    acc = ViewMetricAccumulator()
    acc.add(pred, target, torch.tensor([True, False]), background=torch.tensor([[0.0, 0, 0], [1.0, 1, 1]]))
    out = acc.compute()
    assert out["psnr_novel"] == pytest.approx(40.0) and out["num_examples_novel"] == 1
    empty = ViewMetricAccumulator().compute()
    assert math.isnan(empty["psnr_reference"]) and empty["num_examples_novel"] == 0


def test_accumulator_rejects_bad_input():
    pred, target = _views([[0.1, 0.01]])
    acc = ViewMetricAccumulator()
    with pytest.raises(ValueError, match=r"`is_reference` must be a bool tensor of shape \[V\] = \[2\]"):
        acc.add(pred, target, torch.tensor([1, 0]))
    with pytest.raises(ValueError, match=r"`background` must have shape \[3\] or \[B, 3\]"):
        acc.add(pred, target, torch.tensor([True, False]), background=(0.0, 0.0))
    with pytest.raises(ValueError, match=r"`pred` must have shape \[B, V, 3, H, W\]"):
        acc.add(pred[0], target[0], torch.tensor([True, False]))


def test_accuracy_hand_computed():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0], [5.0, 4.0]])
    labels = torch.tensor([0, 0, -100, 1])
    assert accuracy(logits, labels).item() == pytest.approx(1 / 3)
    assert accuracy(logits[None], labels[None], ignore_index=-1).item() == pytest.approx(1 / 4)
    with pytest.raises(ValueError, match="`logits` must have shape"):
        accuracy(logits, labels[:3])


def test_mean_iou_hand_computed():
    labels = torch.tensor([0, 0, 1, 1, 2, -1])
    pred = torch.tensor([0, 1, 1, 1, 0, 3])  # the last item is ignored; class 3 is absent from both
    cm = confusion_matrix(pred, labels, num_classes=4)
    assert cm.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    iou = iou_per_class(cm)
    assert iou[:3].tolist() == pytest.approx([1 / 3, 2 / 3, 0.0]) and math.isnan(iou[3].item())
    assert mean_iou(pred, labels, num_classes=4).item() == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match=r"`labels` must be in \[0, 4\)"):
        mean_iou(pred, torch.tensor([0, 0, 1, 1, 7, -1]), num_classes=4)
