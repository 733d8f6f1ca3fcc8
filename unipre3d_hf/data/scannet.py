"""Converter from Pointcept-preprocessed ScanNet scenes plus exported RGB-D frames (method reference 8.2).

Layout read::

    <points-root>/{train,val,test}/<scene>/coord.npy color.npy normal.npy segment20.npy segment200.npy instance.npy
    <frames-root>/color/<scene>/<frame>.jpg     (or .png)
    <frames-root>/depth/<scene>/<frame>.png     16-bit, millimetres
    <frames-root>/pose/<scene>/<frame>.txt      4x4 camera-to-world (OpenCV axes)
    <frames-root>/intrinsic/<scene>/intrinsic_color.txt, intrinsic_depth.txt   4x4 K (ScanNet SensReader names)

Frames are sorted by the integer in their file name. A frame whose pose is non-finite (ScanNet has ``-inf`` poses), or
not rigid (rotation orthonormal with determinant +1, last row 0 0 0 1), whose depth PNG is not single-channel 16-bit (an
8-bit or RGB depth image would be misread as millimetres), or whose files are missing, unreadable or declare more than
``MAX_IMAGE_PIXELS`` pixels, is dropped and counted with its scene id, frame and reason. Intrinsics are read from the
intrinsic files, not hard-coded. Every kept frame is stored at ``width x height`` (default 160x120, the paper's training
size) in the *depth* camera: the depth map is resized with nearest neighbour, the colour image is resampled with the
affine map between the two pinhole cameras (colour pixel = K_color K_depth^-1 depth pixel), so colour and depth are
pixel aligned and share one ``intrinsics`` row, computed per frame (frames of one scene may differ in size). ScanNet's
files use OpenCV's integer pixel centres; the stored intrinsics use this package's +0.5 centres: ``cx = (cx_file + 0.5)
* width / width_file``. Scenes with fewer than ``min_frames`` kept frames (the paper skips scenes with fewer than 16),
with inconsistent point arrays or with a zero-byte, truncated, corrupt or pickled ``.npy`` file are skipped with their
reason. Point folders ``train``/``val``/``test`` become the splits ``train``/``validation``/``test``; a scene found in
more than one of them is written to the first only (reported as skipped in the others), so nothing leaks across splits.
"""

from __future__ import annotations

import io
import os
import re
import time

import numpy as np
from PIL import Image

from ..rendering.cameras import check_rigid_transforms
from .schemas import (
    SCENE_FEATURES,
    BuildSummary,
    ShardedParquetWriter,
    check_depth_image,
    dataset_output,
    folder_size,
    open_image,
    write_dataset_card,
)

__all__ = ["read_scannet_scene", "convert_scannet", "load_intrinsics"]

_SPLITS = {"train": "train", "val": "validation", "test": "test"}


def _frame_number(name: str) -> int:
    digits = re.findall(r"\d+", os.path.splitext(name)[0])
    if not digits:
        raise ValueError(f"frame file {name!r} has no number in its name")
    return int(digits[-1])


def load_intrinsics(frames_root: str, scene: str) -> tuple[np.ndarray, np.ndarray]:
    """Read ``intrinsic_color.txt`` and ``intrinsic_depth.txt`` of a scene; returns two 3x3 K matrices."""
    out = []
    for name in ("intrinsic_color.txt", "intrinsic_depth.txt"):
        path = os.path.join(frames_root, "intrinsic", scene, name)
        if not os.path.isfile(path):
            raise ValueError(f"missing intrinsics intrinsic/{scene}/{name}")
        k = np.loadtxt(path, dtype=np.float64)
        if k.shape not in ((4, 4), (3, 3)) or not np.isfinite(k).all() or k[0, 0] <= 0 or k[1, 1] <= 0:
            raise ValueError(f"intrinsic/{scene}/{name} must hold a finite 3x3 or 4x4 K with positive focals")
        out.append(k[:3, :3])
    return out[0], out[1]


def _load_npy(points_dir: str, name: str) -> np.ndarray:
    """``<points_dir>/<name>.npy`` as an array; ``ValueError`` naming the file for a zero-byte, truncated, corrupt
    or pickled (object) file (``allow_pickle=False``: a point file never runs code)."""
    try:
        return np.load(os.path.join(points_dir, f"{name}.npy"), allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(f"unreadable {name}.npy ({type(err).__name__}: {err})") from err


def _png(array: np.ndarray) -> dict:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


def read_scannet_scene(
    points_dir: str,
    frames_root: str,
    scene: str,
    width: int = 160,
    height: int = 120,
    frame_skip: int = 1,
    segment: str = "segment20",
    summary: BuildSummary | None = None,
) -> dict:
    """Read one scene into a row of :data:`SCENE_FEATURES`; raises ``ValueError`` with the reason when it can't."""
    arrays = {}
    for name in ("coord", "color", "normal"):
        path = os.path.join(points_dir, f"{name}.npy")
        if not os.path.isfile(path):
            raise ValueError(f"missing {name}.npy")
        arrays[name] = _load_npy(points_dir, name)
    p = len(arrays["coord"])
    for name in ("coord", "color", "normal"):
        if arrays[name].shape != (p, 3):
            raise ValueError(f"{name}.npy must have shape [{p}, 3], got {arrays[name].shape}")
    if not np.isfinite(arrays["coord"]).all():
        raise ValueError("coord.npy contains NaN or Inf")
    labels = {}
    for key, file in (("segment", segment), ("instance", "instance")):
        path = os.path.join(points_dir, f"{file}.npy")
        labels[key] = _load_npy(points_dir, file).astype(np.int32).reshape(-1) if os.path.isfile(path) else None
        if labels[key] is None:
            labels[key] = np.zeros(0, np.int32)
        if len(labels[key]) not in (0, p):
            raise ValueError(f"{file}.npy has {len(labels[key])} labels for {p} points")
    k_color, k_depth = load_intrinsics(frames_root, scene)
    pose_dir = os.path.join(frames_root, "pose", scene)
    if not os.path.isdir(pose_dir):
        raise ValueError(f"missing pose/{scene}")
    frames = sorted((n for n in os.listdir(pose_dir) if n.endswith(".txt")), key=_frame_number)[::frame_skip]
    images, depths, c2ws, intrs, ids = [], [], [], [], []
    for name in frames:
        number = _frame_number(name)
        stem = os.path.splitext(name)[0]
        try:
            c2w = np.loadtxt(os.path.join(pose_dir, name), dtype=np.float64).reshape(4, 4)
            if not np.isfinite(c2w).all():
                raise ValueError("non-finite pose")
            check_rigid_transforms(f"pose/{scene}/{name}", c2w)
            color_path = next(
                (
                    os.path.join(frames_root, "color", scene, stem + ext)
                    for ext in (".jpg", ".png", ".jpeg")
                    if os.path.isfile(os.path.join(frames_root, "color", scene, stem + ext))
                ),
                None,
            )
            if color_path is None:
                raise ValueError("missing colour image")
            depth_path = os.path.join(frames_root, "depth", scene, stem + ".png")
            if not os.path.isfile(depth_path):
                raise ValueError("missing depth image")
            depth_img = open_image(depth_path)  # bounded in pixels (MAX_IMAGE_PIXELS) before decoding
            check_depth_image(depth_img)  # 8-bit or RGB depth would be read as wrong millimetres
            color_img = open_image(color_path).convert("RGB")
        except (OSError, ValueError, SyntaxError) as err:
            if summary is not None:
                summary.drop(scene, f"frame {stem}: {err}")
            continue
        wd, hd = depth_img.size
        sx, sy = width / wd, height / hd
        # depth camera at the stored size, +0.5 pixel centres (ScanNet's K uses integer centres)
        fx, fy = k_depth[0, 0] * sx, k_depth[1, 1] * sy
        cx, cy = (k_depth[0, 2] + 0.5) * sx, (k_depth[1, 2] + 0.5) * sy
        intr = np.array([fx, fy, cx, cy], dtype=np.float32)  # per frame: frame sizes may differ
        # colour pixel (continuous, +0.5 centres) of a stored pixel u: uc = fxc (u - cx) / fx + (cxc + 0.5)
        ax, ay = k_color[0, 0] / fx, k_color[1, 1] / fy
        bx, by = k_color[0, 2] + 0.5 - ax * cx, k_color[1, 2] + 0.5 - ay * cy
        color = color_img.transform((width, height), Image.AFFINE, (ax, 0, bx, 0, ay, by), Image.BILINEAR)
        depth = np.asarray(depth_img.resize((width, height), Image.NEAREST)).astype(np.uint16)
        images.append(_png(np.asarray(color)))
        depths.append(_png(depth))
        c2ws.append(c2w.astype(np.float32))
        intrs.append(intr)
        ids.append(number)
    return {
        "id": scene,
        "coords": arrays["coord"].astype(np.float32),
        "colors": np.clip(arrays["color"], 0, 255).astype(np.uint8),
        "normals": arrays["normal"].astype(np.float32),
        "segment": labels["segment"],
        "instance": labels["instance"],
        "images": images,
        "depths": depths,
        "camera_to_world": np.stack(c2ws) if c2ws else np.zeros((0, 4, 4), np.float32),
        "intrinsics": np.stack(intrs) if intrs else np.zeros((0, 4), np.float32),
        "frame_ids": np.asarray(ids, dtype=np.int32),
        "width": width,
        "height": height,
    }


def convert_scannet(
    points_root: str,
    frames_root: str,
    out_dir: str,
    width: int = 160,
    height: int = 120,
    frame_skip: int = 1,
    min_frames: int = 16,
    segment: str = "segment20",
    max_scenes: int | None = None,
    rows_per_shard: int = 16,
    show_progress: bool = True,
    overwrite: bool = False,
) -> BuildSummary:
    """Convert ScanNet (see the module docstring) into ``out_dir``; returns the summary.

    The set is built in a sibling folder and replaces ``out_dir`` only once complete (:func:`dataset_output`); an
    existing non-empty ``out_dir`` is refused unless ``overwrite``. A scene found under more than one split folder is
    written to the first (train, val, test) only and reported as skipped in the others, so no scene leaks across
    splits.
    """
    from tqdm.auto import tqdm

    start = time.perf_counter()
    summary = BuildSummary("scannet")
    split_dirs = [s for s in _SPLITS if os.path.isdir(os.path.join(points_root, s))]
    if not split_dirs:
        raise FileNotFoundError(f"no train/val/test folder under {points_root}")
    first_split: dict[str, str] = {}
    with dataset_output(out_dir, overwrite) as build_dir:
        for folder in split_dirs:
            scenes = sorted(os.listdir(os.path.join(points_root, folder)))[:max_scenes]
            writer = ShardedParquetWriter(build_dir, _SPLITS[folder], SCENE_FEATURES, rows_per_shard=rows_per_shard)
            for scene in tqdm(scenes, desc=f"scannet/{folder}", unit="scene", disable=not show_progress):
                if scene in first_split:
                    summary.skip(scene, f"scene in two splits: kept in {first_split[scene]!r} only, not in {folder!r}")
                    continue
                first_split[scene] = folder
                try:
                    row = read_scannet_scene(
                        os.path.join(points_root, folder, scene), frames_root, scene, width, height, frame_skip,
                        segment, summary,
                    )  # fmt: skip
                except (OSError, ValueError) as err:
                    summary.skip(scene, str(err))
                    continue
                if len(row["images"]) < min_frames:
                    summary.skip(scene, f"too few good frames: {len(row['images'])} < {min_frames}")
                    continue
                writer.write(row)
            writer.close()
            summary.rows_written[_SPLITS[folder]] = writer.num_rows
        write_dataset_card(
            build_dir,
            SCENE_FEATURES,
            summary.rows_written,
            pretty_name="ScanNet v2 (UniPre3D format)",
            license="other",
            tags=["scannet", "rgb-d"],
            load_path=out_dir,
            description=f"""Converted with `python scripts/build_dataset.py scannet --points-root {points_root}
--frames-root {frames_root}` from Pointcept-preprocessed ScanNet v2 scenes and exported RGB-D frames. The ScanNet
terms of use apply (non-commercial research; the data can't be redistributed). Frames at {width}x{height} in the
depth camera (colour resampled onto it, so colour and depth align; intrinsics per frame), every {frame_skip} exported
frame(s); frames with a non-finite or non-rigid pose, a depth image that is not 16-bit, or a missing, unreadable or
oversized file dropped ({summary.dropped_frames} frames dropped in all). Labels: `segment` from `{segment}.npy`,
`instance` from `instance.npy`. Rows written: {summary.rows_written}; skipped: {len(summary.skipped)}.""",
        )
        summary.bytes_on_disk = folder_size(build_dir)
    summary.seconds = time.perf_counter() - start
    return summary
