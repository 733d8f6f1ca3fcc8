import numpy as np
import pytest
import torch
from PIL import Image

from unipre3d_hf.training import save_render_grid


def test_render_grid_layout_and_pixels(tmp_path):
    h, w = 4, 5
    ref = torch.full((3, h, w), 0.5)
    render = torch.zeros(3, h, w)
    render[0] = 1.5  # clamped to 1
    render[2] = -1.0  # clamped to 0
    gt = torch.rand(3, h, w)
    path = save_render_grid(tmp_path / "sub" / "grid.png", [[ref, render, gt], [gt, ref]])
    assert path == str(tmp_path / "sub" / "grid.png")
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["grid.png"]  # no temporary file left
    pixels = np.asarray(Image.open(path).convert("RGB"))
    assert pixels.shape == (2 * h + 2, 3 * w + 2 * 2, 3)
    assert (pixels[:h, :w] == 128).all()  # round(0.5 * 255)
    assert (pixels[:h, w : w + 2] == 255).all() and (pixels[h : h + 2] == 255).all()  # separators
    assert (pixels[:h, w + 2 : 2 * w + 2] == [255, 0, 0]).all()
    expected_gt = (gt.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    assert (pixels[:h, 2 * w + 4 :] == expected_gt).all()
    assert (pixels[h + 2 :, :w] == expected_gt).all()
    assert (pixels[h + 2 :, 2 * w + 4 :] == 255).all()  # the short second row is padded with white


def test_render_grid_rejects_bad_images(tmp_path):
    with pytest.raises(ValueError, match=r"`rows\[0\]\[1\]` must be a \[3, H, W\] tensor, got \(4, 4\)"):
        save_render_grid(tmp_path / "g.png", [[torch.zeros(3, 4, 4), torch.zeros(4, 4)]])
    with pytest.raises(ValueError, match=r"`rows\[1\]\[0\]` has shape \(3, 4, 5\)"):
        save_render_grid(tmp_path / "g.png", [[torch.zeros(3, 4, 4)], [torch.zeros(3, 4, 5)]])
