"""Checks shared by the scene-backbone tests (Sparse UNet, PTv3): packed inputs of two uneven scenes."""

from __future__ import annotations

import tempfile

import torch
from transformers import AutoConfig, AutoModel

from unipre3d_hf.ops.sparse_conv import SparseVoxels


def scene(n: int, seed: int, extent=(3.0, 3.0, 1.5), channels: int = 6):
    g = torch.Generator().manual_seed(seed)
    coords = torch.rand(n, 3, generator=g) * torch.tensor(extent) + torch.randn(3, generator=g)
    return coords, torch.randn(n, channels, generator=g)


def two_scenes(n1: int, n2: int, extent=(3.0, 3.0, 1.5), channels: int = 6):
    c1, f1 = scene(n1, 1, extent, channels)
    c2, f2 = scene(n2, 2, extent, channels)
    return torch.cat([c1, c2]), torch.cat([f1, f2]), torch.tensor([n1, n1 + n2])


def appending_hook(voxels: SparseVoxels) -> SparseVoxels:
    """Appends, to every scene, 25 'lifted pixels' on the scene's grid (one per voxel) with their own features."""
    g = torch.Generator().manual_seed(5)
    new_grid, new_batch, new_coords = [], [], []
    for b in range(voxels.batch_size):
        grid = voxels.grid_coords[voxels.batch_index == b]
        cells = grid[torch.randperm(grid.shape[0], generator=g)[:25]] + torch.tensor([0, 0, 1])
        new_grid.append(cells)
        new_batch.append(torch.full((cells.shape[0],), b))
        new_coords.append(cells.float() * 0.1)
    grid = torch.cat(new_grid)
    feats = torch.randn(grid.shape[0], voxels.features.shape[1], generator=g)
    return voxels.append(feats, grid, torch.cat(new_batch), torch.cat(new_coords))


class SceneBackboneChecks:
    """Mixin: subclasses set `model_class`, `config_class`, `tiny_config()`, `hidden`."""

    model_class = None
    config_class = None
    hidden = 0

    def tiny_config(self, **kwargs):
        raise NotImplementedError

    def model(self, **kwargs):
        torch.manual_seed(0)
        return self.model_class(self.tiny_config(**kwargs))

    def test_default_config_shapes_on_two_scenes(self):
        coords, feats, offsets = two_scenes(3000, 5000)
        model = self.model_class(self.config_class()).eval()
        with torch.no_grad():
            out = model(coords, feats, offsets)
        t = out.last_hidden_state.shape[0]
        assert out.last_hidden_state.shape == (t, 64)
        assert out.anchor_points.shape == (t, 3) and out.batch_index.shape == (t,)
        assert out.pooler_output.shape == (2, 64) and out.point_to_token.shape == (8000,)
        assert torch.bincount(out.batch_index).tolist()[0] <= 3000 and t > 7000
        # every point maps to a voxel of its own scene, whose anchor is within one voxel diagonal of it
        assert torch.equal(
            out.batch_index[out.point_to_token], torch.repeat_interleave(torch.arange(2), torch.tensor([3000, 5000]))
        )
        assert (out.anchor_points[out.point_to_token] - coords).norm(dim=1).max() < 0.02 * 3**0.5 + 1e-6
        assert torch.isfinite(out.last_hidden_state).all()

    def test_save_load_round_trip_with_auto_classes(self):
        coords, feats, offsets = two_scenes(300, 500)
        model = self.model().eval()
        with tempfile.TemporaryDirectory() as d:
            model.save_pretrained(d)
            config = AutoConfig.from_pretrained(d)
            assert type(config) is self.config_class and config.sparse_conv_backend == "auto"
            loaded = AutoModel.from_pretrained(d).eval()
        assert type(loaded) is self.model_class
        with torch.no_grad():
            a, b = model(coords, feats, offsets), loaded(coords, feats, offsets)
        torch.testing.assert_close(a.last_hidden_state, b.last_hidden_state)

    def test_backward_reaches_every_parameter(self):
        coords, feats, offsets = two_scenes(300, 500)
        model = self.model().train()
        out = model(coords, feats, offsets, output_hidden_states=True)
        (out.last_hidden_state.square().mean() + out.pooler_output.mean()).backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not missing, missing
        assert len(out.hidden_states) >= 3

    def test_batch_equivalence_in_eval(self):
        coords, feats, offsets = two_scenes(400, 700)
        model = self.model().eval()
        with torch.no_grad():
            both = model(coords, feats, offsets)
            first = model(coords[:400], feats[:400], offsets[:1])
            second = model(coords[400:], feats[400:], offsets[1:] - 400)
        n1 = first.last_hidden_state.shape[0]
        torch.testing.assert_close(both.last_hidden_state[:n1], first.last_hidden_state, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(both.last_hidden_state[n1:], second.last_hidden_state, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(both.pooler_output, torch.cat([first.pooler_output, second.pooler_output]))
        assert torch.equal(both.point_to_token[400:] - n1, second.point_to_token)

    def test_identity_hook_leaves_outputs_unchanged(self):
        coords, feats, offsets = two_scenes(300, 500)
        model = self.model().eval()
        seen = []

        def identity(voxels):
            seen.append(voxels.features.shape)
            return voxels

        with torch.no_grad():
            plain = model(coords, feats, offsets)
            hooked = model(coords, feats, offsets, fusion_hook=identity)
        assert len(seen) == 1 and seen[0][1] == self.stem_channels
        torch.testing.assert_close(plain.last_hidden_state, hooked.last_hidden_state)

    def test_appending_hook_adds_voxels_and_trains(self):
        coords, feats, offsets = two_scenes(300, 500)
        model = self.model().train()
        with torch.no_grad():
            base = model.eval()(coords, feats, offsets)
        model.train()
        out = model(coords, feats, offsets, fusion_hook=appending_hook)
        assert out.last_hidden_state.shape[0] == base.last_hidden_state.shape[0] + 50
        # rows stay scene after scene; each scene's appended voxels follow its own voxels
        assert torch.equal(out.batch_index, out.batch_index.sort().values)
        assert torch.bincount(out.batch_index).tolist() == [n + 25 for n in torch.bincount(base.batch_index).tolist()]
        # input points keep pointing at their own voxel (its anchor is the mean of its points)
        assert (out.anchor_points[out.point_to_token] - coords).norm(dim=1).max() < 0.02 * 3**0.5 + 1e-6
        out.last_hidden_state.square().mean().backward()
        assert all(p.grad is not None for p in model.parameters())

    def test_bad_inputs_raise_value_error(self):
        coords, feats, offsets = two_scenes(30, 50)
        model = self.model().eval()
        import pytest

        cases = [
            ((coords, feats, torch.tensor([50, 30])), "offsets"),
            ((coords, feats, torch.tensor([30, 30, 80])), "offsets"),
            ((coords, feats[:-1], offsets), "features"),
            ((torch.where(torch.arange(80)[:, None] == 3, float("nan"), coords), feats, offsets), "NaN"),
            ((coords[:, :2], feats, offsets), "coords"),
            ((coords, feats[:, :4], offsets), "features"),
            ((coords, feats, torch.tensor([30, 70])), "offsets"),
        ]
        for args, match in cases:
            with pytest.raises(ValueError, match=match):
                model(*args)
