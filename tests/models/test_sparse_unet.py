import torch

from unipre3d_hf import SparseUNetConfig, SparseUNetModel
from unipre3d_hf.testing_utils import require_spconv_cpu

from .scene_backbone_checks import SceneBackboneChecks, two_scenes


class TestSparseUNet(SceneBackboneChecks):
    model_class = SparseUNetModel
    config_class = SparseUNetConfig
    stem_channels = 8

    def tiny_config(self, **kwargs):
        defaults = dict(base_channels=8, channels=(8, 16, 16, 16, 16, 16, 8, 8), layers=(1, 1, 1, 1, 1, 1, 1, 1))
        return SparseUNetConfig(**{**defaults, **kwargs})

    def test_paper_parameter_count(self):
        model = SparseUNetModel(SparseUNetConfig())
        assert sum(p.numel() for p in model.parameters()) == 39_162_112  # method reference section 15
        assert len(list(model.buffers())) == 177
        assert model.stem_conv.weight.shape == (32, 5, 5, 5, 6)  # spconv layout [out, kD, kH, kW, in]

    def test_gradient_checkpointing_gives_the_same_gradients(self):
        coords, feats, offsets = two_scenes(200, 300)
        grads = []
        for checkpointing in (False, True):
            model = self.model()
            model.train()
            if checkpointing:
                model.gradient_checkpointing_enable()
            torch.manual_seed(1)
            model(coords, feats, offsets).last_hidden_state.square().sum().backward()
            grads.append(model.enc[0].blocks[0].conv1.weight.grad)
        torch.testing.assert_close(grads[0], grads[1])

    @require_spconv_cpu
    def test_spconv_cpu_model_matches_torch_twin(self):
        coords, feats, offsets = two_scenes(300, 500)
        model = self.model().eval()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # spconv's CPU kernels are only correct single-threaded
        try:
            with torch.no_grad():
                ours = model(coords, feats, offsets)
                model.config.sparse_conv_backend = "spconv"
                ref = model(coords, feats, offsets)
        finally:
            torch.set_num_threads(threads)
        torch.testing.assert_close(ours.last_hidden_state, ref.last_hidden_state, rtol=1e-4, atol=1e-5)
