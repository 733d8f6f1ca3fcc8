"""Downstream converters on small fake trees in the real layouts (ModelNet40 txt and h5, ScanObjectNN h5,
ShapeNetPart, Pointcept S3DIS / ScanNet): rows, integer ClassLabel labels, and bad items reported with their id."""

from __future__ import annotations

import json
import os

import datasets
import numpy as np
import pytest

from unipre3d_hf.data.downstream import (
    SCANNET200_CLASSES,
    SCANOBJECTNN_CLASSES,
    SHAPENET_PART_CATEGORY_PARTS,
    convert_modelnet40,
    convert_pointcept_scenes,
    convert_scanobjectnn,
    convert_shapenet_part,
)

NAMES40 = [f"class{i}" for i in range(38)] + ["night_stand", "airplane"]


def load(path, split):
    return datasets.load_dataset(str(path), split=split)


def test_modelnet40_txt_layout(tmp_path):
    root = tmp_path / "modelnet40_normal_resampled"
    root.mkdir()
    (root / "modelnet40_shape_names.txt").write_text("\n".join(NAMES40) + "\n")
    rng = np.random.default_rng(0)
    for name in ("airplane_0001", "night_stand_0002", "night_stand_0003"):
        category = name.rsplit("_", 1)[0]
        (root / category).mkdir(exist_ok=True)
        np.savetxt(root / category / f"{name}.txt", rng.normal(size=(20, 6)), delimiter=",", fmt="%.6f")
    (root / "night_stand" / "night_stand_0003.txt").write_text("1,2,3\n")  # a broken file: 3 columns
    (root / "modelnet40_train.txt").write_text("airplane_0001\nnight_stand_0002\nnight_stand_0003\nchair_0009\n")
    (root / "modelnet40_test.txt").write_text("night_stand_0002\n")
    summary = convert_modelnet40(str(root), str(tmp_path / "out"), max_points=16, show_progress=False)
    assert summary.rows_written == {"train": 2, "test": 1}
    assert sorted(i for i, _ in summary.skipped) == ["chair_0009", "night_stand_0003"]
    train = load(tmp_path / "out", "train")
    assert train.features["label"].names == NAMES40 and train["label"] == [39, 38]
    assert np.asarray(train[0]["points"]).shape == (16, 3) and np.asarray(train[0]["normals"]).shape == (16, 3)
    assert "datasets.load_dataset" in (tmp_path / "out" / "README.md").read_text()
    with pytest.raises(FileExistsError, match="overwrite"):
        convert_modelnet40(str(root), str(tmp_path / "out"), show_progress=False)


def _h5(path, data, labels, **extra):
    import h5py

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with h5py.File(path, "w") as f:
        f["data"], f["label"] = data, labels
        for key, value in extra.items():
            f[key] = value


def test_modelnet40_h5_layout_and_an_unreadable_file(tmp_path):
    pytest.importorskip("h5py")
    root = tmp_path / "modelnet40_ply_hdf5_2048"
    rng = np.random.default_rng(1)
    data = rng.normal(size=(3, 32, 3)).astype(np.float32)
    data[2, 0, 0] = np.nan
    _h5(str(root / "ply_data_train0.h5"), data, np.array([[5], [39], [1]], np.uint8))
    _h5(str(root / "ply_data_test0.h5"), data[:1], np.array([[7]], np.uint8))
    (root / "ply_data_train1.h5").write_bytes(b"not an h5 file")
    (root / "shape_names.txt").write_text("\n".join(NAMES40))
    summary = convert_modelnet40(str(root), str(tmp_path / "out"), show_progress=False)
    assert summary.rows_written == {"train": 2, "test": 1}
    assert [i for i, _ in summary.skipped] == ["train/ply_data_train0/00002", "train/ply_data_train1"]
    assert "non-finite" in summary.skipped[0][1]
    train = load(tmp_path / "out", "train")
    assert train["label"] == [5, 39] and np.asarray(train[1]["points"]).shape == (32, 3)


def test_scanobjectnn_variants(tmp_path):
    pytest.importorskip("h5py")
    rng = np.random.default_rng(2)
    base = tmp_path / "h5_files"
    for folder, suffix, n in (("main_split", "_augmentedrot_scale75", 3), ("main_split_nobg", "", 2)):
        for tag in ("training", "test"):
            labels = np.array([0, 14, 15][:n], np.int64)  # 15 is out of range
            _h5(str(base / folder / f"{tag}_objectdataset{suffix}.h5"), rng.normal(size=(n, 16, 3)), labels,
                mask=np.zeros((n, 16)))  # fmt: skip
    summary = convert_scanobjectnn(str(tmp_path), str(tmp_path / "pb"), "PB_T50_RS", show_progress=False)
    assert summary.rows_written == {"train": 2, "test": 2} and len(summary.skipped) == 2
    assert "must lie in [0, 15)" in summary.skipped[0][1]
    ds = load(tmp_path / "pb", "test")
    assert ds.features["label"].names == list(SCANOBJECTNN_CLASSES) and ds["label"] == [0, 14]
    assert np.asarray(ds[0]["normals"]).shape == (0,) or len(ds[0]["normals"]) == 0
    summary = convert_scanobjectnn(str(base), str(tmp_path / "only"), "OBJ_ONLY", show_progress=False)
    assert summary.rows_written == {"train": 2, "test": 2} and not summary.skipped
    with pytest.raises(FileNotFoundError, match="OBJ_BG"):
        convert_scanobjectnn(str(base), str(tmp_path / "bg"), "OBJ_BG", show_progress=False)
    with pytest.raises(ValueError, match="`variant` must be one of"):
        convert_scanobjectnn(str(base), str(tmp_path / "bg"), "PB_T25", show_progress=False)


def test_shapenet_part_layout_checks_parts_per_category(tmp_path):
    root = tmp_path / "shapenetcore_partanno_segmentation_benchmark_v0_normal"
    (root / "train_test_split").mkdir(parents=True)
    (root / "synsetoffset2category.txt").write_text("Airplane\t02691156\nTable\t04379243\n")
    rng = np.random.default_rng(3)

    def shape(synset, token, parts):
        (root / synset).mkdir(exist_ok=True)
        table = np.concatenate([rng.normal(size=(len(parts), 6)), np.asarray(parts, float)[:, None]], axis=1)
        np.savetxt(root / synset / f"{token}.txt", table, fmt="%.6f")
        return f"shape_data/{synset}/{token}"

    train = [shape("02691156", "a1", [0, 1, 3, 3]), shape("04379243", "t1", [47, 49, 48]),
             shape("04379243", "bad", [47, 2])]  # fmt: skip
    for tag, entries in (("train", train), ("val", [shape("02691156", "a2", [2, 2])]), ("test", [train[0]])):
        (root / "train_test_split" / f"shuffled_{tag}_file_list.json").write_text(json.dumps(entries))
    summary = convert_shapenet_part(str(root), str(tmp_path / "out"), show_progress=False)
    assert summary.rows_written == {"train": 2, "validation": 1, "test": 1}
    assert summary.skipped[0][0] == "04379243/bad" and "do not belong to Table" in summary.skipped[0][1]
    ds = load(tmp_path / "out", "train")
    assert ds["category"] == [0, 15] and ds[1]["parts"] == [47, 49, 48]
    assert ds.features["category"].names == list(SHAPENET_PART_CATEGORY_PARTS)


def _scene(folder, n, segment_name, labels, rng, normals=True):
    os.makedirs(folder, exist_ok=True)
    np.save(os.path.join(folder, "coord.npy"), rng.normal(size=(n, 3)).astype(np.float32))
    np.save(os.path.join(folder, "color.npy"), rng.integers(0, 256, (n, 3)).astype(np.float32))
    if normals:
        np.save(os.path.join(folder, "normal.npy"), rng.normal(size=(n, 3)).astype(np.float32))
    np.save(os.path.join(folder, f"{segment_name}.npy"), np.asarray(labels)[:, None])
    np.save(os.path.join(folder, "instance.npy"), np.arange(n))


def test_pointcept_s3dis_and_scannet_layouts(tmp_path):
    rng = np.random.default_rng(4)
    s3dis = tmp_path / "s3dis"
    _scene(str(s3dis / "Area_1" / "office_1"), 5, "segment", [0, 1, 12, -1, 3], rng, normals=False)
    _scene(str(s3dis / "Area_5" / "hallway_2"), 4, "segment", [2, 2, 2, 2], rng)
    _scene(str(s3dis / "Area_2" / "bad_room"), 4, "segment", [0, 13, 0, 0], rng)
    (s3dis / "Area_2" / "empty_room").mkdir()
    np.save(s3dis / "Area_2" / "empty_room" / "coord.npy", np.zeros((3, 3)))
    open(s3dis / "Area_2" / "empty_room" / "segment.npy", "wb").close()  # a zero-byte file
    summary = convert_pointcept_scenes(str(s3dis), str(tmp_path / "s3dis-out"), "s3dis", show_progress=False)
    assert summary.rows_written == {"train": 1, "validation": 1}
    assert [i for i, _ in summary.skipped] == ["Area_2/bad_room", "Area_2/empty_room"]
    row = load(tmp_path / "s3dis-out", "train")[0]
    assert row["id"] == "Area_1/office_1" and row["segment"] == [0, 1, 12, -1, 3] and len(row["normals"]) == 0
    assert np.asarray(row["colors"]).dtype == np.int64 and np.asarray(row["colors"]).max() <= 255

    scannet = tmp_path / "scannet"
    _scene(str(scannet / "train" / "scene0000_00"), 6, "segment200", [0, 199, -1, 5, 5, 5], rng)
    _scene(str(scannet / "val" / "scene0011_00"), 3, "segment200", [1, 2, 3], rng)
    summary = convert_pointcept_scenes(str(scannet), str(tmp_path / "sn200"), "scannet200", show_progress=False)
    assert summary.rows_written == {"train": 1, "validation": 1} and not summary.skipped
    ds = load(tmp_path / "sn200", "train")
    assert ds.features["segment"].feature.names == list(SCANNET200_CLASSES) and len(SCANNET200_CLASSES) == 200
    assert ds[0]["segment"] == [0, 199, -1, 5, 5, 5] and ds[0]["instance"] == list(range(6))
    with pytest.raises(ValueError, match=r"every ScanNet20 semantic segmentation item failed(.|\n)*segment20.npy"):
        convert_pointcept_scenes(str(scannet), str(tmp_path / "sn20"), "scannet20", show_progress=False)
