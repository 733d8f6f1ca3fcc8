"""Common checks for the object-level backbones, in the spirit of transformers' ModelTesterMixin.

A test module subclasses ``ObjectBackboneTests`` and provides ``model_class``, ``tiny_config()`` and
``num_tokens(config, num_points)``.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModel

import unipre3d_hf  # noqa: F401  (registers the Auto classes)


def make_points(batch: int, num_points: int, seed: int = 0) -> torch.Tensor:
    """Points on a noisy unit-ish sphere, like a centred ShapeNet object."""
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(batch, num_points, 3, generator=g)
    return 0.4 * p / p.norm(dim=-1, keepdim=True) + 0.02 * torch.randn(batch, num_points, 3, generator=g)


class ObjectBackboneTests:
    model_class = None
    num_points = 128
    hidden_size = None  # expected width of last_hidden_state for the tiny config

    def tiny_config(self, **kwargs):
        raise NotImplementedError

    def num_tokens(self, config, num_points: int) -> int:
        raise NotImplementedError

    def build(self, **kwargs):
        torch.manual_seed(0)
        return self.model_class(self.tiny_config(**kwargs)).eval()

    def test_output_shapes(self):
        model = self.build()
        points = make_points(2, self.num_points)
        with torch.no_grad():
            out = model(points, output_hidden_states=True)
        T = self.num_tokens(model.config, self.num_points)
        H = out.last_hidden_state.shape[-1]
        assert out.last_hidden_state.shape == (2, T, H)
        assert out.anchor_points.shape == (2, T, 3)
        assert out.pooler_output.shape == (2, H)
        assert len(out.hidden_states) >= 2 and all(h.shape[0] == 2 for h in out.hidden_states)
        assert torch.isfinite(out.last_hidden_state).all()
        # anchors are actual input points (per point) or FPS centres drawn from the input
        d = torch.cdist(out.anchor_points, points, compute_mode="donot_use_mm_for_euclid_dist").amin(-1)
        assert d.max() < 1e-5
        tup = model(points, return_dict=False)
        assert torch.equal(tup[0], out.last_hidden_state)

    def test_save_load_round_trip(self, tmp_path):
        model = self.build()
        points = make_points(2, self.num_points)
        model.save_pretrained(tmp_path)
        assert (tmp_path / "config.json").exists() and (tmp_path / "model.safetensors").exists()
        loaded = AutoModel.from_pretrained(tmp_path).eval()
        assert type(loaded) is self.model_class
        assert AutoConfig.from_pretrained(tmp_path).to_diff_dict() == model.config.to_diff_dict()
        for (name, p), (_, q) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
            assert torch.equal(p, q), name
        with torch.no_grad():
            a, b = model(points), loaded(points)
        # the weights are bit-identical; the outputs agree to float32 rounding only: the loaded tensors live in the
        # memory-mapped safetensors file (8-byte, not 64-byte aligned) and CPU kernels pick their vector paths, and
        # so their summation order, by alignment (a 3e-8 difference seen on an AMD EPYC; none once the loaded tensors
        # are cloned into fresh memory)
        torch.testing.assert_close(a.last_hidden_state, b.last_hidden_state)

    def test_eval_is_deterministic(self):
        model = self.build()
        points = make_points(2, self.num_points)
        with torch.no_grad():
            a, b = model(points).last_hidden_state, model(points).last_hidden_state
        assert torch.equal(a, b)

    def test_backward_reaches_every_parameter(self):
        model = self.build().train()
        out = model(make_points(2, self.num_points))
        (out.last_hidden_state.square().mean() + out.pooler_output.mean()).backward()
        missing = [
            n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)
        ]
        assert not missing, f"no gradient reached {missing}"

    def test_batch_equivalence(self):
        model = self.build()
        points = make_points(3, self.num_points)
        with torch.no_grad():
            batched = model(points)
            for i in range(3):
                alone = model(points[i : i + 1])
                torch.testing.assert_close(
                    alone.last_hidden_state[0], batched.last_hidden_state[i], rtol=1e-4, atol=1e-5
                )
                torch.testing.assert_close(alone.anchor_points[0], batched.anchor_points[i])

    def test_fusion_hook_is_called_late_and_changes_output(self):
        model = self.build()
        points = make_points(2, self.num_points)
        seen = {}

        def hook(hidden_states, anchor_points, num_prefix_tokens):
            seen["shape"], seen["anchors"], seen["prefix"] = hidden_states.shape, anchor_points, num_prefix_tokens
            return hidden_states + 1.0

        with torch.no_grad():
            plain = model(points)
            fused = model(points, fusion_hook=hook)
        T = self.num_tokens(model.config, self.num_points)
        assert seen["shape"][1] == T + seen["prefix"]
        torch.testing.assert_close(seen["anchors"], fused.anchor_points)
        assert not torch.allclose(plain.last_hidden_state, fused.last_hidden_state)
        with torch.no_grad():
            identity = model(points, fusion_hook=lambda h, anchor_points, num_prefix_tokens: h)
        torch.testing.assert_close(identity.last_hidden_state, plain.last_hidden_state, rtol=0, atol=0)

    def test_bad_input_raises_value_error(self):
        model = self.build()
        with pytest.raises(ValueError, match="points"):
            model(torch.randn(self.num_points, 3))
        with pytest.raises(ValueError, match="points"):
            model(torch.randn(1, self.num_points, 4))
        bad = make_points(1, self.num_points)
        bad[0, 3, 1] = float("nan")
        with pytest.raises(ValueError, match="NaN"):
            model(bad)
        with pytest.raises(ValueError, match="at least"):
            model(make_points(1, model.config.min_points - 1))

    def test_gradient_checkpointing_gives_same_gradients(self):
        model = self.build().train()
        if not model.supports_gradient_checkpointing:
            pytest.skip("no repeated blocks")
        for m in model.modules():
            if hasattr(m, "drop_prob"):
                m.drop_prob = 0.0
        points = make_points(2, self.num_points)
        torch.manual_seed(1)
        model(points).last_hidden_state.square().mean().backward()
        ref = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad()
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()
        torch.manual_seed(1)
        model(points).last_hidden_state.square().mean().backward()
        for n, p in model.named_parameters():
            torch.testing.assert_close(p.grad, ref[n], rtol=1e-4, atol=1e-6, msg=n)
