import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModel

from unipre3d_hf.conversion.original import (
    BACKBONES,
    CheckpointConversionError,
    convert_original_state_dict,
    load_original_checkpoint,
    pcm_prompt_rows,
    python_set_order,
    strip_prefix,
)
from unipre3d_hf.modeling.pretraining import UniPre3DForGaussianPretraining
from unipre3d_hf.testing_utils import load_script

from .helpers import layout, synthetic_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _strip(sd):
    return strip_prefix(sd, "module.")


def _script():
    return load_script("convert_checkpoint")


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_full_size_original_checkpoint_converts_and_loads_strictly(backbone, tmp_path):
    sd = synthetic_checkpoint(backbone)
    with pytest.warns(UserWarning, match="PYTHONHASHSEED") if backbone == "pcm" else _no_warning():
        model, config = convert_original_state_dict(_strip(sd), backbone, full_model=True)
    assert isinstance(model, UniPre3DForGaussianPretraining)
    ours = model.state_dict()
    enc = "module.point_network.encoder."
    # every original tensor arrives somewhere, bit-identical (PCM's order prompts are rows rearranged; gmp_map dropped)
    got = {tuple(v.flatten()[:4].tolist()) for v in ours.values() if v.numel() >= 4}
    for key, value in sd.items():
        if key.startswith(("module.image_network.", "module.sh_to", "module.v_to")) or "gmp_map" in key:
            continue
        if value.numel() >= 4 and "order_prompt.weight" not in key:
            assert tuple(value.flatten()[:4].tolist()) in got, key
    n_orig = sum(v.numel() for k, v in sd.items() if k.startswith(enc) and "gmp_map" not in k and v.dim())
    assert sum(p.numel() for p in model.backbone.parameters()) == layout()[_name(backbone)]["params"] - (
        193_280 if backbone == "pcm" else 0
    )
    assert sum(v.numel() for k, v in model.backbone.state_dict().items() if v.dim()) == n_orig
    for field, value in BACKBONES[backbone].legacy.items():
        assert getattr(config.backbone_config, field) == value
    assert config.scale_log_min == -1.0
    assert config.legacy_quaternion_normalization == (config.level == "object")
    if config.level == "scene":
        # the original's fusion SubMConv3d(32, 32, 3) has spconv's default bias: its optimizer totals (method ref. 15)
        total = {"sparse_unet": 39_197_079, "ptv3": 46_201_239}[backbone]
        assert sum(p.numel() for p in model.parameters() if p.requires_grad) == total
        torch.testing.assert_close(model.fusion.conv.bias, sd["module.fusion_mlps.0.bias"], rtol=0, atol=0)


def _name(backbone):
    from .helpers import LAYOUT_NAMES

    return LAYOUT_NAMES[backbone]


class _no_warning:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_script_writes_folders_that_auto_model_loads(tmp_path):
    sd = synthetic_checkpoint("pointmlp")
    path = tmp_path / "pointmlp.pth"
    torch.save({"iteration": 3, "optimizer_state_dict": {}, "model_state_dict": sd, "best_PSNR": 25.0}, path)
    out = tmp_path / "out"
    argv = ["--checkpoint", str(path), "--backbone", "pointmlp", "--output_dir", str(out), "--full_model"]
    script = _script()
    script.main(argv)
    assert (out / "model.safetensors").exists() and (out / "pretraining" / "model.safetensors").exists()
    backbone = AutoModel.from_pretrained(out)
    assert backbone.config.legacy_sampling is True
    for ours, original in (("embedding.0.weight", "embedding.net.0.weight"), ("groupers.3.affine_beta", None)):
        original = original or "local_grouper_list.3.affine_beta"
        expected = sd[f"module.point_network.encoder.{original}"]
        torch.testing.assert_close(backbone.state_dict()[ours], expected, rtol=0, atol=0)
    full = UniPre3DForGaussianPretraining.from_pretrained(out / "pretraining")
    assert full.config.legacy_transposed_lookup and full.config.legacy_quaternion_normalization
    torch.testing.assert_close(full.fusion.proj.weight, sd["module.fusion_mlps.0.weight"], rtol=0, atol=0)
    torch.testing.assert_close(full.gaussian_head.fc2.weight, sd["module.point_network.final.2.weight"], rtol=0, atol=0)
    # a second run does not replace the output without --overwrite
    with pytest.raises(FileExistsError, match="already exists"):
        script.main(argv)


def test_load_refuses_pickled_objects_and_strips_module_prefix(tmp_path):
    sd = {"module.point_network.encoder.final.bias": torch.randn(64), "module.sh_to_v_transform": torch.eye(3)}
    good = tmp_path / "good.pth"
    torch.save({"model_state_dict": sd}, good)
    loaded = load_original_checkpoint(good)
    assert all(not k.startswith("module.") for k in loaded) and len(loaded) == len(sd)
    bad = tmp_path / "bad.pth"
    torch.save({"model_state_dict": sd, "args": _Opaque()}, bad)
    with pytest.raises(CheckpointConversionError, match="weights_only"):
        load_original_checkpoint(bad)


class _Opaque:
    pass


def test_sparse_unet_reported_input_conv_layout_is_permuted_and_others_fail():
    sd = _strip(synthetic_checkpoint("sparse_unet", ddp=False))
    key = "point_network.encoder.conv_input.0.weight"
    right = sd[key]
    reported = right.permute(1, 2, 3, 0, 4).contiguous()  # [5, 5, 5, 32, 6]
    with pytest.warns(UserWarning, match=r"\[5, 5, 5, 32, 6\]"):
        model, _ = convert_original_state_dict({**sd, key: reported}, "sparse_unet")
    torch.testing.assert_close(model.stem_conv.weight, right, rtol=0, atol=0)
    wrong = right.permute(4, 1, 2, 3, 0).contiguous()  # [6, 5, 5, 5, 32]: any other layout fails
    with pytest.raises(CheckpointConversionError, match=r"conv_input\.0\.weight: \[6, 5, 5, 5, 32\]"):
        convert_original_state_dict({**sd, key: wrong}, "sparse_unet")


def test_unknown_missing_and_misshapen_keys_fail_with_their_names():
    sd = _strip(synthetic_checkpoint("pointmlp"))
    with pytest.raises(CheckpointConversionError, match=r"unmapped key\(s\): point_network\.encoder\.extra\.weight"):
        convert_original_state_dict({**sd, "point_network.encoder.extra.weight": torch.zeros(3)}, "pointmlp")
    del sd["point_network.encoder.embedding.net.1.bias"]
    with pytest.raises(CheckpointConversionError, match=r"missing key\(s\): embedding\.1\.bias"):
        convert_original_state_dict(sd, "pointmlp")
    sd = _strip(synthetic_checkpoint("point_transformer"))
    sd["point_network.encoder.cls_token"] = torch.zeros(1, 1, 256)
    with pytest.raises(CheckpointConversionError, match=r"cls_token: \[1, 1, 256\], expected \[1, 1, 384\]"):
        convert_original_state_dict(sd, "point_transformer")
    sd = _strip(synthetic_checkpoint("sparse_unet"))
    sd["fusion_mlps.2.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointConversionError, match=r"pre-training head.*fusion_mlps\.2\.weight"):
        convert_original_state_dict(sd, "sparse_unet", full_model=True)
    with pytest.raises(CheckpointConversionError, match="not a UniPre3D ptv3 checkpoint"):
        convert_original_state_dict({"encoder.weight": torch.zeros(2)}, "ptv3")


def test_ptv3_first_release_layout_converts():
    sd = _strip(synthetic_checkpoint("ptv3", layout_name="ptv3_first_release"))
    model, config = convert_original_state_dict(sd, "ptv3")
    assert config.enc_channels == [48, 96, 192, 384, 512] and config.enc_patch_size == [1024] * 5
    assert sum(p.numel() for p in model.parameters()) == 97_317_552


def test_pcm_prompt_rows_follow_the_training_process_set_order():
    orders = ["xyz", "xzy", "yxz", "yzx", "zxy", "zyx", "hilbert", "z", "z-trans"]
    unique = python_set_order(orders, 0)
    check = subprocess.run(
        [sys.executable, "-c", f"print(list(set({orders!r})))"], env={"PYTHONHASHSEED": "0"}, capture_output=True
    )
    assert str(unique) == check.stdout.decode().strip()
    assert python_set_order(orders, 0) == unique  # deterministic for a seed
    rows = torch.arange(54.0).unsqueeze(1).expand(54, 4)
    out = pcm_prompt_rows(rows, orders, 6, unique)
    for k, order in enumerate(orders):  # layer k reads the original's block unique.index(order)
        assert out[6 * k, 0].item() == 6 * unique.index(order)
    sd = _strip(synthetic_checkpoint("pcm"))
    model, _ = convert_original_state_dict(sd, "pcm", pcm_pythonhashseed=0)
    orig = sd["point_network.encoder.encoder.order_prompt.weight"]
    j = unique.index("z")
    torch.testing.assert_close(model.order_prompt.weight[7 * 6 : 8 * 6], orig[6 * j : 6 * j + 6], rtol=0, atol=0)
    with pytest.raises(CheckpointConversionError, match="pcm_unique_orders"):
        pcm_prompt_rows(rows, orders, 6, unique[:-1])


class _Planted:
    """Unpickling this object would create a file: the converters must refuse it without running it."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("reader", ["original", "pointcept"])
def test_a_checkpoint_holding_python_objects_is_refused_unrun(tmp_path, reader):
    from unipre3d_hf.conversion.original import CheckpointConversionError, load_original_checkpoint
    from unipre3d_hf.conversion.pointcept import load_pointcept_checkpoint

    marker = tmp_path / "ran"
    path = tmp_path / "model.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "extra": _Planted(str(marker))}, path)
    load = load_original_checkpoint if reader == "original" else load_pointcept_checkpoint
    with pytest.raises(CheckpointConversionError, match="never runs a checkpoint's pickled code: re-save"):
        load(path)
    assert not marker.exists()
