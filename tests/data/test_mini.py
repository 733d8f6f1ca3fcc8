import os

import numpy as np
import pytest

pytest.importorskip("pybullet")

from unipre3d_hf.data import (  # noqa: E402
    ObjectPretrainingCollator,
    ScenePretrainingCollator,
    build_objects_mini,
    build_scenes_mini,
    load_pretraining_dataset,
)
from unipre3d_hf.rendering import Cameras  # noqa: E402


def _rows(path, split="train"):
    return list(load_pretraining_dataset(path, split=split))


def test_objects_mini_is_deterministic_small_and_consistent(tmp_path):
    kwargs = dict(num_objects=2, poses=2, views=5, image_size=64, num_points=128, seed=3, show_progress=False)
    first = build_objects_mini(str(tmp_path / "a"), **kwargs)
    build_objects_mini(str(tmp_path / "b"), **kwargs)
    assert first.rows_written == {"train": 2, "validation": 2} and first.bytes_on_disk < 1_000_000
    a, b = _rows(str(tmp_path / "a")), _rows(str(tmp_path / "b"))
    for ra, rb in zip(a, b):
        assert ra["id"] == rb["id"] and ra["images"][2]["bytes"] == rb["images"][2]["bytes"]
        np.testing.assert_array_equal(ra["points"], rb["points"])
    row = a[0]
    assert row["points"].shape == (128, 3) and row["colors"].shape == (128, 3) and row["colors"].max() > 0
    # surface points project inside the rendered silhouette (alpha) of every view
    import torch

    from unipre3d_hf.data import decode_image

    cams = Cameras.from_camera_to_world(
        torch.tensor(row["camera_to_world"])[None], torch.tensor(row["intrinsics"])[None], 64, 64
    )
    uv = cams.project(torch.tensor(row["points"])[None])[0][0].floor().long().clamp(0, 63).numpy()
    alpha = np.stack([np.asarray(decode_image(im))[..., 3] for im in row["images"]])
    hits = alpha[np.arange(5)[:, None], uv[..., 1], uv[..., 0]] > 0
    assert hits.mean() > 0.8
    batch = ObjectPretrainingCollator(num_points=64, point_sampling="first", seed=0)(a)
    assert batch["target_images"].shape == (2, 4, 3, 64, 64)
    # the collated batch is what the object backbones take
    from unipre3d_hf import PointTransformerConfig, PointTransformerModel

    config = PointTransformerConfig(
        num_groups=16, group_size=8, encoder_dims=32, hidden_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    with torch.no_grad():
        out = PointTransformerModel(config).eval()(batch["points"])
    assert out.last_hidden_state.shape == (2, 16, 32) and torch.isfinite(out.last_hidden_state).all()


def test_scenes_mini_is_deterministic_small_and_labelled(tmp_path):
    kwargs = dict(num_scenes=1, frames=8, width=32, height=24, voxel_size=0.05, seed=1, show_progress=False)
    first = build_scenes_mini(str(tmp_path / "a"), **kwargs)
    build_scenes_mini(str(tmp_path / "b"), **kwargs)
    assert first.rows_written == {"train": 1} and first.bytes_on_disk < 2_000_000
    (ra,), (rb,) = _rows(str(tmp_path / "a")), _rows(str(tmp_path / "b"))
    np.testing.assert_array_equal(ra["coords"], rb["coords"])
    assert ra["depths"][3]["bytes"] == rb["depths"][3]["bytes"]
    assert len(ra["images"]) == 8 and ra["camera_to_world"].shape == (8, 4, 4)
    np.testing.assert_allclose(ra["intrinsics"][0], [577.870605 / 20, 577.870605 / 20, 16, 12], rtol=1e-5)
    assert set(np.unique(ra["segment"])) >= {0, 1}  # walls and floor are seen
    np.testing.assert_allclose(np.linalg.norm(ra["normals"], axis=1), 1.0, atol=1e-4)
    assert os.path.isfile(tmp_path / "a" / "README.md")
    batch = ScenePretrainingCollator(seed=0)([ra, rb])
    assert batch["reference_depths"].shape == (2, 8, 24, 32) and batch["reference_depths"].max() > 0.5
    # the packed batch is what the scene backbones take
    import torch

    from unipre3d_hf import SparseUNetConfig, SparseUNetModel

    config = SparseUNetConfig(base_channels=8, channels=[8, 8, 8, 8, 8, 8, 8, 8], layers=[1] * 8, out_channels=8)
    with torch.no_grad():
        out = SparseUNetModel(config).eval()(batch["coords"], batch["features"], batch["offsets"])
    assert out.pooler_output.shape == (2, 8) and torch.isfinite(out.last_hidden_state).all()
    assert out.point_to_token.shape == (batch["coords"].shape[0],)
