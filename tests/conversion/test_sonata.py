"""Import of Pointcept PT-v3m2 / Sonata backbones: synthetic state dicts with the key names and shapes of Pointcept's
``point_transformer_v3m2_sonata.py`` / ``facebookresearch/sonata`` ``model.py``, written out here by hand."""

import json
import os

import pytest
import torch

from unipre3d_hf import PTv3ForPointCloudSegmentation, PTv3Model
from unipre3d_hf.conversion.original import CheckpointConversionError
from unipre3d_hf.conversion.pointcept import export_pointcept_state_dict, import_pointcept_state_dict
from unipre3d_hf.testing_utils import load_script

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENC_CHANNELS, ENC_DEPTHS = (16, 32, 48), (1, 2, 1)
DEC_CHANNELS, DEC_DEPTHS = (16, 32), (1, 1)
IN_CHANNELS = 9  # Sonata: coord, color, normal
# a Sonata-style checkpoint config (PointTransformerV3 kwargs): heads and patches that the state dict cannot tell
SONATA_CONFIG = dict(
    in_channels=IN_CHANNELS, order=("z", "z-trans", "hilbert", "hilbert-trans"), stride=(2, 2),
    enc_depths=ENC_DEPTHS, enc_channels=ENC_CHANNELS, enc_num_head=(2, 2, 4), enc_patch_size=(16, 16, 16),
    dec_depths=(3, 3), dec_channels=(96, 96), dec_num_head=(6, 6), dec_patch_size=(1024, 1024), mlp_ratio=4,
    qkv_bias=True, qk_scale=None, attn_drop=0.0, proj_drop=0.0, drop_path=0.3, layer_scale=1e-5, pre_norm=True,
    shuffle_orders=True, enable_rpe=False, enable_flash=True, upcast_attention=False, upcast_softmax=False,
    traceable=True, mask_token=True, enc_mode=True, freeze_encoder=False,
)  # fmt: skip


def _block_keys(prefix: str, c: int, layer_scale: bool) -> dict[str, list[int]]:
    keys = {
        "cpe.0.weight": [c, 3, 3, 3, c],  # spconv SubMConv3d: [out, kD, kH, kW, in]
        "cpe.0.bias": [c],
        "cpe.1.weight": [c, c],
        "cpe.1.bias": [c],
        "cpe.2.weight": [c],
        "cpe.2.bias": [c],
        "norm1.0.weight": [c],
        "norm1.0.bias": [c],
        "attn.qkv.weight": [3 * c, c],
        "attn.qkv.bias": [3 * c],
        "attn.proj.weight": [c, c],
        "attn.proj.bias": [c],
        "norm2.0.weight": [c],
        "norm2.0.bias": [c],
        "mlp.0.fc1.weight": [4 * c, c],
        "mlp.0.fc1.bias": [4 * c],
        "mlp.0.fc2.weight": [c, 4 * c],
        "mlp.0.fc2.bias": [c],
    }
    if layer_scale:
        keys.update({"ls1.0.gamma": [c], "ls2.0.gamma": [c]})
    return {prefix + k: v for k, v in keys.items()}


def m2_layout(decoder: bool = False, layer_scale: bool = True, mask_token: bool = True) -> dict[str, list[int]]:
    """Every key and shape of a tiny PT-v3m2 (LayerNorm everywhere outside the blocks: weight and bias only)."""
    c0 = ENC_CHANNELS[0]
    keys = {
        "embedding.stem.linear.weight": [c0, IN_CHANNELS],
        "embedding.stem.linear.bias": [c0],
        "embedding.stem.norm.weight": [c0],
        "embedding.stem.norm.bias": [c0],
    }
    if mask_token:
        keys["embedding.mask_token"] = [1, c0]
    for s, (c, depth) in enumerate(zip(ENC_CHANNELS, ENC_DEPTHS)):
        if s > 0:
            keys |= {
                f"enc.enc{s}.down.proj.weight": [c, ENC_CHANNELS[s - 1]],
                f"enc.enc{s}.down.proj.bias": [c],
                f"enc.enc{s}.down.norm.0.weight": [c],
                f"enc.enc{s}.down.norm.0.bias": [c],
            }
        for i in range(depth):
            keys |= _block_keys(f"enc.enc{s}.block{i}.", c, layer_scale)
    if decoder:
        widths = list(DEC_CHANNELS) + [ENC_CHANNELS[-1]]
        for s in range(len(DEC_CHANNELS)):
            c = widths[s]
            keys |= {
                f"dec.dec{s}.up.proj.0.weight": [c, widths[s + 1]],
                f"dec.dec{s}.up.proj.0.bias": [c],
                f"dec.dec{s}.up.proj.1.weight": [c],
                f"dec.dec{s}.up.proj.1.bias": [c],
                f"dec.dec{s}.up.proj_skip.0.weight": [c, ENC_CHANNELS[s]],
                f"dec.dec{s}.up.proj_skip.0.bias": [c],
                f"dec.dec{s}.up.proj_skip.1.weight": [c],
                f"dec.dec{s}.up.proj_skip.1.bias": [c],
            }
            for i in range(DEC_DEPTHS[s]):
                keys |= _block_keys(f"dec.dec{s}.block{i}.", c, layer_scale)
    return keys


def m2_state_dict(seed: int = 0, **kwargs) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: 0.2 * torch.randn(shape, generator=g) for k, shape in m2_layout(**kwargs).items()}


def _scenes(n=(70, 50)):
    """Two scenes of points in distinct 2 cm voxels (Sonata's inputs are grid-sampled: one point per voxel)."""
    g = torch.Generator().manual_seed(3)
    coords, offsets = [], []
    for count in n:
        cells = torch.randperm(12**3 - 1, generator=g)[: count - 1] + 1
        grid = torch.stack([cells // 144, cells // 12 % 12, cells % 12], dim=1).float()
        # cell centres, and a point at the origin: the scene minimum, so that every point is half a cell off a face
        coords.append(torch.cat([torch.zeros(1, 3), (grid + 0.5) * 0.02]))
        offsets.append(sum(n[: len(offsets) + 1]))
    return torch.cat(coords), torch.randn(sum(n), IN_CHANNELS, generator=g), torch.tensor(offsets)


def test_sonata_release_converts_loads_strictly_and_runs():
    sd = m2_state_dict()
    model, dropped = import_pointcept_state_dict(sd, "PT-v3m2", checkpoint_config=SONATA_CONFIG)
    config = model.config
    assert dropped == []
    assert (config.enc_num_head, config.enc_patch_size, config.order) == (
        [2, 2, 4], [16, 16, 16], ["z", "z-trans", "hilbert", "hilbert-trans"]
    )  # fmt: skip
    assert (config.stem_type, config.norm_type, config.pooling_type, config.serialization_depth) == (
        "linear", "layer", "grid", None
    )  # fmt: skip
    assert config.enc_mode and config.mask_token and config.layer_scale == 1e-5 and not config.legacy_unpooling_cpe
    assert config.dec_depths == [] and len(model.dec) == 0
    # every tensor arrived under its name, and goes back to Pointcept's names bit for bit
    back = export_pointcept_state_dict(model)
    assert set(back) == set(sd)
    assert all(torch.equal(back[k], v) for k, v in sd.items())
    assert torch.equal(model.enc[1].blocks[1].ls2.gamma, sd["enc.enc1.block1.ls2.0.gamma"])
    assert torch.equal(model.stem_linear.weight, sd["embedding.stem.linear.weight"])
    coords, feats, offsets = _scenes()
    with torch.no_grad():
        out = model(coords, feats, offsets)
    # every stage concatenated (Pointcept's DefaultSegmentorV2): 16 + 32 + 48 channels per input voxel
    assert out.last_hidden_state.shape == (120, 96) == (120, config.hidden_size)
    assert torch.isfinite(out.last_hidden_state).all()
    assert out.point_to_token.shape == (120,) and out.pooler_output.shape == (2, 96)


def test_prefixes_and_pretraining_checkpoints():
    sd = m2_state_dict()
    # a Sonata pre-training run: the student backbone is kept (Pointcept's probing configs load it)
    run = {f"module.student.backbone.{k}": v for k, v in sd.items()}
    run |= {f"module.teacher.backbone.{k}": torch.zeros_like(v) for k, v in sd.items()}
    run["module.student.mask_head.mlp.0.weight"] = torch.zeros(8, 96)
    with pytest.warns(UserWarning, match="no checkpoint config"):
        model, dropped = import_pointcept_state_dict(run, "auto", {"enc_num_head": [2, 2, 4]})
    assert len(dropped) == len(sd) + 1 and all(k.startswith(("teacher.", "student.mask_head")) for k in dropped)
    assert torch.equal(model.enc[0].blocks[0].attn.qkv.weight, sd["enc.enc0.block0.attn.qkv.weight"])
    # without a config: heads = channels / 16 unless overridden, patch 1024, Sonata's four orders
    assert model.config.enc_patch_size == [1024] * 3 and len(model.config.order) == 4
    # a segmentor fine-tuned in Pointcept, decoder included
    seg = {f"backbone.{k}": v for k, v in m2_state_dict(decoder=True, mask_token=False).items()}
    seg["seg_head.weight"] = torch.zeros(20, 16)
    kwargs = {"enc_num_head": [1, 2, 3], "dec_num_head": [1, 2]}
    with pytest.warns(UserWarning, match="no checkpoint config"):
        model, dropped = import_pointcept_state_dict(seg, "PT-v3m2", kwargs)
    assert dropped == ["seg_head.weight"] and not model.config.enc_mode and model.mask_token is None
    coords, feats, offsets = _scenes()
    with torch.no_grad():
        assert model(coords, feats, offsets).last_hidden_state.shape == (120, DEC_CHANNELS[0])


def test_bad_state_dicts_and_configs_fail_naming_the_key():
    kw = dict(checkpoint_config=SONATA_CONFIG)
    sd = m2_state_dict()
    sd["enc.enc1.block0.attn.qkv.weight"] = torch.zeros(96, 31)
    with pytest.raises(CheckpointConversionError, match=r"enc\.enc1\.block0\.attn\.qkv\.weight: \[96, 31\]"):
        import_pointcept_state_dict(sd, "PT-v3m2", **kw)
    sd = m2_state_dict() | {"enc.enc0.block0.attn.rpe.rpe_table": torch.zeros(3, 1)}
    with pytest.raises(CheckpointConversionError, match=r"unmapped key\(s\): enc\.enc0\.block0\.attn\.rpe\.rpe"):
        import_pointcept_state_dict(sd, "PT-v3m2", **kw)
    sd = m2_state_dict()
    del sd["enc.enc2.down.norm.0.bias"]
    with pytest.raises(CheckpointConversionError, match=r"missing key\(s\): enc\.2\.pooling\.norm\.bias"):
        import_pointcept_state_dict(sd, "PT-v3m2", **kw)
    sd = m2_state_dict()
    with pytest.raises(CheckpointConversionError, match=r"config says enc_channels=\[16, 32, 64\]"):
        import_pointcept_state_dict(sd, "PT-v3m2", checkpoint_config=SONATA_CONFIG | {"enc_channels": (16, 32, 64)})
    with pytest.raises(CheckpointConversionError, match="`enable_rpe=True`.*no relative position"):
        import_pointcept_state_dict(sd, "PT-v3m2", checkpoint_config=SONATA_CONFIG | {"enable_rpe": True})
    with pytest.raises(CheckpointConversionError, match=r"unknown PointTransformerV3 config entries: \['pdnorm_x'\]"):
        import_pointcept_state_dict(sd, "PT-v3m2", checkpoint_config=SONATA_CONFIG | {"pdnorm_x": 1})
    with pytest.raises(CheckpointConversionError, match="layer_scale=None but its state dict has LayerScale"):
        import_pointcept_state_dict(sd, "PT-v3m2", checkpoint_config=SONATA_CONFIG | {"layer_scale": None})
    with pytest.raises(CheckpointConversionError, match="Sonata PT-v3m2 state dict .* arch='PT-v3m2'"):
        import_pointcept_state_dict(sd, "PT-v3m1")
    with pytest.raises(CheckpointConversionError, match="no Pointcept backbone stem"):
        import_pointcept_state_dict({"seg_head.weight": torch.zeros(20, 96)}, "auto")


def test_script_converts_a_sonata_release_file(tmp_path):
    script = load_script("convert_checkpoint")
    sd = m2_state_dict(seed=1)
    torch.save({"config": SONATA_CONFIG, "state_dict": sd}, tmp_path / "sonata.pth")  # Sonata's released layout
    script.main(
        ["--from", "pointcept", "--checkpoint", str(tmp_path / "sonata.pth"), "--backbone", "ptv3",
         "--output_dir", str(tmp_path / "out")]
    )  # fmt: skip
    record = json.loads((tmp_path / "out" / "conversion.json").read_text())
    assert record["pointcept_arch"] == "PT-v3m2" and record["dropped_keys"] == 0
    assert record["num_parameters"] == sum(v.numel() for v in sd.values())
    model = PTv3Model.from_pretrained(tmp_path / "out", enc_upcast_stages=2).eval()
    assert model.config.enc_num_head == [2, 2, 4] and model.config.hidden_size == 32 + 48
    assert torch.equal(model.enc[2].pooling.proj.weight, sd["enc.enc2.down.proj.weight"])
    # linear probing as Pointcept's DefaultSegmentorV2: one Linear on the upcast features (every stage: 96 channels)
    probe = PTv3ForPointCloudSegmentation.from_pretrained(tmp_path / "out", num_labels=5).eval()
    assert probe.segmenter.in_features == 96
    assert torch.equal(probe.backbone.stem_linear.weight, sd["embedding.stem.linear.weight"])
    coords, feats, offsets = _scenes()
    with torch.no_grad():
        assert probe(coords=coords, features=feats, offsets=offsets).logits.shape == (120, 5)
