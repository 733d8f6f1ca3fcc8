import math

import numpy as np
import pytest
import torch

from unipre3d_hf.data import (
    CorruptSampleError,
    ObjectPretrainingCollator,
    ObjectViewSampler,
    SceneAugmentation,
    ScenePretrainingCollator,
    SceneViewSampler,
    apply_rigid_transform,
    farthest_point_sample,
    random_object_rotation,
)
from unipre3d_hf.data.transforms import farthest_point_order
from unipre3d_hf.rendering import Cameras

from .helpers import object_row, orbit_c2w, scene_row


def test_object_sampler_reference_is_one_of_four_distinct_supervision_views():
    sampler = ObjectViewSampler()
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(50):
        ref, sup = sampler(36, rng)
        assert ref.shape == (1,) and sup.shape == (4,) and len(set(sup.tolist())) == 4
        assert ref[0] == sup[0] and sup.max() < 36
        seen.update(sup.tolist())
    assert len(seen) > 30  # every view can be drawn, not just the first 24
    ref, sup = ObjectViewSampler(num_supervision=23, mode="eval")(24, rng)
    assert ref.tolist() == [0] and sup.tolist() == list(range(1, 24))
    ref, sup = ObjectViewSampler(reference_in_supervision=False)(6, rng)
    assert ref[0] not in sup
    with pytest.raises(ValueError, match="at least 4 views"):
        sampler(3, rng)


def test_scene_sampler_spreads_references_with_neighbours_within_five():
    sampler = SceneViewSampler()
    rng = np.random.default_rng(0)
    for num_frames in (16, 40, 300):
        chunks = np.array_split(np.arange(num_frames), 8)
        for _ in range(20):
            ref, sup = sampler(num_frames, rng)
            assert ref.shape == sup.shape == (8,)
            assert all(sup[i] in chunks[i] for i in range(8))
            gap = np.abs(ref - sup)
            assert (gap >= 1).all() and (gap <= 5).all() and (ref >= 0).all() and (ref < num_frames).all()
    ref, sup = SceneViewSampler(self_supervise=True)(40, rng)
    assert (ref == sup).all()
    with pytest.raises(ValueError, match="at least 8 frames"):
        sampler(7, rng)


def _project(points, c2w, intr, size):
    cams = Cameras.from_camera_to_world(torch.tensor(c2w)[None], torch.tensor(intr)[None], size, size)
    uv, z = cams.project(torch.tensor(points)[None])
    return uv[0].numpy(), z[0].numpy()


def test_object_augmentation_keeps_projections():
    rng = np.random.default_rng(1)
    points = rng.normal(0, 0.3, (200, 3)).astype(np.float32)
    c2w = orbit_c2w(5)
    intr = np.tile(np.array([140, 140, 64, 64], np.float32), (5, 1))
    rot = random_object_rotation(rng)
    assert np.allclose(rot @ rot.T, np.eye(3), atol=1e-9) and abs(np.linalg.det(rot) - 1) < 1e-9
    new_points, new_c2w = apply_rigid_transform(points, c2w, rot, np.array([0.1, -0.2, 0.3]))
    assert not np.allclose(new_points, points, atol=1e-2)
    uv0, z0 = _project(points, c2w, intr, 128)
    uv1, z1 = _project(new_points, new_c2w, intr, 128)
    np.testing.assert_allclose(uv1, uv0, atol=1e-3)
    np.testing.assert_allclose(z1, z0, atol=1e-5)


def test_scene_augmentation_keeps_projections_and_moves_colours():
    sample = {k: v for k, v in scene_row().items() if k in ("coords", "normals")}
    sample["colors"] = scene_row()["colors"].astype(np.float32)
    sample["camera_to_world"] = orbit_c2w(4, radius=1.0)
    aug = SceneAugmentation(p_rotate_z=1.0, p_rotate_xy=1.0, jitter_sigma=0.0)
    out = aug(sample, np.random.default_rng(3))
    intr = np.tile(np.array([144.5, 144.5, 80, 60], np.float32), (4, 1))
    uv0, z0 = _project(sample["coords"], sample["camera_to_world"], intr, 160)
    uv1, z1 = _project(out["coords"], out["camera_to_world"], intr, 160)
    np.testing.assert_allclose(z1, z0, atol=1e-4)
    in_front = z0 > 0.2  # points far off-axis near the camera plane project to huge, ill-conditioned coordinates
    assert in_front.sum() > 100
    np.testing.assert_allclose(uv1[in_front], uv0[in_front], atol=1e-2)
    assert not np.allclose(out["coords"], sample["coords"], atol=1e-2)
    assert out["colors"].min() >= 0 and out["colors"].max() <= 255


def test_farthest_point_sampling_numpy_and_torch_agree_and_spread():
    pts = np.random.default_rng(0).normal(size=(500, 3)).astype(np.float32)
    order = farthest_point_order(pts, 64)
    idx = farthest_point_sample(torch.tensor(pts)[None], 64)[0].numpy()
    np.testing.assert_array_equal(order, idx)
    assert order[0] == 0 and len(set(order.tolist())) == 64
    # greedy prefix property: the FPS-16 subset is the first 16 of the FPS-64 order
    np.testing.assert_array_equal(farthest_point_order(pts, 16), order[:16])


def test_object_collator_shapes_padding_and_centring():
    rows = [object_row("a", views=6, num_points=3000, seed=0), object_row("b", views=36, num_points=700, seed=1)]
    batch = ObjectPretrainingCollator(num_points=1024, seed=0)(rows)
    assert set(batch) == {
        "points", "point_mask", "reference_images", "reference_c2w", "reference_intrinsics", "reference_view_index",
        "target_images", "target_c2w", "target_intrinsics", "target_view_index", "background",
    }  # fmt: skip
    assert batch["points"].shape == (2, 1024, 3) and batch["points"].dtype == torch.float32
    assert batch["point_mask"].sum(1).tolist() == [1024, 700]
    assert batch["reference_images"].shape == (2, 1, 3, 16, 16) and batch["target_images"].shape == (2, 4, 3, 16, 16)
    assert batch["reference_c2w"].shape == (2, 1, 4, 4) and batch["target_intrinsics"].shape == (2, 4, 4)
    assert batch["background"].tolist() == [[0.0, 0.0, 0.0]] * 2
    assert 0 <= batch["target_images"].min() and batch["target_images"].max() <= 1
    assert (batch["reference_view_index"][:, 0] == batch["target_view_index"][:, 0]).all()
    # the reference view is one of the supervised views: same camera
    torch.testing.assert_close(batch["reference_c2w"][:, 0], batch["target_c2w"][:, 0])
    valid = batch["points"][1][batch["point_mask"][1]]
    assert valid.mean(0).abs().max() < 0.1  # centred (FPS subset of a centred cloud)
    resized = ObjectPretrainingCollator(image_size=32, return_colors=True, seed=0)(rows)
    assert resized["target_images"].shape[-2:] == (32, 32) and resized["point_colors"].shape == (2, 1024, 3)
    torch.testing.assert_close(resized["target_intrinsics"], batch["target_intrinsics"] * 2)


def test_object_collator_rgba_is_composited_over_the_background():
    row = object_row(views=4)
    black = ObjectPretrainingCollator(augment=False, seed=0)([row])
    white = ObjectPretrainingCollator(augment=False, background=(1, 1, 1), seed=0)([row])
    diff = white["target_images"] - black["target_images"]
    assert (diff >= -1e-6).all() and diff.max() > 0.1


def test_object_augmentation_in_the_collator_keeps_pixels():
    row = object_row(views=5, num_points=64)
    plain = ObjectPretrainingCollator(num_points=64, augment=False, point_sampling="first", seed=5)([row])
    aug = ObjectPretrainingCollator(num_points=64, augment=True, point_sampling="first", seed=5)([row])
    assert not torch.allclose(plain["points"], aug["points"], atol=1e-3)
    uv = [
        Cameras.from_camera_to_world(b["target_c2w"], b["target_intrinsics"], 16, 16).project(b["points"])[0]
        for b in (plain, aug)
    ]
    torch.testing.assert_close(uv[0], uv[1], atol=1e-3, rtol=0)


def test_scene_collator_packs_scenes_of_different_sizes():
    rows = [scene_row("s0", num_points=300), scene_row("s1", num_points=120, frames=30, seed=1)]
    batch = ScenePretrainingCollator(seed=0)(rows)
    assert batch["coords"].shape == (420, 3) and batch["features"].shape == (420, 6)
    assert batch["offsets"].tolist() == [300, 420] and batch["offsets"].dtype == torch.int64
    assert batch["segment"].shape == (420,) and batch["instance"].dtype == torch.int64
    assert batch["reference_images"].shape == (2, 8, 3, 12, 16) and batch["reference_depths"].shape == (2, 8, 12, 16)
    assert batch["target_c2w"].shape == (2, 8, 4, 4) and batch["reference_intrinsics"].shape == (2, 8, 4)
    assert batch["background"].tolist() == [[1.0, 1.0, 1.0]] * 2
    assert 0.5 <= batch["reference_depths"].min() and batch["reference_depths"].max() <= 4.0
    assert batch["features"][:, 3:].min() >= -1 and batch["features"][:, 3:].max() <= 1
    torch.testing.assert_close(batch["coords"][:300].mean(0), torch.zeros(3), atol=1e-4, rtol=0)
    assert all(isinstance(v, torch.Tensor) for v in batch.values())
    capped = ScenePretrainingCollator(max_points=100, seed=0)(rows)
    assert capped["offsets"].tolist() == [100, 200]
    rnd = ScenePretrainingCollator(max_points=100, max_points_method="random", image_size=(24, 32), seed=0)(rows)
    assert rnd["offsets"].tolist() == [100, 200] and rnd["target_depths"].shape == (2, 8, 24, 32)
    intr = batch["reference_intrinsics"][0, 0]
    torch.testing.assert_close(rnd["reference_intrinsics"][0, 0], intr * 2)


def test_corrupt_rows_raise_with_their_id_or_are_counted():
    bad_points = object_row("bad-points")
    bad_points["points"] = np.full((10, 3), np.nan, np.float32)
    bad_image = object_row("bad-image")
    bad_image["images"] = [{"bytes": b"not a png", "path": None}] * len(bad_image["images"])
    good = object_row("good")
    collator = ObjectPretrainingCollator(seed=0)
    with pytest.raises(CorruptSampleError, match="bad-points.*NaN"):
        collator([good, bad_points])
    with pytest.raises(CorruptSampleError, match="bad-image.*does not decode"):
        collator([bad_image])
    skipping = ObjectPretrainingCollator(skip_corrupt=True, seed=0)
    batch = skipping([good, bad_points, bad_image])
    assert batch["points"].shape[0] == 1
    assert [sid for sid, _ in skipping.skipped] == ["bad-points", "bad-image"]
    short = scene_row("short", frames=5)
    with pytest.raises(CorruptSampleError, match="short.*at least 8 frames"):
        ScenePretrainingCollator(seed=0)([short])
    wrong = scene_row("wrong")
    wrong["normals"] = wrong["normals"][:10]
    with pytest.raises(CorruptSampleError, match="wrong.*normals"):
        ScenePretrainingCollator(seed=0)([wrong])


def test_collators_are_reproducible_with_a_seed():
    rows = [object_row("a", views=12), object_row("b", views=12, seed=1)]
    a = ObjectPretrainingCollator(seed=7)(rows)
    b = ObjectPretrainingCollator(seed=7)(rows)
    for key in a:
        torch.testing.assert_close(a[key], b[key])


def test_rotation_angles_follow_the_paper_ranges():
    rng = np.random.default_rng(0)
    tilts = []
    for _ in range(200):
        rot = random_object_rotation(rng)
        tilts.append(math.degrees(math.acos(np.clip(rot[2, 2], -1, 1))))
    assert max(tilts) < 2 * 1.8 + 1e-6  # x and y angles within +-0.01 pi = 1.8 deg
