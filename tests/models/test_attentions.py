"""output_attentions / attn_implementation on the point Transformer and its heads (transformers' conventions)."""

import pytest
import torch

from unipre3d_hf import (
    PointMLPConfig,
    PointMLPForPointCloudClassification,
    PointTransformerConfig,
    PointTransformerForPointCloudClassification,
    PointTransformerModel,
)


def tiny_config(**kwargs):
    return PointTransformerConfig(
        num_groups=8, group_size=8, encoder_dims=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        **kwargs,
    )  # fmt: skip


def test_attention_weights_are_softmaxes_and_do_not_change_the_output(tmp_path):
    torch.manual_seed(0)
    model = PointTransformerModel(tiny_config()).eval()
    points = torch.randn(2, 64, 3)
    with torch.no_grad():
        plain = model(points)
        out = model(points, output_attentions=True)
    assert plain.attentions is None
    assert len(out.attentions) == 2 and all(a.shape == (2, 2, 9, 9) for a in out.attentions)  # CLS + 8 patches
    for weights in out.attentions:
        assert torch.all(weights >= 0) and torch.allclose(weights.sum(-1), torch.ones(2, 2, 9), atol=1e-6)
    torch.testing.assert_close(out.last_hidden_state, plain.last_hidden_state, rtol=1e-5, atol=1e-6)

    model.save_pretrained(tmp_path)
    eager = PointTransformerModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert eager.config._attn_implementation == "eager"
    with torch.no_grad():
        torch.testing.assert_close(eager(points).last_hidden_state, plain.last_hidden_state, rtol=1e-5, atol=1e-6)


def test_heads_return_attentions_and_refuse_them_without_attention():
    torch.manual_seed(0)
    head = PointTransformerForPointCloudClassification(tiny_config(num_labels=3)).eval()
    with torch.no_grad():
        out = head(torch.randn(2, 64, 3), output_attentions=True)
    assert out.logits.shape == (2, 3) and len(out.attentions) == 2
    mlp_head = PointMLPForPointCloudClassification(PointMLPConfig(num_labels=3)).eval()
    with pytest.raises(ValueError, match="`output_attentions`: PointMLPModel has no attention weights"):
        mlp_head(torch.randn(2, 1024, 3), output_attentions=True)
