"""Issue 19 for the data path: no data loss on rebuild (class 2), wrong data never silently used (class 4), cameras
validated (class 5), one bad file never stops a build or a batch (class 6)."""

from __future__ import annotations

import math
import os
import runpy
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from unipre3d_hf.data import (
    CorruptSampleError,
    ObjectPretrainingCollator,
    ScenePretrainingCollator,
    SceneViewSampler,
    convert_scannet,
    convert_shapenet,
    load_mini_dataset,
    load_pretraining_dataset,
)
from unipre3d_hf.data import shapenet as shapenet_module
from unipre3d_hf.data.schemas import MAX_IMAGE_PIXELS, dataset_output, open_image

from .helpers import object_row, orbit_c2w, png, scene_row

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ------------------------------------------------------------------------------------------------- fake trees
def make_objects(root, names=("a", "b", "c", "d"), views=6, focals=None, pts=None, matrices=None):
    """A small ShapeNet multi-view tree in synset 01; ``focals[name][view]``, ``pts[name]`` (raw bytes of the point
    file) and ``matrices[name][view]`` override the defaults."""
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(root, "pts"), exist_ok=True)
    for name in names:
        d = os.path.join(root, "image", "01", name, "easy")
        os.makedirs(d)
        c2w = orbit_c2w(views)
        lines = []
        for v in range(views):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(os.path.join(d, f"{v:02d}.png"))
            m = (matrices or {}).get(name, {}).get(v, c2w[v])
            np.savetxt(os.path.join(d, f"{v:02d}.txt"), np.asarray(m).reshape(1, 16))
            focal = (focals or {}).get(name, {}).get(v, 35)
            lines.append(f"0 25 0 0.8 {focal} 32 1.75 0 0 0")
        with open(os.path.join(d, "rendering_metadata.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
        path = os.path.join(root, "pts", f"01-{name}.npy")
        if name in (pts or {}):
            with open(path, "wb") as f:
                f.write(pts[name])
        else:
            np.save(path, rng.normal(size=(40, 3)).astype(np.float32))


def make_scene(points_root, frames_root, scene, split="train", frames=4, color_size=(32, 24), depth=None, pose=None):
    """One Pointcept scene + exported frames (colour ``color_size``, 16-bit depth 16x12); ``depth[f]`` replaces frame
    ``f``'s depth image (a PIL image) and ``pose[f]`` its pose; ``color_size`` may be a list (one size per frame)."""
    rng = np.random.default_rng(1)
    pdir = os.path.join(points_root, split, scene)
    os.makedirs(pdir)
    n = 50
    np.save(os.path.join(pdir, "coord.npy"), rng.uniform(0, 2, (n, 3)).astype(np.float32))
    np.save(os.path.join(pdir, "color.npy"), rng.integers(0, 255, (n, 3)).astype(np.uint8))
    np.save(os.path.join(pdir, "normal.npy"), rng.normal(size=(n, 3)).astype(np.float32))
    for sub in ("color", "depth", "pose"):
        os.makedirs(os.path.join(frames_root, sub, scene), exist_ok=True)
    idir = os.path.join(frames_root, "intrinsic", scene)
    os.makedirs(idir, exist_ok=True)
    np.savetxt(os.path.join(idir, "intrinsic_color.txt"), np.array([[30.0, 0, 15.5], [0, 30, 11.5], [0, 0, 1]]))
    np.savetxt(os.path.join(idir, "intrinsic_depth.txt"), np.array([[15.0, 0, 7.5], [0, 15, 5.5], [0, 0, 1]]))
    c2w = orbit_c2w(frames, radius=1.0)
    sizes = color_size if isinstance(color_size, list) else [color_size] * frames
    for f in range(frames):
        Image.fromarray(np.full((sizes[f][1], sizes[f][0], 3), 128, np.uint8)).save(
            os.path.join(frames_root, "color", scene, f"{f}.png")
        )
        img = (depth or {}).get(f, Image.fromarray(np.full((12, 16), 1500, np.uint16)))
        img.save(os.path.join(frames_root, "depth", scene, f"{f}.png"))
        np.savetxt(os.path.join(frames_root, "pose", scene, f"{f}.txt"), (pose or {}).get(f, c2w[f]))


def _card(path):
    with open(os.path.join(path, "README.md")) as f:
        return f.read()


# ------------------------------------------------------------------------------- class 2: no loss on rebuild
def test_rebuild_that_raises_midway_or_writes_nothing_keeps_the_old_set_and_card(tmp_path, monkeypatch):
    make_objects(str(tmp_path / "src"))
    out = str(tmp_path / "set")
    first = convert_shapenet(str(tmp_path / "src"), out, show_progress=False)
    card = _card(out)
    assert f'load_pretraining_dataset("{out}"' in card and ".tmp-build" not in card  # the final path, not the build's
    rows = sum(len(load_pretraining_dataset(out, split=s)) for s, n in first.rows_written.items() if n)
    with pytest.raises(FileExistsError, match="--overwrite"):  # an existing set is never replaced unasked
        convert_shapenet(str(tmp_path / "src"), out, show_progress=False)

    calls = []
    real = shapenet_module.read_shapenet_object

    def dies_on_the_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # a kill midway (not an error the converter would catch)
        return real(*args, **kwargs)

    monkeypatch.setattr(shapenet_module, "read_shapenet_object", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        convert_shapenet(str(tmp_path / "src"), out, show_progress=False, overwrite=True)
    monkeypatch.setattr(shapenet_module, "read_shapenet_object", real)
    # a rebuild whose every object is bad writes nothing: refused, old set kept
    os.makedirs(tmp_path / "empty" / "image" / "01" / "x" / "easy")
    with pytest.raises(ValueError, match="no rows"):
        convert_shapenet(str(tmp_path / "empty"), out, show_progress=False, overwrite=True)
    assert _card(out) == card
    assert sum(len(load_pretraining_dataset(out, split=s)) for s, n in first.rows_written.items() if n) == rows == 4
    assert sorted(os.listdir(tmp_path)) == ["empty", "set", "src"]  # no build folder left behind
    # with --overwrite a complete rebuild replaces the set
    second = convert_shapenet(str(tmp_path / "src"), out, seed=7, show_progress=False, overwrite=True)
    assert sum(second.rows_written.values()) == 4 and "--seed 7" in _card(out)


def test_leftover_build_folder_of_a_killed_build_is_cleaned_next_time(tmp_path):
    out = tmp_path / "set"
    dead = tmp_path / ".tmp-build-set-999999999-1"  # pid that does not exist: a killed build
    old = tmp_path / ".tmp-old-set-999999999-2"
    live = tmp_path / f".tmp-build-set-{os.getppid()}-3"  # a running process: a concurrent build, left alone
    for folder in (dead, old, live):
        os.makedirs(folder / "data")
        (folder / "data" / "train-00000.parquet.tmp").write_bytes(b"partial")
    with pytest.raises(RuntimeError):
        with dataset_output(str(out)) as build_dir:
            (tmp_path / "marker").write_text(build_dir)
            raise RuntimeError("killed midway")
    assert not os.path.exists((tmp_path / "marker").read_text())  # the failed build's own folder is removed
    assert not dead.exists() and not old.exists() and live.exists() and not out.exists()
    with dataset_output(str(out)) as build_dir:
        with open(os.path.join(build_dir, "README.md"), "w") as f:
            f.write("new")
    assert (out / "README.md").read_text() == "new"


def test_build_dataset_script_refuses_an_existing_output_naming_the_flag(tmp_path, monkeypatch, capsys):
    make_objects(str(tmp_path / "src"), names=("a",))
    out = tmp_path / "set"
    os.makedirs(out)
    (out / "README.md").write_text("a set someone cares about")
    argv = ["build_dataset.py", "shapenet", "--root", str(tmp_path / "src"), "--out", str(out), "--min-views", "1"]
    script = os.path.join(REPO, "scripts", "build_dataset.py")
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:  # run as `python scripts/build_dataset.py ...`: a one-line error
        runpy.run_path(script, run_name="__main__")
    assert "already exists" in str(exit_info.value.code) and "--overwrite" in str(exit_info.value.code)
    assert (out / "README.md").read_text() == "a set someone cares about"
    monkeypatch.setattr(sys, "argv", argv + ["--overwrite"])
    runpy.run_path(script, run_name="__main__")
    assert "1 rows written" in capsys.readouterr().out and "ShapeNet" in _card(str(out))


def test_load_mini_dataset_never_builds_over_an_incomplete_folder(tmp_path):
    os.makedirs(tmp_path / "objects-mini" / "data")
    (tmp_path / "objects-mini" / "data" / "train-00000-of-00001.parquet").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="--overwrite"):
        load_mini_dataset("objects-mini", root=str(tmp_path))
    assert (tmp_path / "objects-mini" / "data" / "train-00000-of-00001.parquet").read_bytes() == b"x"


# ---------------------------------------------------------------------- classes 4 and 5: ScanNet frames, cameras
def test_scannet_frames_keep_their_own_intrinsics_and_bad_depth_or_poses_are_dropped(tmp_path):
    pts, frames = str(tmp_path / "pts"), str(tmp_path / "frames")
    sheared = orbit_c2w(6, radius=1.0)[4].astype(np.float64)
    sheared[0, 1] += 0.05
    reflected = orbit_c2w(6, radius=1.0)[5].astype(np.float64)
    reflected[:3, 0] *= -1
    make_scene(
        pts, frames, "scene0000_00", frames=6,
        depth={
            2: Image.fromarray(np.full((12, 16), 150, np.uint8)),  # 8-bit: would be read as 0.15 m
            3: Image.fromarray(np.full((12, 16, 3), 150, np.uint8)),  # RGB depth
        },
        pose={4: sheared, 5: reflected},
    )  # fmt: skip
    # frame sizes differ: the depth frames of scene 1 are 16x12 and 32x24
    make_scene(pts, frames, "scene0001_00", frames=2)
    Image.fromarray(np.full((24, 32), 1500, np.uint16)).save(os.path.join(frames, "depth", "scene0001_00", "1.png"))
    summary = convert_scannet(
        pts, frames, str(tmp_path / "out"), width=16, height=12, min_frames=2, show_progress=False
    )
    why = {r.split(":")[0]: r for i, r in summary.dropped if i == "scene0000_00"}
    assert sorted(why) == ["frame 2", "frame 3", "frame 4", "frame 5"] and summary.dropped_frames == 4
    assert "mode 'L'" in why["frame 2"] and "16-bit" in why["frame 2"]
    assert "mode 'RGB'" in why["frame 3"] and "3 channel(s)" in why["frame 3"]
    assert "pose/scene0000_00/4.txt" in why["frame 4"] and "not orthonormal" in why["frame 4"]
    assert "determinant -1" in why["frame 5"]
    rows = {r["id"]: r for r in load_pretraining_dataset(str(tmp_path / "out"))}
    assert rows["scene0000_00"]["frame_ids"].tolist() == [0, 1]
    # per-frame intrinsics: fx = 15 * 16 / 16 for the 16x12 frame, 15 * 16 / 32 for the 32x24 one
    np.testing.assert_allclose(rows["scene0001_00"]["intrinsics"][:, 0], [15.0, 7.5], rtol=1e-6)
    np.testing.assert_allclose(rows["scene0001_00"]["intrinsics"][:, 2], [8.0, 4.0], rtol=1e-6)


def test_collators_refuse_non_rigid_cameras_and_skip_corrupt_goes_on(tmp_path):
    good, bad = object_row("good"), object_row("bad")
    bad["camera_to_world"] = bad["camera_to_world"].copy()
    bad["camera_to_world"][2, :3, :3] *= 2.0  # scaled: not a rigid transform
    with pytest.raises(CorruptSampleError, match=r"'bad'.*`camera_to_world`\[2\] is not a rigid transform"):
        ObjectPretrainingCollator(num_points=16, seed=0)([bad])
    collator = ObjectPretrainingCollator(num_points=16, seed=0, skip_corrupt=True)
    batch = collator([bad, good])
    assert batch["points"].shape == (1, 16, 3) and [i for i, _ in collator.skipped] == ["bad"]
    flat = object_row("flat")
    flat["camera_to_world"] = flat["camera_to_world"].copy()
    flat["camera_to_world"][0, 3] = [0.0, 0.0, 1.0, 1.0]
    with pytest.raises(CorruptSampleError, match=r"\[0\] .*last row"):
        ObjectPretrainingCollator(num_points=16, seed=0)([flat])
    # a scene row with an 8-bit depth image is corrupt, not 0..255 mm
    scene = scene_row("eightbit", frames=6)
    scene["depths"] = [{"bytes": png(np.full((12, 16), 200, np.uint8)), "path": None}] * 6
    sampler = SceneViewSampler(num_reference=2, max_distance=1)
    scenes = ScenePretrainingCollator(view_sampler=sampler, seed=0, skip_corrupt=True)
    out = scenes([scene, scene_row("ok", frames=6)])
    assert out["offsets"].tolist() == [300] and "16-bit" in scenes.skipped[0][1]


# --------------------------------------------------------------------------------- class 6: one bad file only
def test_shapenet_bad_focal_lengths_matrices_and_point_files_are_reported_and_skipped(tmp_path):
    nonrigid = orbit_c2w(6)[1].astype(np.float64)
    nonrigid[:3, :3] *= 1.5
    make_objects(
        str(tmp_path / "src"),
        names=("a", "b", "c", "d", "e"),
        focals={"a": {0: 0}, "b": {1: "nan", 2: -35}},
        matrices={"c": {1: nonrigid}},
        pts={"d": b"", "e": b"\x93NUMPY garbage"},
    )
    summary = convert_shapenet(str(tmp_path / "src"), str(tmp_path / "out"), min_views=2, show_progress=False)
    why = {(i, r.split(":")[0]): r for i, r in summary.dropped}
    assert sorted(why) == [("01/a", "view 00"), ("01/b", "view 01"), ("01/b", "view 02"), ("01/c", "view 01")]
    assert "focal 0.0 mm" in why["01/a", "view 00"] and "finite and positive" in why["01/a", "view 00"]
    assert "focal nan mm" in why["01/b", "view 01"] and "focal -35.0 mm" in why["01/b", "view 02"]
    assert "bad camera matrix" in why["01/c", "view 01"] and "not orthonormal" in why["01/c", "view 01"]
    skipped = dict(summary.skipped)
    assert sorted(skipped) == ["01/d", "01/e"] and all("unreadable point file" in r for r in skipped.values())
    assert "EOF" in skipped["01/d"] or "No data" in skipped["01/d"]
    rows = {r["id"]: r for s, n in summary.rows_written.items() if n for r in load_pretraining_dataset(
        str(tmp_path / "out"), split=s)}  # fmt: skip
    assert {k: len(r["images"]) for k, r in rows.items()} == {"01/a": 5, "01/b": 4, "01/c": 5}
    fx = 0.5 * 8 / math.tan(math.atan(16 / 35))
    for row in rows.values():  # no NaN, zero or negative focal length was written
        np.testing.assert_allclose(row["intrinsics"][:, 0], fx, rtol=1e-5)


def test_scannet_corrupt_npy_oversized_png_and_a_scene_in_two_splits(tmp_path):
    pts, frames = str(tmp_path / "pts"), str(tmp_path / "frames")
    make_scene(pts, frames, "scene0000_00", frames=3)
    make_scene(pts, frames, "scene0001_00", frames=3)  # zero-byte coord.npy
    open(os.path.join(pts, "train", "scene0001_00", "coord.npy"), "wb").close()
    make_scene(pts, frames, "scene0002_00", frames=3)  # corrupt normal.npy
    with open(os.path.join(pts, "train", "scene0002_00", "normal.npy"), "wb") as f:
        f.write(b"\x93NUMPY\x01\x00garbage")
    os.makedirs(os.path.join(pts, "val"))  # scene0000_00 again under val: written to train only
    os.symlink(os.path.join(pts, "train", "scene0000_00"), os.path.join(pts, "val", "scene0000_00"))
    make_scene(pts, frames, "scene0003_00", split="val", frames=3)
    # a colour frame that declares more pixels than MAX_IMAGE_PIXELS (1-bit, so the file itself is small)
    side = math.isqrt(MAX_IMAGE_PIXELS) + 8
    Image.new("1", (side, side)).save(os.path.join(frames, "color", "scene0003_00", "1.png"))
    summary = convert_scannet(
        pts, frames, str(tmp_path / "out"), width=16, height=12, min_frames=2, show_progress=False
    )
    skipped = dict(summary.skipped)
    assert sorted(skipped) == ["scene0000_00", "scene0001_00", "scene0002_00"]
    assert "unreadable coord.npy" in skipped["scene0001_00"] and "unreadable normal.npy" in skipped["scene0002_00"]
    assert "scene in two splits" in skipped["scene0000_00"] and "'train' only" in skipped["scene0000_00"]
    assert summary.rows_written == {"train": 1, "validation": 1}
    assert summary.dropped == [("scene0003_00", f"frame 1: image declares {side}x{side} = {side * side} pixels, "
                                f"more than the limit of {MAX_IMAGE_PIXELS} (MAX_IMAGE_PIXELS)")]  # fmt: skip
    train = [r["id"] for r in load_pretraining_dataset(str(tmp_path / "out"), split="train")]
    val = [r["id"] for r in load_pretraining_dataset(str(tmp_path / "out"), split="validation")]
    assert train == ["scene0000_00"] and val == ["scene0003_00"]


def test_open_image_bounds_pixels_before_decoding():
    with pytest.raises(ValueError, match="more than the limit of 100"):
        open_image(png(np.zeros((11, 10), np.uint8)), max_pixels=100)
    assert open_image(png(np.zeros((10, 10), np.uint8)), max_pixels=100).size == (10, 10)
    with pytest.raises(OSError):
        open_image(b"not an image")


# -------------------------------------------------------------------- class 4: images at the model's input
def test_pretraining_model_refuses_0_255_or_nan_images_bad_background_and_non_rigid_cameras():
    from tests.models.test_pretraining import OBJECT_BACKBONES, object_batch, tiny_model

    model = tiny_model(OBJECT_BACKBONES["pointmlp"]())
    batch = object_batch(batch=1, num_points=32, size=16, targets=1)
    assert torch.isfinite(model(**batch).loss)
    nan_image = batch["reference_images"].clone().index_fill_(-1, torch.tensor([3]), float("nan"))
    in_bytes = batch["target_images"] * 255
    cases = [
        ("target_images", in_bytes, r"`target_images` must be finite and in \[0, 1\], got values in \[0.0, 2"),
        ("reference_images", nan_image, r"`reference_images` .*nan"),
        ("target_images", in_bytes.to(torch.uint8), "`target_images` must be a floating-point tensor"),
        ("background", torch.full((1, 3), float("nan")), r"`background` must be finite and in \[0, 1\]"),
    ]
    skewed = batch["target_c2w"].clone()
    skewed[0, 0, :3, :3] *= 0.5
    cases.append(("target_c2w", skewed, r"`target_c2w`\[0, 0\] is not a rigid transform"))
    for key, value, message in cases:
        with pytest.raises(ValueError, match=message):
            model(**{**batch, key: value})
