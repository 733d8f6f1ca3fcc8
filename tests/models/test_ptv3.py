import torch

from unipre3d_hf import PTv3Config, PTv3Model

from .scene_backbone_checks import SceneBackboneChecks, two_scenes


class TestPTv3(SceneBackboneChecks):
    model_class = PTv3Model
    config_class = PTv3Config
    stem_channels = 8

    def tiny_config(self, **kwargs):
        defaults = dict(
            enc_depths=(1, 1, 2), enc_channels=(8, 16, 16), enc_num_head=(1, 2, 2), enc_patch_size=(16, 16, 16),
            dec_depths=(1, 1), dec_channels=(64, 16), dec_num_head=(4, 2), dec_patch_size=(16, 16),
            stride=(2, 2), order=("z", "z-trans", "hilbert", "hilbert-trans"),
        )  # fmt: skip
        return PTv3Config(**{**defaults, **kwargs})

    def test_paper_parameter_counts(self):
        assert sum(p.numel() for p in PTv3Model(PTv3Config()).parameters()) == 46_166_272  # method reference §15
        large = PTv3Model(PTv3Config.first_release())
        assert sum(p.numel() for p in large.parameters()) == 97_317_552
        assert len(list(large.buffers())) == 39

    def test_eval_is_deterministic_and_training_shuffles_orders(self):
        coords, feats, offsets = two_scenes(300, 500)
        model = self.model(drop_path=0.0).eval()
        with torch.no_grad():
            a = model(coords, feats, offsets).last_hidden_state
            b = model(coords, feats, offsets).last_hidden_state
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    def test_patch_size_larger_than_scene_and_gradient_checkpointing(self):
        coords, feats, offsets = two_scenes(40, 200)
        model = self.model(enc_patch_size=(1024,) * 3, dec_patch_size=(1024,) * 2, drop_path=0.0)
        model.train()
        model.gradient_checkpointing_enable()
        torch.manual_seed(3)
        out = model(coords, feats, offsets)
        out.last_hidden_state.square().mean().backward()
        assert all(p.grad is not None for p in model.parameters())

    def test_config_validation(self):
        import pytest

        with pytest.raises(ValueError, match="order"):
            PTv3Config(order=("peano",))
        with pytest.raises(ValueError, match="enc_channels"):
            PTv3Config(enc_channels=(32, 64))
        with pytest.raises(ValueError, match="attention_backend"):
            PTv3Config(attention_backend="xformers")
