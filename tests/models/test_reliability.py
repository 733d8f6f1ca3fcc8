"""Reliability checks shared by the six backbones (issue 19 classes 4, 11, 12; issue 17's compile and dtype items)."""

from __future__ import annotations

import json
import os
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from unipre3d_hf import (
    Mamba3DModel,
    PCMModel,
    PointMLPModel,
    PointTransformerConfig,
    PointTransformerModel,
    PTv3Model,
    SparseUNetConfig,
    SparseUNetModel,
)
from unipre3d_hf.modeling.layers import check_point_batch
from unipre3d_hf.ops.sampling import farthest_point_sample, gather_points

from . import test_mamba3d, test_pcm, test_point_transformer, test_pointmlp, test_ptv3, test_sparse_unet
from .object_backbone_common import make_points
from .scene_backbone_checks import two_scenes

OBJECT = {
    "pointmlp": (PointMLPModel, test_pointmlp.TestPointMLP),
    "point_transformer": (PointTransformerModel, test_point_transformer.TestPointTransformer),
    "mamba3d": (Mamba3DModel, test_mamba3d.TestMamba3D),
    "pcm": (PCMModel, test_pcm.TestPCM),
}
SCENE = {
    "sparse_unet": (SparseUNetModel, test_sparse_unet.TestSparseUNet),
    "ptv3": (PTv3Model, test_ptv3.TestPTv3),
}  # the test classes are reached through their modules, so that pytest does not collect them here again
ALL = {**OBJECT, **SCENE}
# one integer field of each config, for the type / range checks
INT_FIELD = {
    "pointmlp": "embed_dim",
    "point_transformer": "num_hidden_layers",
    "mamba3d": "hidden_size",
    "pcm": "embed_dim",
    "sparse_unet": "base_channels",
    "ptv3": "in_channels",
}


def tiny(name, **kwargs):
    return ALL[name][1]().tiny_config(**kwargs)


def build(name, **kwargs):
    torch.manual_seed(0)
    return ALL[name][0](tiny(name, **kwargs))


def run(name, model, dtype=None):
    """Forward on a small batch; ``dtype`` of the inputs (float32 by default)."""
    if name in OBJECT:
        points = make_points(2, 32)
        return model(points if dtype is None else points.to(dtype)).last_hidden_state
    coords, feats, offsets = two_scenes(40, 50)
    return model(coords, feats, offsets).last_hidden_state


@pytest.mark.parametrize("name", ALL)
def test_config_fields_are_checked_with_their_name(name, tmp_path):
    field = INT_FIELD[name]
    for bad in ("64", 0, -3, 2.5):
        with pytest.raises(ValueError, match=f"`{field}` must be integers >= 1"):
            tiny(name, **{field: bad})
    # the same check runs on a config.json loaded with from_pretrained
    config = tiny(name)
    config.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    data[field] = -1
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=f"`{field}`"):
        type(config).from_pretrained(tmp_path)


def test_float_fields_are_checked():
    with pytest.raises(ValueError, match="`group_radius` must be a number > 0"):
        PointTransformerConfig(group_radius=0.0)
    with pytest.raises(ValueError, match="`drop_path_rate` must be a number >= 0.0 and <= 1.0"):
        PointTransformerConfig(drop_path_rate=1.5)
    with pytest.raises(ValueError, match="`grid_size`"):
        SparseUNetConfig(grid_size="0.02")
    with pytest.raises(ValueError, match="`layers`"):
        SparseUNetConfig(layers=(1, 1, 0, 1, 1, 1, 1, 1))


@pytest.mark.parametrize("name", ALL)
def test_builds_on_the_meta_device(name):
    with torch.device("meta"):
        model = ALL[name][0](tiny(name))
    assert all(p.device.type == "meta" for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in build(name).parameters())


@pytest.mark.parametrize("name", ["pointmlp", "sparse_unet", "ptv3"])
def test_checkpoint_without_batchnorm_statistics_loads_fresh_ones(name, tmp_path):
    model = build(name)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.fill_(5.0), m.running_var.fill_(7.0), m.num_batches_tracked.fill_(3)
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    kept = {k: v for k, v in weights.items() if "running_" not in k and "num_batches_tracked" not in k}
    assert len(kept) < len(weights)
    save_file(kept, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded = type(model).from_pretrained(tmp_path)
    norms = [m for m in loaded.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms
    for m in norms:
        assert torch.equal(m.running_mean, torch.zeros_like(m.running_mean))
        assert torch.equal(m.running_var, torch.ones_like(m.running_var))
        assert int(m.num_batches_tracked) == 0
    for k, v in kept.items():  # every stored tensor is loaded as saved
        assert torch.equal(loaded.state_dict()[k], v), k


@pytest.mark.parametrize("corrupt", ["truncated", "zeroed", "empty"])
def test_corrupt_weight_file_error_names_the_file(corrupt, tmp_path):
    build("pointmlp").save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "zeroed": bytes(len(data)), "empty": b""}[corrupt])
    with pytest.raises(OSError, match=f"{os.fspath(path)} is not a valid safetensors file"):
        PointMLPModel.from_pretrained(tmp_path)


def test_init_weights_honours_initializer_range():
    torch.manual_seed(0)
    model = PointTransformerModel(test_point_transformer.TestPointTransformer().tiny_config(initializer_range=1e-3))
    assert 0 < model.cls_pos.abs().max() < 6e-3  # std 1e-3 (it was drawn with std 1)
    torch.manual_seed(0)
    scene = SparseUNetModel(test_sparse_unet.TestSparseUNet().tiny_config(initializer_range=1e-3))
    w = scene.stem_conv.weight
    assert 0 < w.abs().max() < 6e-3 and abs(float(w.std()) - 1e-3) < 2e-4


@pytest.mark.parametrize("name", ALL)
def test_bfloat16_model_takes_float32_inputs_and_autocast_trains(name):
    model = build(name).eval()
    with torch.no_grad():
        ref = run(name, model)
        out = run(name, model.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    # bf16 keeps ~3 significant digits (and moves the points, so FPS may pick other centres): the features agree with
    # float32 to a few percent of their scale
    assert (out.float() - ref).abs().mean() < 0.1 * ref.abs().mean() + 1e-3
    model = build(name).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = run(name, model).float().square().mean()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_farthest_point_sample_under_inductor_equals_eager():
    # the case of issue 17: FPS then a gather; with the old in-place buffer, inductor returned the wrong points for
    # every cloud but the last
    torch.manual_seed(0)
    points = torch.rand(3, 64, 3)
    compiled = torch.compile(lambda x: gather_points(x, farthest_point_sample(x, 8)), backend="inductor")
    assert torch.equal(compiled(points), gather_points(points, farthest_point_sample(points, 8)))


def test_value_checks_do_not_block_fullgraph_compile():
    points = make_points(1, 16)
    checked = torch.compile(lambda p: (check_point_batch(p, None), p * 2)[1], fullgraph=True, backend="eager")
    assert torch.equal(checked(points), points * 2)
    bad = points.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):  # the eager check and its message stay
        check_point_batch(bad, None)


def test_activation_checkpointing_both_names_warn_nowhere_in_our_code():
    model = build("pointmlp").train()
    assert model.supports_gradient_checkpointing
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.activation_checkpointing_enable()
        model.activation_checkpointing_disable()
        model.gradient_checkpointing_enable()
        run("pointmlp", model).square().mean().backward()
    ours = [
        w for w in caught
        if issubclass(w.category, (DeprecationWarning, FutureWarning)) and f"{os.sep}unipre3d_hf{os.sep}" in w.filename
    ]  # fmt: skip
    assert not ours, [str(w.message) for w in ours]
    assert all(m.gradient_checkpointing for m in model.modules() if hasattr(m, "_gradient_checkpointing_func"))
