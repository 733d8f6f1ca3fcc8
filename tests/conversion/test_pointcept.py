import os

import pytest
import torch
from transformers.initialization import no_init_weights

from unipre3d_hf import PTv3Config, PTv3Model, SparseUNetConfig, SparseUNetModel
from unipre3d_hf.conversion.original import CheckpointConversionError
from unipre3d_hf.conversion.pointcept import export_pointcept_state_dict, import_pointcept_state_dict
from unipre3d_hf.testing_utils import load_script

from ..models.scene_backbone_checks import two_scenes
from .helpers import layout

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _tiny(backbone):
    if backbone == "ptv3":
        return PTv3Model(
            PTv3Config(
                enc_depths=(1, 2, 1),
                enc_channels=(16, 32, 32),
                enc_num_head=(1, 2, 2),
                enc_patch_size=(16,) * 3,
                dec_depths=(2, 1),
                dec_channels=(16, 32),
                dec_num_head=(1, 2),
                dec_patch_size=(16,) * 2,
                stride=(2, 2),
                in_channels=4,
            )  # fmt: skip
        )
    return SparseUNetModel(SparseUNetConfig(channels=(16, 32, 32, 16), layers=(1, 2, 1, 2), in_channels=4))


@pytest.mark.parametrize(
    "backbone,arch,entry", [("ptv3", "PT-v3m1", "ptv3"), ("sparse_unet", "SpUNet-v1m1", "sparseunet")]
)
def test_export_has_pointcept_names_and_shapes(backbone, arch, entry):
    # UniPre3D vendors Pointcept's modules unchanged: the recorded layout is what Pointcept's load_state_dict expects
    with no_init_weights():  # names and shapes only: the values are checked by the round trip below
        model = PTv3Model(PTv3Config()) if backbone == "ptv3" else SparseUNetModel(SparseUNetConfig())
    exported = export_pointcept_state_dict(model, prefix="module.backbone.")
    expected = layout()[entry]["backbone_state_dict"]
    assert {k[len("module.backbone.") :]: list(v.shape) for k, v in exported.items()} == expected
    # and they import back strictly, with Pointcept's default heads (channels / 16) and PT-v3m1's unpooling
    kwargs = {"enc_patch_size": [48] * 5, "dec_patch_size": [48] * 4} if backbone == "ptv3" else None
    back, dropped = import_pointcept_state_dict(
        {**exported, "module.seg_head.weight": torch.zeros(20, 64)}, arch, kwargs
    )
    assert dropped == ["seg_head.weight"]
    assert back.config.to_diff_dict() == {
        **model.config.to_diff_dict(),
        **({"legacy_unpooling_cpe": True} if backbone == "ptv3" else {}),
    }


@pytest.mark.parametrize("backbone,arch", [("ptv3", "PT-v3m1"), ("sparse_unet", "SpUNet-v1m1")])
@pytest.mark.parametrize("prefix", ["", "backbone.", "module.backbone."])
def test_round_trip_ours_pointcept_ours_is_bit_identical(backbone, arch, prefix):
    torch.manual_seed(0)
    model = _tiny(backbone).eval()
    for module in model.modules():  # non-trivial running statistics, so that the BN buffers are checked too
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
    exported = export_pointcept_state_dict(model, prefix=prefix)
    assert all(k.startswith(prefix) for k in exported)
    heads = (
        dict(enc_num_head=model.config.enc_num_head, dec_num_head=model.config.dec_num_head)
        if backbone == "ptv3"
        else {}
    )
    patch = dict(enc_patch_size=[16] * 3, dec_patch_size=[16] * 2) if backbone == "ptv3" else {}
    back, _ = import_pointcept_state_dict(exported, arch, {**heads, **patch})
    assert set(back.state_dict()) == set(model.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    if prefix != "module.backbone.":
        return  # the prefix only changes the keys: one forward comparison per backbone
    coords, feats, offsets = two_scenes(40, 50, channels=4)
    if backbone == "ptv3":
        model.config.legacy_unpooling_cpe = True  # what a PT-v3m1 import runs
    with torch.no_grad():
        a = model(coords, feats, offsets).last_hidden_state
        b = back(coords, feats, offsets).last_hidden_state
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_sonata_and_foreign_state_dicts_are_refused_with_reasons():
    sd = export_pointcept_state_dict(_tiny("ptv3"))
    sonata = {"embedding.stem.linear.weight": torch.zeros(16, 4), **{k: v for k, v in sd.items() if "stem" not in k}}
    with pytest.raises(CheckpointConversionError, match="Sonata PT-v3m2"):
        import_pointcept_state_dict(sonata, "PT-v3m1")
    with pytest.raises(CheckpointConversionError, match="lacks 'embedding.stem.conv.weight'"):
        import_pointcept_state_dict({"foo": torch.zeros(1)}, "PT-v3m1")
    sd["enc.enc0.block0.attn.extra"] = torch.zeros(3)
    with pytest.raises(CheckpointConversionError, match=r"unmapped key\(s\): enc\.enc0\.block0\.attn\.extra"):
        import_pointcept_state_dict(sd, "PT-v3m1", dict(enc_num_head=[1, 2, 2], dec_num_head=[1, 2]))
    with pytest.raises(ValueError, match="SparseUNetModel or a PTv3Model"):
        export_pointcept_state_dict(torch.nn.Linear(2, 2))


def test_script_exports_and_imports_pointcept_files(tmp_path):
    script = load_script("convert_checkpoint")
    model = _tiny("sparse_unet").eval()
    model.save_pretrained(tmp_path / "ours")
    script.main(["--to", "pointcept", "--model_dir", str(tmp_path / "ours"), "--output_dir", str(tmp_path / "pc")])
    saved = torch.load(tmp_path / "pc" / "model.pth", weights_only=True)["state_dict"]
    assert "conv_input.0.weight" in saved and "enc.1.block1.conv2.weight" in saved
    torch.save({"state_dict": {f"module.backbone.{k}": v for k, v in saved.items()}}, tmp_path / "pc.pth")
    script.main(
        ["--from", "pointcept", "--pointcept_arch", "SpUNet-v1m1", "--checkpoint", str(tmp_path / "pc.pth"),
         "--backbone", "sparse_unet", "--output_dir", str(tmp_path / "back")]
    )  # fmt: skip
    back = SparseUNetModel.from_pretrained(tmp_path / "back")
    for key, value in model.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
