"""A Sonata-sized PT-v3m2 encoder (the released configuration, random weights) on CUDA: the sparse-conv and attention
backends agree, and a PT-v3m2 export / import round trip computes the same features. Skipped without CUDA.

Set ``UNIPRE3D_REPORT`` to a file path to append the measured differences as JSON lines.
"""

import unittest

import torch

from unipre3d_hf import PTv3Config, PTv3Model
from unipre3d_hf.conversion.pointcept import PTV3M2_BEHAVIOUR, export_pointcept_state_dict, import_pointcept_state_dict
from unipre3d_hf.testing_utils import require_cuda, write_report
from unipre3d_hf.utils import import_utils

from ..ops.test_scene_backbones_gpu import _usable, batch_of_rooms, rel

# Sonata's released backbone (facebookresearch/sonata `PointTransformerV3` defaults with `enc_mode=True`, the orders of
# its configs); 108,461,328 parameters
SONATA_KWARGS = dict(
    in_channels=9, order=("z", "z-trans", "hilbert", "hilbert-trans"), enc_depths=(3, 3, 3, 12, 3),
    enc_channels=(48, 96, 192, 384, 512), enc_num_head=(3, 6, 12, 24, 32), enc_patch_size=(1024,) * 5,
    dec_depths=(), dec_channels=(), dec_num_head=(), dec_patch_size=(), enc_mode=True, **PTV3M2_BEHAVIOUR,
)  # fmt: skip


@require_cuda
class SonataGpu(unittest.TestCase):
    def test_backends_and_round_trip(self):
        coords, feats, offsets = batch_of_rooms([60_000, 40_000])
        feats = torch.cat([feats, feats[:, :3]], dim=1)  # 9 input channels
        torch.manual_seed(0)
        model = PTv3Model(PTv3Config(**SONATA_KWARGS, sparse_conv_backend="torch", attention_backend="torch"))
        model = model.cuda().eval()
        self.assertEqual(sum(p.numel() for p in model.parameters()), 108_461_328)
        with torch.no_grad():
            ref = model(coords, feats, offsets).last_hidden_state
        self.assertEqual(ref.shape[1], 1232)
        self.assertTrue(torch.isfinite(ref).all())
        backends = [("sparse_conv_backend", "spconv")] if import_utils.is_spconv_available() else []
        backends += [("attention_backend", b) for b in ("flash_attn", "torch_varlen") if _usable(b)]
        for field, value in backends:
            setattr(model.config, field, value)
            with torch.no_grad():
                out = model(coords, feats, offsets).last_hidden_state
            setattr(model.config, field, "torch")
            entry = write_report(
                {"test": "sonata_backends", field: value, "voxels": out.shape[0], "rel_l2": rel(out, ref)}
            )
            # the varlen kernels run in fp16 (Sonata's flash path too); spconv differs by summation order only
            self.assertLess(entry["rel_l2"], 2e-2 if field == "attention_backend" else 1e-4)
        exported = {k: v.cpu() for k, v in export_pointcept_state_dict(model).items()}
        config = {
            "enc_num_head": SONATA_KWARGS["enc_num_head"],
            "enc_patch_size": [1024] * 5,
            "order": ["z", "z-trans", "hilbert", "hilbert-trans"],
            "enc_mode": True,
            "in_channels": 9,
        }
        back, dropped = import_pointcept_state_dict(exported, "PT-v3m2", checkpoint_config=config)
        back.config.sparse_conv_backend = back.config.attention_backend = "torch"
        with torch.no_grad():
            out = back.cuda()(coords, feats, offsets).last_hidden_state
        self.assertEqual(dropped, [])
        torch.testing.assert_close(out, ref, rtol=0, atol=0)
