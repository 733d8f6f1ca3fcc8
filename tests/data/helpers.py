"""Small in-memory rows and on-disk fake trees for the data tests (no pybullet needed)."""

from __future__ import annotations

import io
import math
import os

import numpy as np
import torch
from PIL import Image

from unipre3d_hf.rendering.cameras import look_at


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def orbit_c2w(views: int, radius: float = 1.75, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    az = np.linspace(0, 2 * math.pi, views, endpoint=False)
    el = rng.uniform(-0.3, 0.8, views)
    eye = radius * np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], -1)
    return look_at(torch.tensor(eye), torch.zeros(views, 3)).numpy().astype(np.float32)


def object_row(object_id="obj", views=6, size=16, num_points=50, seed=0, rgba=True) -> dict:
    rng = np.random.default_rng(seed)
    channels = 4 if rgba else 3
    images = [{"bytes": png(rng.integers(0, 255, (size, size, channels), dtype=np.uint8)), "path": None}]
    images = images * views
    focal = 0.5 * size / math.tan(0.5 * math.radians(49.13434264120263))
    return {
        "id": object_id,
        "category": "test",
        "points": rng.normal(0.3, 0.2, (num_points, 3)).astype(np.float32),
        "colors": rng.integers(0, 255, (num_points, 3)).astype(np.uint8),
        "images": images,
        "camera_to_world": orbit_c2w(views, seed=seed),
        "intrinsics": np.tile(np.array([focal, focal, size / 2, size / 2], np.float32), (views, 1)),
        "width": size,
        "height": size,
    }


def scene_row(scene_id="scene", frames=20, width=16, height=12, num_points=300, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    rgb = {"bytes": png(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)), "path": None}
    depth = {"bytes": png(rng.integers(500, 4000, (height, width)).astype(np.uint16)), "path": None}
    normals = rng.normal(size=(num_points, 3))
    return {
        "id": scene_id,
        "coords": rng.uniform(0, 3, (num_points, 3)).astype(np.float32),
        "colors": rng.integers(0, 255, (num_points, 3)).astype(np.uint8),
        "normals": (normals / np.linalg.norm(normals, axis=1, keepdims=True)).astype(np.float32),
        "segment": rng.integers(-1, 20, num_points).astype(np.int32),
        "instance": rng.integers(-1, 5, num_points).astype(np.int32),
        "images": [rgb] * frames,
        "depths": [depth] * frames,
        "camera_to_world": orbit_c2w(frames, radius=1.0, seed=seed),
        "intrinsics": np.tile(np.array([14.4, 14.4, width / 2, height / 2], np.float32), (frames, 1)),
        "frame_ids": np.arange(frames, dtype=np.int32) * 20,
        "width": width,
        "height": height,
    }


def make_shapenet_tree(root: str) -> dict[str, int]:
    """A fake ShapeNet multi-view tree; returns {object id: expected good views}. One object has 36 views, one 24 with
    a non-finite camera, one lacks its point file, one has no metadata; "corrupt" has a view whose PNG is not a PNG and
    one truncated PNG, "missingview" lacks 07.png and both files of view 09, "fewgood" has 6 views of which 2 are not
    PNGs (4 good < 5: skipped)."""
    rng = np.random.default_rng(0)
    expected = {}
    objects = [("02691156", f"plane{i}", 24) for i in range(8)] + [("03001627", "chair36", 36)]
    objects += [("03001627", "nopts", 24), ("03001627", "nometa", 24), ("03001627", "badview", 24)]
    objects += [("04379243", "corrupt", 24), ("04379243", "missingview", 24), ("04379243", "fewgood", 6)]
    os.makedirs(os.path.join(root, "pts"))
    for synset, model, views in objects:
        d = os.path.join(root, "image", synset, model, "easy")
        os.makedirs(d)
        c2w = orbit_c2w(views)
        lines = []
        for v in range(views):
            Image.fromarray(rng.integers(0, 255, (20, 20, 4), dtype=np.uint8)).save(os.path.join(d, f"{v:02d}.png"))
            matrix = c2w[v].copy()
            if model == "badview" and v == 3:
                matrix[0, 3] = np.inf
            np.savetxt(os.path.join(d, f"{v:02d}.txt"), matrix.reshape(1, 16))
            lines.append(f"{rng.uniform(0, 360)} {rng.uniform(25, 30)} 0 {rng.uniform(0.65, 1)} 35 32 1.75 0 0 0")
        if model != "nometa":
            with open(os.path.join(d, "rendering_metadata.txt"), "w") as f:
                f.write("\n".join(lines) + "\n")
        if model in ("corrupt", "fewgood"):
            with open(os.path.join(d, "05.png"), "wb") as f:
                f.write(b"this is not a PNG file")
        if model == "corrupt":  # a real PNG cut short: the header opens, the pixels do not decode
            data = open(os.path.join(d, "06.png"), "rb").read()
            with open(os.path.join(d, "06.png"), "wb") as f:
                f.write(data[: len(data) // 2])
        if model == "fewgood":
            with open(os.path.join(d, "02.png"), "wb") as f:
                f.write(b"\x89PNG garbage")
        if model == "missingview":
            for name in ("07.png", "09.png", "09.txt"):
                os.remove(os.path.join(d, name))
        if model != "nopts":
            np.save(os.path.join(root, "pts", f"{synset}-{model}.npy"), rng.normal(size=(100, 3)).astype(np.float32))
        if model not in ("nopts", "nometa", "fewgood"):
            expected[f"{synset}/{model}"] = views - {"badview": 1, "corrupt": 2, "missingview": 2}.get(model, 0)
    return expected


def make_scannet_tree(points_root: str, frames_root: str) -> None:
    """Fake Pointcept scenes + exported frames: scene0000_00 has 20 frames of which 3 have -inf poses, scene0001_00
    has 5 frames (too few), scene0002_00 (val) has no intrinsics."""
    rng = np.random.default_rng(0)
    for split, scene, frames in (
        ("train", "scene0000_00", 20),
        ("train", "scene0001_00", 5),
        ("val", "scene0002_00", 18),
    ):
        pdir = os.path.join(points_root, split, scene)
        os.makedirs(pdir)
        n = 200
        np.save(os.path.join(pdir, "coord.npy"), rng.uniform(0, 4, (n, 3)).astype(np.float32))
        np.save(os.path.join(pdir, "color.npy"), rng.integers(0, 255, (n, 3)).astype(np.uint8))
        np.save(os.path.join(pdir, "normal.npy"), rng.normal(size=(n, 3)).astype(np.float32))
        np.save(os.path.join(pdir, "segment20.npy"), rng.integers(-1, 20, n).astype(np.int64))
        np.save(os.path.join(pdir, "instance.npy"), rng.integers(-1, 9, n).astype(np.int64))
        for sub in ("color", "depth", "pose"):
            os.makedirs(os.path.join(frames_root, sub, scene))
        if scene != "scene0002_00":
            idir = os.path.join(frames_root, "intrinsic", scene)
            os.makedirs(idir)
            k_color = np.array([[1170.19, 0, 647.75, 0], [0, 1170.19, 483.75, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
            k_depth = np.array([[577.87, 0, 319.5, 0], [0, 577.87, 239.5, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
            np.savetxt(os.path.join(idir, "intrinsic_color.txt"), k_color)
            np.savetxt(os.path.join(idir, "intrinsic_depth.txt"), k_depth)
        c2w = orbit_c2w(frames, radius=1.5)
        for f in range(frames):
            number = f * 20
            # colour: 1296x968 with a vertical stripe at the optical centre's column
            color = np.zeros((968, 1296, 3), dtype=np.uint8)
            color[:, 640:656] = 255
            Image.fromarray(color).save(os.path.join(frames_root, "color", scene, f"{number}.jpg"))
            depth = np.full((480, 640), 1500, dtype=np.uint16)
            Image.fromarray(depth).save(os.path.join(frames_root, "depth", scene, f"{number}.png"))
            pose = c2w[f].astype(np.float64)
            if scene == "scene0000_00" and f in (2, 7, 11):
                pose[:] = -np.inf
            np.savetxt(os.path.join(frames_root, "pose", scene, f"{number}.txt"), pose)
