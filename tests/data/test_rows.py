import datasets
import numpy as np
import pyarrow as pa
import pytest
import torch

from unipre3d_hf.data import (
    OBJECT_FEATURES,
    SCENE_FEATURES,
    EpochSampler,
    NumpyRows,
    ObjectPretrainingCollator,
    ScenePretrainingCollator,
    SceneViewSampler,
    SeededRows,
    arrow_value_to_numpy,
)
from unipre3d_hf.data.schemas import raw_features

from .helpers import object_row, scene_row


def _assert_rows_equal(fast: dict, slow: dict) -> None:
    assert fast.keys() == slow.keys()
    for key, value in slow.items():
        if isinstance(fast[key], np.ndarray):
            np.testing.assert_array_equal(fast[key], np.asarray(value, dtype=fast[key].dtype), err_msg=key)
        else:
            assert fast[key] == value, key


def test_numpy_rows_equal_python_rows_for_objects_and_scenes_and_honour_index_mappings():
    # images left encoded, as load_pretraining_dataset and load_mini_dataset give them (the collators decode)
    objects = datasets.Dataset.from_list([object_row(f"o{i}", views=5 + i, seed=i) for i in range(4)],
                                         features=raw_features(OBJECT_FEATURES))  # fmt: skip
    scenes = datasets.Dataset.from_list([scene_row(f"s{i}", seed=i) for i in range(2)],
                                        features=raw_features(SCENE_FEATURES))  # fmt: skip
    for ds in (objects, scenes, objects.select([3, 1]), objects.shuffle(seed=0)):
        fast, slow = NumpyRows(ds), ds.with_format(None)
        assert len(fast) == len(slow)
        for i in range(len(ds)):
            _assert_rows_equal(fast[i], slow[i])
    row = NumpyRows(objects)[2]
    assert row["points"].shape == (50, 3) and row["points"].dtype == np.float32 and row["colors"].dtype == np.uint8
    assert row["camera_to_world"].shape == (7, 4, 4) and row["intrinsics"].shape == (7, 4)
    assert isinstance(row["images"][0]["bytes"], bytes) and row["id"] == "o2" and row["width"] == 16
    scene = NumpyRows(scenes)[1]
    assert (
        scene["coords"].shape == (300, 3) and scene["segment"].shape == (300,) and scene["frame_ids"].dtype == np.int32
    )

    # the collators give the same batch from either kind of row (fresh collators: the same random views)
    def same_batch(make_collator, ds, indices):
        a = make_collator()([NumpyRows(ds)[i] for i in indices])
        b = make_collator()([ds.with_format(None)[i] for i in indices])
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    same_batch(lambda: ObjectPretrainingCollator(num_points=32, point_sampling="first", seed=0), objects, [0, 2])
    same_batch(lambda: ScenePretrainingCollator(SceneViewSampler(num_reference=2), seed=0), scenes, [0, 1])


def test_arrow_value_to_numpy_shapes_and_fallbacks():
    fixed = pa.array([[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]], type=pa.list_(pa.list_(pa.float32(), 3)))
    out = arrow_value_to_numpy(fixed)
    assert out.shape == (2, 3) and out.dtype == np.float32 and out[1, 2] == 6
    ragged = pa.array([[[1.0], [2.0, 3.0]]], type=pa.list_(pa.list_(pa.float32())))
    assert arrow_value_to_numpy(ragged) == [[1.0], [2.0, 3.0]]  # inner lists of different lengths: Python lists
    with_null = pa.array([[1, None, 3]], type=pa.list_(pa.int32()))
    assert arrow_value_to_numpy(with_null) == [1, None, 3]  # a missing value is not silently turned into a number
    assert arrow_value_to_numpy(pa.array(["abc"])) == "abc"
    with pytest.raises(ValueError, match="one row"):
        arrow_value_to_numpy(pa.array([1, 2]))
    with pytest.raises(TypeError, match="map-style"):
        NumpyRows([1, 2, 3])
    with pytest.raises(TypeError, match="one integer index"):
        NumpyRows(datasets.Dataset.from_list([{"a": 1}]))[[0]]


def test_epoch_sampler_repeats_rows_and_seeded_rows_make_samples_independent_of_their_batch():
    sampler = EpochSampler(num_rows=5, repeats=3, seed=7)
    keys = list(sampler)
    assert len(keys) == len(sampler) == 15 and keys == list(sampler)  # deterministic
    assert sorted(k % 5 for k in keys) == sorted(list(range(5)) * 3)  # each row 3 times per epoch
    assert sorted(k // 5 for k in keys) == list(range(15))  # draws 0..14: one seed each
    sampler.set_epoch(1)
    assert sorted(k // 5 for k in sampler) == list(range(15, 30)) and [k % 5 for k in sampler] != [k % 5 for k in keys]
    with pytest.raises(ValueError, match="num_rows >= 1"):
        EpochSampler(0)

    objects = datasets.Dataset.from_list([object_row(f"o{i}", views=8, seed=i) for i in range(3)],
                                         features=raw_features(OBJECT_FEATURES))  # fmt: skip
    rows = SeededRows(NumpyRows(objects), seed=1)
    assert rows[7]["id"] == "o1" and rows[7]["__sample_seed__"] == (1, 2)
    # a sample's views and rotation depend on its seed only: alone, or second in another batch, it is the same
    collate = ObjectPretrainingCollator(num_points=32, point_sampling="random")
    alone, paired = collate([rows[7]]), collate([rows[3], rows[7]])
    for key in ("points", "reference_c2w", "target_c2w", "target_view_index"):
        assert torch.equal(alone[key][0], paired[key][1]), key
    other_draw = collate([rows[10]])  # the same row at another draw: other views or rotation
    assert not torch.equal(alone["target_c2w"][0], other_draw["target_c2w"][0])
