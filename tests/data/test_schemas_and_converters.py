import math
import os

import datasets
import numpy as np
import pytest

from unipre3d_hf.data import (
    OBJECT_FEATURES,
    SCENE_FEATURES,
    ShardedParquetWriter,
    convert_scannet,
    convert_shapenet,
    load_pretraining_dataset,
    shapenet_split,
    write_dataset_card,
)

from .helpers import make_scannet_tree, make_shapenet_tree, object_row, scene_row


def _write(tmp_path, features, rows, rows_per_shard=2):
    writer = ShardedParquetWriter(str(tmp_path), "train", features, rows_per_shard=rows_per_shard)
    for row in rows:
        writer.write(row)
    paths = writer.close()
    write_dataset_card(str(tmp_path), features, {"train": writer.num_rows}, "test", "apache-2.0", "A test set.")
    return paths


def test_object_schema_round_trip_parquet_load_dataset_and_streaming(tmp_path):
    rows = [object_row(f"o{i}", views=3 + i, seed=i) for i in range(5)]
    paths = _write(tmp_path, OBJECT_FEATURES, rows)
    assert [os.path.basename(p) for p in paths] == [f"train-0000{i}-of-00003.parquet" for i in range(3)]
    ds = datasets.load_dataset(str(tmp_path), split="train")
    assert ds.features == OBJECT_FEATURES and len(ds) == 5
    back = ds.with_format("numpy")[4]
    np.testing.assert_array_equal(back["points"], rows[4]["points"])
    np.testing.assert_array_equal(back["camera_to_world"], rows[4]["camera_to_world"])
    assert back["camera_to_world"].shape == (7, 4, 4) and back["intrinsics"].dtype == np.float32
    assert len(back["images"]) == 7 and np.asarray(back["images"][0]).shape == (16, 16, 4)
    streamed = list(load_pretraining_dataset(str(tmp_path), streaming=True))
    assert [r["id"] for r in streamed] == [f"o{i}" for i in range(5)]
    assert streamed[2]["images"][0]["bytes"] == rows[2]["images"][0]["bytes"]  # left encoded for the collator
    card = open(tmp_path / "README.md").read()
    assert card.startswith("---\n") and "license: apache-2.0" in card and "camera_to_world" in card


def test_scene_schema_round_trip_keeps_16_bit_depth(tmp_path):
    rows = [scene_row("s0"), scene_row("s1", frames=9, seed=1)]
    _write(tmp_path, SCENE_FEATURES, rows)
    ds = load_pretraining_dataset(str(tmp_path))
    r = ds[1]
    np.testing.assert_array_equal(r["segment"], rows[1]["segment"])
    assert r["coords"].shape == (300, 3) and r["frame_ids"].tolist() == list(range(0, 180, 20))
    from unipre3d_hf.data import decode_image

    depth = np.asarray(decode_image(r["depths"][0]))
    assert depth.dtype == np.uint16 and depth.max() > 255


def test_writer_rejects_row_missing_a_field(tmp_path):
    row = object_row()
    del row["intrinsics"]
    with pytest.raises(ValueError, match="intrinsics"):
        ShardedParquetWriter(str(tmp_path), "train", OBJECT_FEATURES).write(row)


def test_shapenet_split_is_the_papers_75_20_5_with_seed_plus_one():
    ids = [f"c/{i:03d}" for i in range(100)]
    split = shapenet_split(ids, seed=42)
    assert [len(split[k]) for k in ("train", "validation", "test")] == [75, 20, 5]
    import random

    expected = sorted(ids)
    random.seed(43)
    random.shuffle(expected)
    assert split["train"] == expected[:75] and split["test"] == expected[95:]


def test_shapenet_converter_on_a_fake_tree(tmp_path):
    root = tmp_path / "shapenet"
    expected = make_shapenet_tree(str(root))
    summary = convert_shapenet(str(root), str(tmp_path / "out"), show_progress=False)
    assert sum(summary.rows_written.values()) == len(expected)
    reasons = dict(summary.skipped)
    assert "missing point file" in reasons["03001627/nopts"] and "metadata" in reasons["03001627/nometa"]
    assert reasons["04379243/fewgood"] == "too few good views: 4 < 5"
    assert len(summary.skipped) == 3  # every object is either written or skipped with its reason
    # every dropped view is reported with its object id, view and reason, and counted
    dropped = sorted(summary.dropped)
    assert summary.dropped_frames == len(dropped) == 7
    assert [(i, r.split(":")[0]) for i, r in dropped] == [
        ("03001627/badview", "view 03"),
        ("04379243/corrupt", "view 05"),
        ("04379243/corrupt", "view 06"),
        ("04379243/fewgood", "view 02"),
        ("04379243/fewgood", "view 05"),
        ("04379243/missingview", "view 07"),
        ("04379243/missingview", "view 09"),
    ]
    why = {(i, r.split(":")[0]): r for i, r in dropped}
    assert "non-finite camera" in why["03001627/badview", "view 03"]
    assert "unreadable image 05.png" in why["04379243/corrupt", "view 05"]
    assert "unreadable image 06.png" in why["04379243/corrupt", "view 06"]  # truncated: only a full decode sees it
    assert "missing image 07.png" in why["04379243/missingview", "view 07"]
    assert "missing image 09.png" in why["04379243/missingview", "view 09"]
    report = summary.format()
    assert "04379243/corrupt: view 05: unreadable image" in report and "too few good views" in report
    rows = {}
    for split in summary.rows_written:
        if summary.rows_written[split]:
            for r in load_pretraining_dataset(str(tmp_path / "out"), split=split):
                rows[r["id"]] = r
    assert {k: len(r["images"]) for k, r in rows.items()} == expected  # 36 views kept, view count from disk
    chair = rows["03001627/chair36"]
    fx = 0.5 * 20 / math.tan(math.atan(16 / 35))  # focal 35 mm, sensor 32 mm -> fov 49.13 deg
    np.testing.assert_allclose(chair["intrinsics"][0], [fx, fx, 10, 10], rtol=1e-5)
    raw = np.load(root / "pts" / "03001627-chair36.npy")
    np.testing.assert_allclose(chair["points"], np.stack([-raw[:, 2], raw[:, 0], -raw[:, 1]], 1), rtol=1e-6)
    assert "(x, y, z) -> (-z, x, -y)" in open(tmp_path / "out" / "README.md").read()


def test_scannet_converter_on_a_fake_tree(tmp_path):
    make_scannet_tree(str(tmp_path / "pts"), str(tmp_path / "frames"))
    summary = convert_scannet(
        str(tmp_path / "pts"), str(tmp_path / "frames"), str(tmp_path / "out"), show_progress=False
    )
    assert summary.rows_written == {"train": 1, "validation": 0}
    reasons = dict(summary.skipped)
    assert "too few good frames: 5 < 16" in reasons["scene0001_00"]
    assert "missing intrinsics" in reasons["scene0002_00"]
    assert summary.dropped_frames == 3  # the -inf poses
    assert [i for i, _ in summary.dropped] == ["scene0000_00"] * 3 and "non-finite pose" in summary.dropped[0][1]
    row = load_pretraining_dataset(str(tmp_path / "out"))[0]
    assert len(row["images"]) == 17 and 40 not in row["frame_ids"].tolist() and row["frame_ids"][0] == 0
    assert np.isfinite(row["camera_to_world"]).all()
    # depth intrinsics read from disk, scaled to 160x120 with +0.5 pixel centres
    np.testing.assert_allclose(row["intrinsics"][0], [577.87 / 4, 577.87 / 4, 80.0, 60.0], rtol=1e-5)
    from unipre3d_hf.data import decode_image

    depth = np.asarray(decode_image(row["depths"][0]))
    assert depth.shape == (120, 160) and (depth == 1500).all()
    color = np.asarray(decode_image(row["images"][0]))[..., 0].astype(float)
    # the white stripe at colour column 648 (the colour camera's centre) lands at the stored image's centre column
    assert abs(color.mean(0).argmax() - 79.5) <= 1.0


def test_a_rebuilt_or_copied_set_is_never_read_from_a_stale_cache(tmp_path):
    """Two folders of the same name and the same card but different rows (a copy trimmed elsewhere, a set rebuilt in
    place): ``datasets.load_dataset(<folder>)`` keys its cache by name and card and would return the first one's rows;
    the package's loaders read the files named, so each folder gives its own rows."""
    a, b = tmp_path / "a" / "objects", tmp_path / "b" / "objects"
    _write(a, OBJECT_FEATURES, [object_row("o0", views=3, seed=0)])
    _write(b, OBJECT_FEATURES, [object_row("o0", views=5, seed=1)])
    (b / "README.md").write_text((a / "README.md").read_text())  # the same card (sizes aside, it would be)
    assert len(load_pretraining_dataset(str(a))[0]["images"]) == 3
    assert len(load_pretraining_dataset(str(b))[0]["images"]) == 5
    with pytest.raises(ValueError, match="split 'validation' not found.*splits there: \\['train'\\]"):
        load_pretraining_dataset(str(a), split="validation")
