"""Converter from the ShapeNet multi-view render layout (method reference 8.1) to the object dataset.

Layout read (``root`` holds ``image/`` and ``pts/``; ``root`` may also be the ``image/`` folder itself, with ``pts/``
beside it)::

    image/<synset>/<model>/easy/NN.png                 RGB(A) views, any number (24 and 36 are both found)
    image/<synset>/<model>/easy/NN.txt                 4x4 camera-to-world, 16 floats (OpenCV axes, section 6.2)
    image/<synset>/<model>/easy/rendering_metadata.txt one line per view: yaw, elevation, 0, distance ratio,
                                                       focal (35 mm), sensor (32 mm), ...
    pts/<synset>-<model>.npy                           the point cloud (xyz in the first 3 columns)

What the converter does:
- the view count is read from disk (bug #18 of the method reference: the paper's validation hard-codes 24);
- intrinsics come from each view's metadata line: fov = 2 atan(sensor / 2 / focal), fx = fy = W / 2 / tan(fov / 2)
  = W focal / sensor, principal point at the image centre (bug #7: FoV from the intrinsics). 35/32 mm gives the
  paper's 49.13 deg, fx = 140 px at 128 px;
- points are remapped to the renders' frame with the paper's (x, y, z) -> (-z, x, -y) and stored whole (float32);
  centring and FPS to 1024 happen in the collator, as the paper does them per sample;
- images are stored as they are on disk (PNG bytes, no re-encoding); the collator drops alpha by compositing over
  black, which equals the paper's "take RGB" for renders whose transparent pixels are black;
- the split is the paper's: every ``<synset>/<model>`` sorted, shuffled with Python's ``random`` seeded with
  ``seed + 1`` (43 for the paper's seed 42), then 75 % train, 20 % validation, 5 % test;
- a view whose image or matrix is missing, whose PNG does not decode (corrupt or truncated bytes) or declares more than
  ``MAX_IMAGE_PIXELS`` pixels, whose matrix is unreadable, non-finite or not rigid (rotation orthonormal with
  determinant +1, last row 0 0 0 1), or whose metadata focal or sensor size is zero, negative or NaN is dropped and
  recorded in the summary with its object id, view and reason (``BuildSummary.dropped``, counted in ``dropped_frames``);
  the views are the numbered ``.png`` and ``.txt`` files, and a gap in the numbering is reported as a missing view; no
  bad value is ever written. An object without a point file, with an unreadable point file (zero-byte, corrupt, pickled)
  or with fewer than ``min_views`` good views is skipped with its reason (``BuildSummary.skipped``).
"""

from __future__ import annotations

import math
import os
import random
import time

import numpy as np

from ..rendering.cameras import check_rigid_transforms
from .schemas import (
    OBJECT_FEATURES,
    BuildSummary,
    ShardedParquetWriter,
    dataset_output,
    folder_size,
    open_image,
    write_dataset_card,
)
from .transforms import shapenet_axis_remap

__all__ = ["list_shapenet_objects", "shapenet_split", "read_shapenet_object", "convert_shapenet"]


def _image_dir(root: str) -> str:
    return os.path.join(root, "image") if os.path.isdir(os.path.join(root, "image")) else root


def list_shapenet_objects(root: str) -> list[str]:
    """Sorted ``"<synset>/<model>"`` ids of every object folder under ``<root>/image``."""
    image_dir = _image_dir(root)
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f"no ShapeNet image folder at {image_dir}")
    out = []
    for synset in sorted(os.listdir(image_dir)):
        sdir = os.path.join(image_dir, synset)
        if os.path.isdir(sdir):
            out.extend(f"{synset}/{m}" for m in sorted(os.listdir(sdir)) if os.path.isdir(os.path.join(sdir, m)))
    return sorted(out)


def shapenet_split(object_ids: list[str], seed: int = 42) -> dict[str, list[str]]:
    """The paper's random 75/20/5 split: sort, shuffle with ``random.seed(seed + 1)``, cut."""
    ids = sorted(object_ids)
    random.Random(seed + 1).shuffle(ids)
    n_train, n_val = int(0.75 * len(ids)), int(0.95 * len(ids))
    return {"train": ids[:n_train], "validation": ids[n_train:n_val], "test": ids[n_val:]}


def _read_matrix(path: str) -> np.ndarray:
    values = np.loadtxt(path, dtype=np.float64).reshape(-1)
    if values.size != 16:
        raise ValueError(f"{path}: expected 16 numbers, got {values.size}")
    return values.reshape(4, 4)


def _view_numbers(view_dir: str) -> list[tuple[int, str]]:
    """``(view, file stem)`` of every view an object should have: the numbered ``.png`` and ``.txt`` files, plus any
    number missing between 0 and the largest (a view whose image and camera are both gone is still reported)."""
    stems: dict[int, str] = {}
    for name in os.listdir(view_dir):
        stem, ext = os.path.splitext(name)
        if ext in (".png", ".txt") and stem.isdigit():
            stems.setdefault(int(stem), stem)
    if not stems:
        return []
    width = max(len(s) for s in stems.values())
    return [(v, stems.get(v, f"{v:0{width}d}")) for v in range(max(stems) + 1)]


def read_shapenet_object(root: str, object_id: str, summary: BuildSummary | None = None, default_fov_deg=None):
    """Read one object; returns a row dict of :data:`OBJECT_FEATURES`, or raises ``ValueError`` with the reason.

    Dropped views are recorded with ``summary.drop(object_id, "view NN: reason")``.
    """
    synset, model = object_id.split("/")
    view_dir = os.path.join(_image_dir(root), synset, model, "easy")
    if not os.path.isdir(view_dir):
        raise ValueError("missing easy/ folder")
    pts_root = (
        os.path.join(root, "pts") if os.path.isdir(os.path.join(root, "pts")) else os.path.join(root, "..", "pts")
    )
    pts_path = os.path.join(pts_root, f"{synset}-{model}.npy")
    if not os.path.isfile(pts_path):
        raise ValueError(f"missing point file pts/{synset}-{model}.npy")
    try:  # allow_pickle=False: a point file never runs code; a zero-byte file raises EOFError
        points = np.load(pts_path, allow_pickle=False).astype(np.float32)
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(f"unreadable point file ({err})") from err
    if points.ndim != 2 or points.shape[1] < 3 or len(points) == 0 or not np.isfinite(points[:, :3]).all():
        raise ValueError(f"point file must hold a finite [N, >=3] array, got shape {points.shape}")
    metadata = []
    meta_path = os.path.join(view_dir, "rendering_metadata.txt")
    if os.path.isfile(meta_path):
        with open(meta_path) as f:
            metadata = [line.split() for line in f if line.strip()]
    elif default_fov_deg is None:
        raise ValueError("missing rendering_metadata.txt (pass a default FoV to convert anyway)")
    views = _view_numbers(view_dir)
    images, c2ws, intrs, size = [], [], [], None
    for view, stem in views:
        try:
            image_path, matrix_path = os.path.join(view_dir, f"{stem}.png"), os.path.join(view_dir, f"{stem}.txt")
            if not os.path.isfile(image_path):
                raise ValueError(f"missing image {stem}.png")
            if not os.path.isfile(matrix_path):
                raise ValueError(f"missing camera {stem}.txt")
            c2w = _read_matrix(matrix_path)
            if not np.isfinite(c2w).all():
                raise ValueError(f"non-finite camera matrix in {stem}.txt")
            try:
                check_rigid_transforms(f"{stem}.txt", c2w)
            except ValueError as err:
                raise ValueError(f"bad camera matrix: {err}") from err
            with open(image_path, "rb") as f:
                data = f.read()
            try:  # decode fully (bounded in pixels): a truncated, corrupt or huge file must not reach the collator
                with open_image(data) as img:
                    w, h = img.size
            except (OSError, SyntaxError, ValueError) as err:
                raise ValueError(f"unreadable image {stem}.png ({err})") from err
            if size is not None and (w, h) != size:
                raise ValueError(f"image {stem}.png is {w}x{h}, the object's first view is {size[0]}x{size[1]}")
            if view < len(metadata):
                focal, sensor = float(metadata[view][4]), float(metadata[view][5])
                if not (math.isfinite(focal) and math.isfinite(sensor) and focal > 0 and sensor > 0):
                    raise ValueError(
                        f"metadata line {view + 1} has focal {focal} mm and sensor {sensor} mm; both must be finite "
                        "and positive"
                    )
                fov = 2 * math.atan(0.5 * sensor / focal)
            elif default_fov_deg is not None:
                fov = math.radians(default_fov_deg)
            else:
                raise ValueError(f"no metadata line for view {view}")
        except (OSError, ValueError, IndexError) as err:
            if summary is not None:
                summary.drop(object_id, f"view {stem}: {err}")
            continue
        size = (w, h)
        fx = 0.5 * w / math.tan(0.5 * fov)
        fy = 0.5 * h / math.tan(0.5 * fov)
        images.append({"bytes": data, "path": None})
        c2ws.append(c2w.astype(np.float32))
        intrs.append(np.array([fx, fy, 0.5 * w, 0.5 * h], dtype=np.float32))
    if not images:
        raise ValueError("no readable view")
    return {
        "id": object_id,
        "category": synset,
        "points": shapenet_axis_remap(points[:, :3]).astype(np.float32),
        "colors": np.zeros((0, 3), dtype=np.uint8),
        "images": images,
        "camera_to_world": np.stack(c2ws),
        "intrinsics": np.stack(intrs),
        "width": size[0],
        "height": size[1],
    }


def convert_shapenet(
    root: str,
    out_dir: str,
    seed: int = 42,
    min_views: int = 5,
    max_objects: int | None = None,
    default_fov_deg: float | None = None,
    rows_per_shard: int = 256,
    show_progress: bool = True,
    overwrite: bool = False,
) -> BuildSummary:
    """Convert a ShapeNet multi-view tree (see the module docstring) into ``out_dir``; returns the summary.

    The set is built in a sibling folder and replaces ``out_dir`` only once complete (:func:`dataset_output`); an
    existing non-empty ``out_dir`` is refused unless ``overwrite``.
    """
    from tqdm.auto import tqdm

    if default_fov_deg is not None and not (0 < default_fov_deg < 180):
        raise ValueError(f"`default_fov_deg` must be in (0, 180) degrees, got {default_fov_deg}")
    start = time.perf_counter()
    ids = list_shapenet_objects(root)
    if max_objects is not None:
        ids = ids[:max_objects]
    splits = shapenet_split(ids, seed)
    summary = BuildSummary("shapenet")
    with dataset_output(out_dir, overwrite) as build_dir:
        bar = tqdm(total=len(ids), desc="shapenet", unit="object", disable=not show_progress)
        for split, split_ids in splits.items():
            writer = ShardedParquetWriter(build_dir, split, OBJECT_FEATURES, rows_per_shard=rows_per_shard)
            for object_id in split_ids:
                bar.update(1)
                try:
                    row = read_shapenet_object(root, object_id, summary, default_fov_deg)
                except ValueError as err:
                    summary.skip(object_id, str(err))
                    continue
                if len(row["images"]) < min_views:
                    summary.skip(object_id, f"too few good views: {len(row['images'])} < {min_views}")
                    continue
                writer.write(row)
            writer.close()
            summary.rows_written[split] = writer.num_rows
        bar.close()
        write_dataset_card(
            build_dir,
            OBJECT_FEATURES,
            summary.rows_written,
            pretty_name="ShapeNet multi-view (UniPre3D format)",
            license="other",
            tags=["shapenet"],
            load_path=out_dir,
            description=f"""Converted from a ShapeNet multi-view render tree (`{os.path.abspath(root)}`) with
`python scripts/build_dataset.py shapenet --root ... --seed {seed}`. ShapeNet's terms of use apply (non-commercial
research; the data can't be redistributed). Split: the paper's random 75/20/5 split (sorted ids shuffled with
`random.seed({seed + 1})`). Points: the `pts/*.npy` cloud, axes remapped (x, y, z) -> (-z, x, -y) into the frame of
the cameras, not centred. Cameras: the per-view camera-to-world matrices (OpenCV axes), each checked to be rigid;
intrinsics from each view's `rendering_metadata.txt` focal and sensor sizes (finite and positive, else the view is
dropped), principal point at the centre, pixel centres at +0.5. Images: the original PNGs. Rows written:
{summary.rows_written}; skipped: {len(summary.skipped)}; views dropped: {summary.dropped_frames}.""",
        )
        summary.bytes_on_disk = folder_size(build_dir)
    summary.seconds = time.perf_counter() - start
    return summary
