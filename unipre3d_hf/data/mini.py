"""Built-in real mini data sets, rendered from the textured meshes that ship inside the ``pybullet`` wheel.

Nothing is downloaded: ``pybullet_data`` (inside the pybullet wheel on PyPI) holds the meshes and textures, and
pybullet's CPU renderer (``ER_TINY_RENDERER``) draws them offline. pybullet is imported lazily, only by the builders.

- ``objects-mini`` (:func:`build_objects_mini`): each mesh in several random orientations and sizes; ``views`` RGBA
  views at 128x128 on a sphere around it with the paper's FoV (49.13 deg, fx = fy = 140 px), alpha from the
  renderer's segmentation mask, anti-aliased as the paper's Blender renders: each view is rendered at ``supersample``
  x the size and box-filtered, so an edge pixel's alpha is its covered fraction (the paper's objects are on black:
  the collator composites over its ``background``); points on the surface with their texture colour, obtained by
  unprojecting the rendered (supersampled) depth of the views plus six axis-aligned ones, reduced on a fine voxel
  grid and stored in farthest-point order (so the first ``k`` points are the FPS-``k`` subset).
- ``scenes-mini`` (:func:`build_scenes_mini`): small rooms (floor, four walls, tables, trays and objects placed at
  random) seen along a camera loop: RGB-D frames at 160x120 (ScanNet's 4:3 aspect, fx = fy = 577.87 / 4 as the
  paper's 160x120 ScanNet frames), poses, and the point cloud fused from the depth frames at 2 cm with colours,
  normals from the depth maps, and semantic / instance labels from the segmentation mask.

Both are deterministic for a seed. Cameras follow the package convention: OpenCV axes, intrinsics (fx, fy, cx, cy)
with pixel centres at +0.5. pybullet takes OpenGL matrices; the conversion is in :func:`_render`.
"""

from __future__ import annotations

import io
import math
import os
import time

import numpy as np
from PIL import Image

from ..rendering.synthetic import SCANNET_FX_160, SHAPENET_FOV_DEG
from ._geometry import normals_from_camera_points, unproject_depth, voxel_reduce
from .schemas import (
    DEPTH_SCALE,
    OBJECT_FEATURES,
    SCENE_FEATURES,
    BuildSummary,
    ShardedParquetWriter,
    dataset_output,
    folder_size,
    write_dataset_card,
)
from .transforms import farthest_point_order

__all__ = [
    "OBJECT_MESHES",
    "SCENE_CLASSES",
    "build_objects_mini",
    "build_scenes_mini",
    "load_mini_dataset",
    "DEFAULT_MINI_ROOT",
]

DEFAULT_MINI_ROOT = "data"

#: (name, file inside pybullet_data, kind, flat colour for untextured meshes)
OBJECT_MESHES = (
    ("duck", "duck_vhacd.urdf", "urdf", None),
    ("teddy", "teddy_vhacd.urdf", "urdf", None),
    ("mug", "objects/mug.urdf", "urdf", None),
    ("jenga", "jenga/jenga.urdf", "urdf", None),
    ("domino", "domino/domino.urdf", "urdf", None),
    ("table", "table/table.urdf", "urdf", None),
    ("square_table", "table_square/table_square.urdf", "urdf", None),
    ("tray", "tray/traybox.urdf", "urdf", None),
    ("soccer_ball", "soccerball.urdf", "urdf", None),
    ("lego", "lego/lego.urdf", "urdf", None),
    ("torus", "torus/torus_textured.obj", "obj", None),
    ("bunny", "bunny.obj", "obj", (0.75, 0.55, 0.4, 1.0)),
)

#: semantic classes of scenes-mini (``segment`` ids index this tuple); floor and walls have no instance (-1)
SCENE_CLASSES = ("wall", "floor", "table", "tray", "duck", "teddy", "mug", "jenga", "soccer_ball", "lego", "cube")
_SCENE_OBJECTS = (  # (class, file, size range of the largest side in metres, goes on a table)
    ("duck", "duck_vhacd.urdf", (0.15, 0.3), True),
    ("teddy", "teddy_vhacd.urdf", (0.25, 0.5), False),
    ("mug", "objects/mug.urdf", (0.1, 0.15), True),
    ("jenga", "jenga/jenga.urdf", (0.15, 0.3), True),
    ("soccer_ball", "soccerball.urdf", (0.22, 0.3), False),
    ("lego", "lego/lego.urdf", (0.08, 0.16), True),
    ("cube", "cube.urdf", (0.3, 0.5), False),
    ("tray", "tray/traybox.urdf", (0.35, 0.5), True),
)
_FLOOR_TEXTURES = ("table/table.png", "checker_grid.jpg", "checker_blue.png")


# ----------------------------------------------------------------------------------------------------- pybullet
def _connect():
    try:
        import pybullet as p
        import pybullet_data
    except ImportError as err:
        raise ImportError(
            "building the mini data sets needs pybullet: pip install 'unipre3d_hf[data]' (or pip install pybullet)"
        ) from err
    cid = p.connect(p.DIRECT)
    p.setAdditionalSearchPath(pybullet_data.getDataPath(), physicsClientId=cid)
    return p, cid, pybullet_data.getDataPath()


def _render(p, cid, c2w: np.ndarray, intrinsics, width: int, height: int, near: float, far: float):
    """Render one view; returns rgb ``[H, W, 3]`` uint8, z-depth ``[H, W]`` metres (inf where empty), seg ``[H, W]``.

    OpenCV camera axes (x right, y down, z forward) become OpenGL's (x right, y up, z backward) with
    ``diag(1, -1, -1, 1) @ w2c``. The projection is OpenGL's perspective matrix written with pixel focal lengths
    (``P[0, 0] = 2 fx / W``, ``P[1, 1] = 2 fy / H``) and a principal-point column ``P[0, 2]``, ``P[1, 2]`` chosen so
    that pixel ``(i, j)`` sees the ray through ``(j + 0.5, i + 0.5)`` of the intrinsics, the package convention.
    ``ER_TINY_RENDERER`` samples pixel ``(i, j)`` at the integer screen point ``x = j``, ``y = H - 1 - i`` (measured:
    an edge rendered at a known position), so a centred frustum would be off by half a pixel in x and in y, and
    unprojected depth would not land back on its own silhouette. pybullet takes both matrices as column-major lists
    of 16 floats.
    """
    fx, fy, cx, cy = (float(v) for v in intrinsics)
    w2c = np.linalg.inv(c2w)
    view = np.diag([1.0, -1.0, -1.0, 1.0]) @ w2c
    proj = np.zeros((4, 4))
    proj[0, 0], proj[1, 1] = 2 * fx / width, 2 * fy / height
    # screen x = (ndc_x + 1) W / 2 must be j = u - 0.5; screen y = (ndc_y + 1) H / 2 must be H - 1 - i = H - v - 0.5
    proj[0, 2] = 1.0 - (2 * cx - 1) / width
    proj[1, 2] = (2 * cy + 1) / height - 1.0
    proj[2, 2], proj[2, 3] = -(far + near) / (far - near), -2 * far * near / (far - near)
    proj[3, 2] = -1.0
    _, _, rgba, depth_buf, seg = p.getCameraImage(
        width,
        height,
        viewMatrix=view.T.reshape(-1).tolist(),
        projectionMatrix=proj.T.reshape(-1).tolist(),
        renderer=p.ER_TINY_RENDERER,
        shadow=0,
        physicsClientId=cid,
    )
    rgb = np.asarray(rgba, dtype=np.uint8).reshape(height, width, 4)[..., :3]
    seg = np.asarray(seg, dtype=np.int64).reshape(height, width)
    d = np.asarray(depth_buf, dtype=np.float64).reshape(height, width)
    # OpenGL depth buffer -> eye-space z: z = f n / (f - (f - n) d)
    z = far * near / (far - (far - near) * d)
    z[(seg < 0) | (d >= 1.0)] = np.inf
    return rgb, z, seg


def _look_at(eye: np.ndarray, target: np.ndarray, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Camera-to-world ``[4, 4]`` (OpenCV axes) at ``eye`` looking at ``target``, image up towards ``up``."""
    forward = target - eye
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, np.asarray(up, dtype=np.float64))
    right = right / np.linalg.norm(right)
    down = np.cross(forward, right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, down, forward, eye
    return c2w


def _random_quaternion(rng: np.random.Generator) -> list[float]:
    """Uniform random rotation (Shoemake 1992, "Uniform random rotations"), as pybullet's (x, y, z, w)."""
    u1, u2, u3 = rng.random(3)
    a, b = math.sqrt(1 - u1), math.sqrt(u1)
    t2, t3 = 2 * math.pi * u2, 2 * math.pi * u3
    return [a * math.sin(t2), a * math.cos(t2), b * math.sin(t3), b * math.cos(t3)]


def _body_aabb(p, cid, body: int) -> tuple[np.ndarray, np.ndarray]:
    lows, highs = [], []
    for link in range(-1, p.getNumJoints(body, physicsClientId=cid)):
        lo, hi = p.getAABB(body, link, physicsClientId=cid)
        lows.append(lo)
        highs.append(hi)
    return np.min(lows, axis=0), np.max(highs, axis=0)


def _load(p, cid, data_dir, file, kind, color, position, orientation, scale) -> int:
    if kind == "urdf":
        return p.loadURDF(file, position, orientation, globalScaling=scale, useFixedBase=True, physicsClientId=cid)
    path = os.path.join(data_dir, file)
    vis_kwargs = {"rgbaColor": list(color)} if color is not None else {}
    vis = p.createVisualShape(p.GEOM_MESH, fileName=path, meshScale=[scale] * 3, physicsClientId=cid, **vis_kwargs)
    col = p.createCollisionShape(p.GEOM_MESH, fileName=path, meshScale=[scale] * 3, physicsClientId=cid)
    return p.createMultiBody(0, col, vis, position, orientation, physicsClientId=cid)


def _load_normalized(p, cid, data_dir, file, kind, color, orientation, size, base=(0.0, 0.0, 0.0), rest=False):
    """Load a mesh whose largest AABB side is ``size``: centred at ``base`` (or resting on z = base[2] when ``rest``).
    Returns (body, aabb_low, aabb_high)."""
    body = _load(p, cid, data_dir, file, kind, color, [0, 0, 0], orientation, 1.0)
    lo, hi = _body_aabb(p, cid, body)
    p.removeBody(body, physicsClientId=cid)
    scale = size / float(np.max(hi - lo))
    center = (lo + hi) / 2 * scale
    offset = np.asarray(base, dtype=np.float64) - center
    if rest:
        offset[2] = base[2] - lo[2] * scale
    body = _load(p, cid, data_dir, file, kind, color, offset.tolist(), orientation, scale)
    lo, hi = _body_aabb(p, cid, body)
    return body, lo, hi


def _png(array: np.ndarray) -> dict:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", optimize=False, compress_level=9)
    return {"bytes": buf.getvalue(), "path": None}


def _encode(array: np.ndarray, image_format: str = "png") -> dict:
    """Encode an image for an ``Image()`` column: lossless PNG, or JPEG (quality 90, RGB only) for smaller sets."""
    if image_format == "png":
        return _png(array)
    if image_format != "jpeg":
        raise ValueError(f"`image_format` must be 'png' or 'jpeg', got {image_format!r}")
    buf = io.BytesIO()
    Image.fromarray(array[..., :3]).save(buf, format="JPEG", quality=90)
    return {"bytes": buf.getvalue(), "path": None}


def _orbit_eyes(rng: np.random.Generator, views: int, elevation_deg, radius) -> list[np.ndarray]:
    """``views`` camera centres around the origin: azimuth stratified over the circle, elevation (degrees) and
    distance uniform in the given ranges (drawn in this order per view)."""
    eyes = []
    for v in range(views):
        azim = 2 * math.pi * (v + rng.random()) / views
        elev = math.radians(rng.uniform(*elevation_deg))
        dist = rng.uniform(*radius)
        eyes.append(dist * np.array([math.cos(elev) * math.cos(azim), math.cos(elev) * math.sin(azim), math.sin(elev)]))
    return eyes


def check_supersample(supersample) -> None:
    """``supersample`` (the object views' render scale) must be an integer >= 1."""
    if not isinstance(supersample, int) or supersample < 1:
        raise ValueError(f"`supersample` must be an integer >= 1, got {supersample!r}")


def _box_filter(rgb: np.ndarray, mask: np.ndarray, s: int) -> tuple[np.ndarray, np.ndarray]:
    """Anti-alias a view rendered at ``s`` x the output size: ``[sH, sW, 3]`` uint8 colours and ``[sH, sW]`` bool
    object mask become ``[H, W, 3]`` uint8 straight (not premultiplied) colour and ``[H, W]`` uint8 alpha. Each output
    pixel averages its ``s x s`` block: alpha = the covered fraction (x 255, rounded), colour = the mean of the covered
    sub-pixels (premultiplied averaging, then divided by the coverage; black where nothing is covered), so that
    compositing ``rgb * a + bg * (1 - a)`` (the collators) equals averaging the sub-pixels composited over ``bg``.
    With ``s = 1`` it returns the mask as 0 / 255 and the colour unchanged where covered."""
    h, w = mask.shape[0] // s, mask.shape[1] // s
    m = mask.reshape(h, s, w, s).astype(np.float64)
    count = m.sum(axis=(1, 3))
    total = (rgb.reshape(h, s, w, s, 3).astype(np.float64) * m[..., None]).sum(axis=(1, 3))
    colour = np.where(count[..., None] > 0, total / np.maximum(count, 1.0)[..., None], 0.0)
    alpha = np.rint(255.0 * count / (s * s))
    return np.clip(np.rint(colour), 0, 255).astype(np.uint8), alpha.astype(np.uint8)


def _object_views_and_points(
    p,
    cid,
    bodies: set,
    eyes,
    intr,
    image_size: int,
    voxel: float,
    num_points: int,
    rng,
    image_format: str = "png",
    supersample: int = 1,
):
    """Render the bodies (one object, centred at the origin) from each eye looking at the origin; returns the encoded
    RGBA views (alpha = the object's mask, RGB black outside; RGB on black for JPEG), their camera-to-world
    ``[V, 4, 4]`` float32, and ``num_points`` surface points ``[n, 3]`` float32 with colours ``[n, 3]`` uint8 in
    farthest-point order, obtained by unprojecting the depth of the views and of six axis-aligned views at 1.75,
    reduced on a ``voxel`` grid. Points and colours are None when fewer than 16 surface pixels were seen.

    ``supersample`` = s > 1 renders each view at ``s * image_size`` with the intrinsics ``s * intr`` (pixel centres at
    +0.5 at both sizes, so output pixel ``j`` is covered by sub-pixels ``s j .. s j + s - 1``) and box-filters it to
    ``image_size`` (:func:`_box_filter`): anti-aliased views as Blender's renders of the paper's ShapeNet views, alpha
    the covered fraction (for JPEG the RGB is composited over black). Points come from the high-resolution depth of
    the same cameras. ``intr`` (``[4]``: fx, fy, cx, cy) stays that of ``image_size``; s = 1 is a plain render."""
    check_supersample(supersample)
    images, c2ws, world_pts, world_rgb = [], [], [], []
    seg_ids = np.array(sorted(bodies))
    extra = [1.75 * np.array(d, dtype=np.float64) for d in np.vstack([np.eye(3), -np.eye(3)])]
    size = supersample * image_size
    intr_hi = np.asarray(intr, dtype=np.float64) * supersample  # u' = s u for fx, fy, cx, cy alike
    for i, eye in enumerate(list(eyes) + extra):
        up = (0.0, 1.0, 0.0) if abs(eye[2]) > 0.99 * np.linalg.norm(eye) else (0.0, 0.0, 1.0)
        c2w = _look_at(eye, np.zeros(3), up)
        rgb, z, seg = _render(p, cid, c2w, intr_hi, size, size, 0.1, 10.0)
        mask = np.isin(seg, seg_ids)
        cam = unproject_depth(np.where(mask, z, 0.0), intr_hi)[mask]
        world_pts.append(cam @ c2w[:3, :3].T + c2w[:3, 3])
        world_rgb.append(rgb[mask])
        if i < len(eyes):
            colour, alpha = _box_filter(rgb, mask, supersample)
            if image_format == "jpeg":  # no alpha channel: composite over black (premultiply)
                colour = np.rint(colour * (alpha[..., None] / 255.0)).astype(np.uint8)
            images.append(_encode(np.concatenate([colour, alpha[..., None]], axis=-1), image_format))
            c2ws.append(c2w.astype(np.float32))
    pts, cols = np.concatenate(world_pts), np.concatenate(world_rgb)
    if len(pts) < 16:
        return images, np.stack(c2ws), None, None
    pts, attrs = voxel_reduce(pts, voxel, rng, colors=cols.astype(np.float64))
    if len(pts) > 3 * num_points:
        sub = rng.choice(len(pts), 3 * num_points, replace=False)
        pts, attrs = pts[sub], {"colors": attrs["colors"][sub]}
    order = farthest_point_order(pts, num_points)
    colors = np.clip(np.rint(attrs["colors"][order]), 0, 255).astype(np.uint8)
    return images, np.stack(c2ws), pts[order].astype(np.float32), colors


def _edges_text(supersample: int) -> str:
    """How the object views' edges were made, for the dataset cards."""
    if supersample == 1:
        return "binary masks sampled at pixel centres"
    return f"rendered at {supersample}x the size and box-filtered: anti-aliased, alpha = each pixel's covered fraction"


def _progress(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="row")


# ------------------------------------------------------------------------------------------------------ objects
def build_objects_mini(
    out_dir: str = os.path.join(DEFAULT_MINI_ROOT, "objects-mini"),
    num_objects: int | None = None,
    poses: int = 6,
    views: int = 24,
    image_size: int = 128,
    num_points: int = 2048,
    seed: int = 0,
    show_progress: bool = True,
    overwrite: bool = False,
    supersample: int = 2,
) -> BuildSummary:
    """Render the object mini set (see the module docstring) into ``out_dir`` and return its summary.

    The set is built in a sibling folder and replaces ``out_dir`` only once complete (:func:`dataset_output`); an
    existing non-empty ``out_dir`` is refused unless ``overwrite``.

    Args:
        num_objects: how many meshes of :data:`OBJECT_MESHES` to use (default all 12).
        poses: random orientation + size draws per mesh; the last pose of each mesh goes to the ``validation``
            split when ``poses >= 2``.
        views: views per row, on a sphere (stratified azimuth, elevation in [-20, 60] deg, radius in [1.4, 1.9]).
        image_size: square image side; the focal length follows the paper's FoV (140 px at 128).
        num_points: surface points per row, stored in farthest-point order.
        supersample: render at this many times ``image_size`` and box-filter down (anti-aliased views, alpha the
            covered fraction; 1 = binary masks sampled at pixel centres), see :func:`_object_views_and_points`.
    """
    start = time.perf_counter()
    meshes = OBJECT_MESHES[: num_objects or len(OBJECT_MESHES)]
    if poses < 1 or views < 1 or image_size < 8 or num_points < 1 or not meshes:
        raise ValueError("need poses >= 1, views >= 1, image_size >= 8, num_points >= 1 and at least one mesh")
    check_supersample(supersample)
    with dataset_output(out_dir, overwrite) as build_dir:
        p, cid, data_dir = _connect()
        rng = np.random.default_rng(seed)
        focal = 0.5 * image_size / math.tan(0.5 * math.radians(SHAPENET_FOV_DEG))
        intr = np.array([focal, focal, image_size / 2, image_size / 2], dtype=np.float32)
        writers = {"train": ShardedParquetWriter(build_dir, "train", OBJECT_FEATURES, rows_per_shard=128)}
        if poses >= 2:
            writers["validation"] = ShardedParquetWriter(build_dir, "validation", OBJECT_FEATURES, rows_per_shard=128)
        summary = BuildSummary("objects-mini")
        bar = _progress(len(meshes) * poses, "objects-mini") if show_progress else None
        try:
            for name, file, kind, color in meshes:
                for pose in range(poses):
                    size = rng.uniform(0.6, 1.0)
                    body, _, _ = _load_normalized(p, cid, data_dir, file, kind, color, _random_quaternion(rng), size)
                    eyes = _orbit_eyes(rng, views, (-20.0, 60.0), (1.4, 1.9))
                    images, c2ws, pts, cols = _object_views_and_points(
                        p, cid, {body}, eyes, intr, image_size, size / 200.0, num_points, rng, supersample=supersample
                    )
                    p.removeBody(body, physicsClientId=cid)
                    row_id = f"{name}/pose{pose:02d}"
                    if pts is None:
                        summary.skip(row_id, "too few visible surface points")
                        continue
                    split = "validation" if (poses >= 2 and pose == poses - 1) else "train"
                    writers[split].write(
                        {
                            "id": row_id,
                            "category": name,
                            "points": pts,
                            "colors": cols,
                            "images": images,
                            "camera_to_world": c2ws,
                            "intrinsics": np.tile(intr, (views, 1)),
                            "width": image_size,
                            "height": image_size,
                        }
                    )
                    if bar is not None:
                        bar.update(1)
        finally:
            p.disconnect(physicsClientId=cid)
            if bar is not None:
                bar.close()
        for split, writer in writers.items():
            writer.close()
            summary.rows_written[split] = writer.num_rows
        names = ", ".join(m[0] for m in meshes)
        write_dataset_card(
            build_dir,
            OBJECT_FEATURES,
            summary.rows_written,
            pretty_name="UniPre3D objects-mini",
            license="other",
            tags=["pybullet", "synthetic-renders"],
            load_path=out_dir,
            description=f"""Object-level pre-training data in the ShapeNet multi-view layout, made from the textured
meshes that ship inside the `pybullet` wheel (`pybullet_data`: {names}). Each mesh appears in {poses} random
orientations and sizes (largest side 0.6-1.0); each row has {views} RGBA views at {image_size}x{image_size}, rendered
with pybullet's CPU renderer (`ER_TINY_RENDERER`) on a sphere of radius 1.4-1.9 around the object with the paper's FoV
({SHAPENET_FOV_DEG:.4f} deg, fx = fy = {focal:.1f} px, principal point at the centre), alpha from the segmentation
mask ({_edges_text(supersample)}). Cameras: camera-to-world, OpenCV axes (x right, y down, z forward);
intrinsics (fx, fy, cx, cy) in pixels with pixel centres at +0.5. Points: {num_points} per row, on the surface with
their rendered texture colour (depth of the views and 6 axis-aligned views unprojected, reduced on a grid of size/200,
stored in farthest-point order); no axis remap is needed (points and cameras share the world frame). The last pose of
each mesh is the `validation` split.

Built with `python scripts/build_dataset.py objects-mini --poses {poses} --views {views} --seed {seed}
--supersample {supersample}` (deterministic for a seed). Licence: the meshes and textures are those distributed with
pybullet (see the `pybullet_data` folder of the pybullet package for each model's terms; the bullet3 repository is
zlib-licensed).""",
        )
        summary.bytes_on_disk = folder_size(build_dir)
    summary.seconds = time.perf_counter() - start
    return summary


# ------------------------------------------------------------------------------------------------------- scenes
def _box(p, cid, half_extents, position, rgba, texture=None) -> int:
    vis = p.createVisualShape(p.GEOM_BOX, halfExtents=half_extents, rgbaColor=rgba, physicsClientId=cid)
    col = p.createCollisionShape(p.GEOM_BOX, halfExtents=half_extents, physicsClientId=cid)
    body = p.createMultiBody(0, col, vis, position, physicsClientId=cid)
    if texture is not None:
        p.changeVisualShape(body, -1, textureUniqueId=texture, rgbaColor=[1, 1, 1, 1], physicsClientId=cid)
    return body


def _yaw_quaternion(yaw: float) -> list[float]:
    return [0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2)]


def _build_room(p, cid, data_dir, rng: np.random.Generator) -> tuple[dict[int, tuple[int, int]], np.ndarray]:
    """Floor, walls, 1-2 tables with things on them and things on the floor. Returns {body: (class, instance)} and
    the room's half sizes (x, y)."""
    half = np.array([rng.uniform(1.1, 1.6), rng.uniform(1.1, 1.6)])
    height = 2.2
    labels: dict[int, tuple[int, int]] = {}
    floor_tex = p.loadTexture(os.path.join(data_dir, _FLOOR_TEXTURES[rng.integers(len(_FLOOR_TEXTURES))]))
    floor = _box(p, cid, [half[0], half[1], 0.01], [0, 0, -0.01], [1, 1, 1, 1], floor_tex)
    labels[floor] = (SCENE_CLASSES.index("floor"), -1)
    wall_rgb = rng.uniform(0.55, 0.95, 3)
    for axis in range(2):
        for sign in (-1, 1):
            ext = [half[0], 0.02, height / 2] if axis == 1 else [0.02, half[1], height / 2]
            pos = [0.0, 0.0, height / 2]
            pos[1 - axis] = 0.0
            pos[axis] = sign * (half[axis] + 0.02)
            shade = np.clip(wall_rgb * rng.uniform(0.85, 1.0), 0, 1)
            labels[_box(p, cid, ext, pos, [*shade, 1.0])] = (SCENE_CLASSES.index("wall"), -1)
    instance = 0
    placed: list[tuple[np.ndarray, float]] = []

    def free_spot(radius: float, margin: float = 0.05):
        for _ in range(50):
            xy = rng.uniform(-half + radius + 0.1, half - radius - 0.1)
            if all(np.linalg.norm(xy - c) > radius + r + margin for c, r in placed):
                placed.append((xy, radius))
                return xy
        return None

    table_tops = []
    for _ in range(int(rng.integers(1, 3))):
        file = "table/table.urdf" if rng.random() < 0.5 else "table_square/table_square.urdf"
        size = rng.uniform(0.9, 1.4)
        xy = free_spot(size / 2)
        if xy is None:
            continue
        body, lo, hi = _load_normalized(
            p, cid, data_dir, file, "urdf", None, _yaw_quaternion(rng.uniform(0, 2 * math.pi)), size,
            base=(xy[0], xy[1], 0.0), rest=True,
        )  # fmt: skip
        labels[body] = (SCENE_CLASSES.index("table"), instance)
        instance += 1
        table_tops.append((lo, hi))
    for _ in range(int(rng.integers(4, 8))):
        cls, file, size_range, on_table = _SCENE_OBJECTS[rng.integers(len(_SCENE_OBJECTS))]
        size = rng.uniform(*size_range)
        orient = _yaw_quaternion(rng.uniform(0, 2 * math.pi))
        if on_table and table_tops:
            lo, hi = table_tops[rng.integers(len(table_tops))]
            inner = 0.25 * (hi[:2] - lo[:2])
            center = (lo[:2] + hi[:2]) / 2
            xy = rng.uniform(center - inner, center + inner)
            base = (xy[0], xy[1], hi[2])
        else:
            xy = free_spot(size / 2)
            if xy is None:
                continue
            base = (xy[0], xy[1], 0.0)
        body, _, _ = _load_normalized(p, cid, data_dir, file, "urdf", None, orient, size, base=base, rest=True)
        labels[body] = (SCENE_CLASSES.index(cls), instance)
        instance += 1
    return labels, half


def _scene_frames(
    p, cid, labels: dict, half, rng, frames: int, intr, width: int, height: int, voxel_size: float,
    image_format: str = "png",
) -> dict:  # fmt: skip
    """Render ``frames`` RGB-D frames of the room in the pybullet world along one loop of a camera path (an ellipse
    at 0.55 of the room's half sizes ``half`` (x, y), height 1.2-1.6 m, looking across the room and slightly down)
    and fuse their depth on a ``voxel_size`` grid; returns a ``SCENE_FEATURES`` row without its ``id``.

    ``labels`` maps each body to (semantic class, instance); pixels of other bodies get -1. Colours, normals (from
    the depth maps) and labels are averaged / voted per voxel by :func:`voxel_reduce`.
    """
    lut_class = {b: c for b, (c, _) in labels.items()}
    lut_inst = {b: i for b, (_, i) in labels.items()}
    phase = rng.uniform(0, 2 * math.pi)
    cam_height = rng.uniform(1.2, 1.6)
    images, depths, c2ws = [], [], []
    pts, cols, nrms, segs, insts = [], [], [], [], []
    for f in range(frames):
        theta = phase + 2 * math.pi * f / frames
        eye = np.array([0.55 * half[0] * math.cos(theta), 0.55 * half[1] * math.sin(theta), cam_height])
        look = theta + math.pi + rng.uniform(-0.35, 0.35)
        target = np.array([0.9 * half[0] * math.cos(look), 0.9 * half[1] * math.sin(look), rng.uniform(0.2, 0.7)])
        c2w = _look_at(eye, target)
        rgb, z, seg = _render(p, cid, c2w, intr, width, height, 0.05, 20.0)
        valid = np.isfinite(z) & (seg >= 0)
        depth_mm = np.where(valid, np.rint(np.where(valid, z, 0) * DEPTH_SCALE), 0).astype(np.uint16)
        images.append(_encode(rgb, image_format))
        depths.append(_png(depth_mm))
        c2ws.append(c2w.astype(np.float32))
        cam = unproject_depth(depth_mm.astype(np.float64) / DEPTH_SCALE, intr)
        normals, ok = normals_from_camera_points(cam, depth_mm > 0)
        pts.append(cam[ok] @ c2w[:3, :3].T + c2w[:3, 3])
        nrms.append(normals[ok] @ c2w[:3, :3].T)
        cols.append(rgb[ok].astype(np.float64))
        body = seg[ok] & ((1 << 24) - 1)
        segs.append(np.array([lut_class.get(int(b), -1) for b in body], dtype=np.int64).reshape(-1))
        insts.append(np.array([lut_inst.get(int(b), -1) for b in body], dtype=np.int64).reshape(-1))
    coords, attrs = voxel_reduce(
        np.concatenate(pts), voxel_size, rng,
        colors=np.concatenate(cols), normals=np.concatenate(nrms),
        segment=np.concatenate(segs), instance=np.concatenate(insts),
    )  # fmt: skip
    normals = attrs["normals"] / np.maximum(np.linalg.norm(attrs["normals"], axis=1, keepdims=True), 1e-12)
    return {
        "coords": coords,
        "colors": np.clip(np.rint(attrs["colors"]), 0, 255).astype(np.uint8),
        "normals": normals.astype(np.float32),
        "segment": attrs["segment"].astype(np.int32),
        "instance": attrs["instance"].astype(np.int32),
        "images": images,
        "depths": depths,
        "camera_to_world": np.stack(c2ws),
        "intrinsics": np.tile(intr, (frames, 1)),
        "frame_ids": np.arange(frames, dtype=np.int32),
        "width": width,
        "height": height,
    }


def build_scenes_mini(
    out_dir: str = os.path.join(DEFAULT_MINI_ROOT, "scenes-mini"),
    num_scenes: int = 4,
    frames: int = 48,
    width: int = 160,
    height: int = 120,
    voxel_size: float = 0.02,
    seed: int = 0,
    show_progress: bool = True,
    overwrite: bool = False,
) -> BuildSummary:
    """Render the scene mini set (see the module docstring) into ``out_dir`` and return its summary.

    The set is built in a sibling folder and replaces ``out_dir`` only once complete (:func:`dataset_output`); an
    existing non-empty ``out_dir`` is refused unless ``overwrite``.

    Args:
        num_scenes: rooms; the last one is the ``validation`` split when ``num_scenes >= 2``.
        frames: RGB-D frames per room along one loop of the camera path (height 1.2-1.6 m, looking across the room
            and slightly down).
        width, height: frame size; intrinsics are ScanNet's depth camera scaled to this width (fx = fy = 577.87 *
            width / 640), principal point at the centre.
        voxel_size: grid of the fused point cloud (metres).
    """
    start = time.perf_counter()
    if num_scenes < 1 or frames < 2 or width < 8 or height < 8 or voxel_size <= 0:
        raise ValueError("need num_scenes >= 1, frames >= 2, width and height >= 8 and voxel_size > 0")
    with dataset_output(out_dir, overwrite) as build_dir:
        p, cid, data_dir = _connect()
        rng = np.random.default_rng(seed)
        focal = SCANNET_FX_160 * width / 160.0
        intr = np.array([focal, focal, width / 2, height / 2], dtype=np.float32)
        writers = {"train": ShardedParquetWriter(build_dir, "train", SCENE_FEATURES, rows_per_shard=64)}
        if num_scenes >= 2:
            writers["validation"] = ShardedParquetWriter(build_dir, "validation", SCENE_FEATURES, rows_per_shard=64)
        summary = BuildSummary("scenes-mini")
        bar = _progress(num_scenes, "scenes-mini") if show_progress else None
        try:
            for scene in range(num_scenes):
                p.resetSimulation(physicsClientId=cid)
                labels, half = _build_room(p, cid, data_dir, rng)
                split = "validation" if (num_scenes >= 2 and scene == num_scenes - 1) else "train"
                row = _scene_frames(p, cid, labels, half, rng, frames, intr, width, height, voxel_size)
                writers[split].write({"id": f"mini_scene{scene:04d}", **row})
                if bar is not None:
                    bar.update(1)
        finally:
            p.disconnect(physicsClientId=cid)
            if bar is not None:
                bar.close()
        for split, writer in writers.items():
            writer.close()
            summary.rows_written[split] = writer.num_rows
        write_dataset_card(
            build_dir,
            SCENE_FEATURES,
            summary.rows_written,
            pretty_name="UniPre3D scenes-mini",
            license="other",
            tags=["pybullet", "synthetic-renders", "rgb-d"],
            load_path=out_dir,
            extra_yaml={"class_names": list(SCENE_CLASSES)},
            description=f"""Scene-level pre-training data in the ScanNet layout, made from the meshes that ship inside
the `pybullet` wheel (`pybullet_data`). Each row is one small room (2.2-3.2 m sides): a textured floor, four walls, one
or two tables, and 4-7 objects (duck, teddy, mug, jenga, soccer ball, lego, cube, tray) placed at random on the floor or
on a table. {frames} RGB-D frames per room at {width}x{height} (ScanNet's 4:3) follow one loop of a camera path,
rendered with pybullet's CPU renderer (`ER_TINY_RENDERER`); intrinsics are ScanNet's depth camera scaled to this
size (fx = fy = {focal:.3f} px, principal point at the centre; pixel centres at +0.5), poses are camera-to-world in
OpenCV axes, depth is a 16-bit PNG in millimetres (0 = no depth). The point cloud is fused from the depth frames on a
{voxel_size * 100:g} cm grid (mean position and colour per voxel; normals from the depth maps; labels from the
segmentation mask). `segment` indexes `class_names` ({", ".join(SCENE_CLASSES)}); `instance` numbers the tables and
objects of a room, -1 for floor and walls. The last room is the `validation` split.

Built with `python scripts/build_dataset.py scenes-mini --scenes {num_scenes} --frames {frames} --seed {seed}`
(deterministic for a seed). Licence: the meshes and textures are those distributed with pybullet (see each model's
folder in `pybullet_data`; the bullet3 repository is zlib-licensed).""",
        )
        summary.bytes_on_disk = folder_size(build_dir)
    summary.seconds = time.perf_counter() - start
    return summary


def load_mini_dataset(name: str, root: str = DEFAULT_MINI_ROOT, split: str = "train", streaming=False, build=True):
    """Load ``"objects-mini"`` or ``"scenes-mini"`` from ``<root>/<name>`` for the collators (see
    :func:`~unipre3d_hf.data.schemas.load_pretraining_dataset`), building it with the default flags first when it is
    missing and ``build`` is true (needs pybullet; about a minute on 2 cores)."""
    from .schemas import load_pretraining_dataset

    builders = {"objects-mini": build_objects_mini, "scenes-mini": build_scenes_mini}
    if name not in builders:
        raise ValueError(f"`name` must be one of {sorted(builders)}, got {name!r}")
    path = os.path.join(root, name)
    if not os.path.isfile(os.path.join(path, "README.md")):
        if not build:
            raise FileNotFoundError(f"{path} does not exist; run `python scripts/build_dataset.py {name}`")
        if os.path.isdir(path) and os.listdir(path):  # not a finished set (no card), but not ours to delete either
            raise FileExistsError(
                f"{path} holds files but no dataset card (README.md), so it is not a complete {name} set; remove it "
                f"or rebuild it with `python scripts/build_dataset.py {name} --out {path} --overwrite`"
            )
        builders[name](path, show_progress=False)  # built aside and moved in when complete (dataset_output)
    return load_pretraining_dataset(path, split=split, streaming=streaming, level=name.split("-")[0][:-1])
