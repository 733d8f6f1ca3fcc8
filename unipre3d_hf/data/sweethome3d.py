"""SweetHome3D's furniture library as real pre-training and benchmark data.

Debian's ``sweethome3d-furniture`` package holds about 820 furniture and household models made by third parties
(``/usr/share/sweethome3d/furniture/*.sh3f``; CC-BY-3.0, CC-BY-3.0-US or CC0 per pack). Each ``.sh3f`` is a zip with a
``PluginFurnitureCatalog.properties`` (a Java properties file: ``name#i``, ``category#i``, ``tags#i``, ``model#i``,
``creator#i``, ``width#i`` / ``depth#i`` / ``height#i`` in cm, ``doorOrWindow#i``, ``elevation#i``,
``modelRotation#i``) and the OBJ + MTL +
texture files of each model. :func:`build_sweethome3d` turns them into three datasets:

- ``sweethome3d-objects`` (``OBJECT_FEATURES``): each model at its catalogue proportions, upright (z up), its box
  centred at the origin and scaled to a diagonal of 1 (ShapeNet's normalisation); ``views`` textured RGBA views on
  the ShapeNet multi-view rig (FoV 49.13 deg, distance 1.75, azimuth stratified over 360 deg, elevation uniform in
  [-20, 60] deg: the objects-mini range, section 8.1 of the method reference gives no training-view ranges) and
  coloured surface points, rendered (anti-aliased by 2 x supersampling) and unprojected by the same code as
  objects-mini (:func:`~unipre3d_hf.data.mini._object_views_and_points`).
- ``sweethome3d-cls``: one row per model that :func:`classify_furniture` maps to one of :data:`CLASSES`, with the
  same points and colours and an integer ``label``; train/test split stratified by class. The test models are in the
  objects set's ``validation`` split, never in its ``train`` split.
- ``sweethome3d-rooms`` (``SCENE_FEATURES``): procedurally furnished rooms (textured floor, four walls, a door,
  windows and several models at their real sizes placed without overlap), RGB-D frames along the scenes-mini camera
  path and the cloud fused from them at 2 cm with ``segment`` (indexes :data:`ROOM_CLASSES`) and ``instance`` labels
  (:func:`~unipre3d_hf.data.mini._scene_frames`).

OBJ files are read with trimesh (one part per material, chunked to pybullet's vertex limit) and drawn with pybullet's
CPU renderer; each part gets its material's diffuse colour or its texture. SweetHome3D models are y-up with the front
towards +z; a catalogue ``modelRotation`` (33 of the 820 models: modelled lying down or turned) is applied first, as
SweetHome3D does; they become z-up with the front towards -y, and are scaled per axis to the catalogue's width (x),
depth (y) and height (z), as SweetHome3D shows them. Every face is drawn from both sides: pybullet's renderer culls
faces whose winding is clockwise on screen, so a single-sided face (a leaf, a fence board, a lamp shade seen from
inside, a model with inverted winding) would vanish from half the views while its surface points stay in the row.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
import time
import zipfile
from dataclasses import dataclass, field

import numpy as np
from datasets import ClassLabel, Features, List, Value

from ..rendering.synthetic import SCANNET_FX_160, SHAPENET_FOV_DEG
from .mini import (
    _FLOOR_TEXTURES,
    _box,
    _connect,
    _edges_text,
    _object_views_and_points,
    _orbit_eyes,
    _progress,
    _scene_frames,
    _yaw_quaternion,
    check_supersample,
)
from .schemas import (
    OBJECT_FEATURES,
    SCENE_FEATURES,
    BuildSummary,
    ShardedParquetWriter,
    dataset_output,
    folder_size,
    write_dataset_card,
)

__all__ = [
    "CLASSES",
    "ROOM_CLASSES",
    "CLS_FEATURES",
    "ClsBuildSummary",
    "DEFAULT_SOURCE",
    "FurnitureModel",
    "build_sweethome3d",
    "classify_furniture",
    "list_furniture",
    "parse_properties",
]

DEFAULT_SOURCE = "/usr/share/sweethome3d/furniture"
_INSTALL_HINT = (
    "install Debian's furniture library with `apt-get install sweethome3d-furniture`, or without root: "
    "`apt-get download sweethome3d-furniture && dpkg -x sweethome3d-furniture_*.deb DIR` and pass "
    "`--source DIR/usr/share/sweethome3d/furniture`"
)

#: the classification benchmark's classes (``label`` indexes this tuple)
CLASSES = (
    "chair", "table", "sofa", "bed", "cabinet", "shelf", "lamp", "plant", "door", "window", "toilet_sink_bath",
    "appliance", "bottle_vase_cup", "vehicle", "person",
)  # fmt: skip
#: the rooms' semantic classes (``segment`` indexes this tuple): walls, floor, then :data:`CLASSES`
ROOM_CLASSES = ("wall", "floor", *CLASSES)

# The class map: the first rule whose pattern matches the lower-cased catalogue name (and whose exclusion does not,
# and whose category matches when one is given) gives the class; models matching no rule are left out of the cls set.
# Written from the names in the Debian package (bookworm, 1.8 catalogues); (class, pattern, exclusion, category).
_RULES = (
    ("person", r"\b(male|female|boy|girl|mannequin)\b", None, "characters"),
    ("door", r"\bdoors?\b", r"\belevator\b", "doors and windows"),
    ("window", r"\bwindows?\b|\bshutter\b", None, "doors and windows"),
    (
        "toilet_sink_bath",
        r"\b(toilets?|urinal|bidet|(wash)?basin|lavatory|bath|bathtub|sink|vanity|shower stall|"
        r"jacuzzi|potty)\b",
        r"\b(paper|brush|dispenser|mat)\b",
        None,
    ),  # fmt: skip
    ("lamp", r"\b(lamps?|lamppost|lights?|lantern|chandelier|spotlight|fluorescent)\b", r"\bflash", None),
    (
        "plant",
        r"\b(plants?|tree|ficus|bamboo|bonsai|cactus|orchids|tulips|flowers?|yucca|lily|spathiphyllum|bush|"
        r"hedge|palm|pine|cypress|poplar|maple|beech|acacia|blossom)\b",
        None,
        None,
    ),  # fmt: skip
    (
        "vehicle",
        r"\b(car|bus|bike|bicycle|motorbike|rowboat|sedan|truck|van|scooter)\b",
        r"\b(model|toy|indoor)\b",
        None,
    ),  # fmt: skip
    ("vehicle", r".", r"\b(model|toy|indoor)\b", "vehicles"),
    (
        "bottle_vase_cup",
        r"\b(bottles?|vases?|cups?|mugs?|jar|flacon|glass)\b",
        r"\b(table|door|cabinet|cake|plate)\b",
        None,
    ),  # fmt: skip
    (
        "appliance",
        r"\b(fridge|refrigerator|freezer|oven|cooker|cooktop|stove|microwave|washing machine|dryer|"
        r"dishwasher|toaster|blender|mixer|coffee (machine|maker|brewer)|hood|water heater|boiler|tv|television)\b",
        r"\b(stand|cabinet|remote)\b",
        None,
    ),  # fmt: skip
    ("sofa", r"\b(sofa|couch)\b", None, None),
    ("bed", r"\b(bed|crib|futon|mattress)\b", None, None),
    ("chair", r"\b(chair|armchair|stool|seat|bench)\b", r"\b(wheel|abdominal|work)", None),
    ("table", r"\b(table|desk)\b", r"\b(fan|tennis|football|bat)\b", None),
    (
        "cabinet",
        r"\b(cabinet|wardrobe|dresser|drawers|cupboard|chest|locker|tv stand|island)\b",
        r"\bextension\b",
        None,
    ),  # fmt: skip
    ("shelf", r"\b(shelf|shelves|bookcase)\b", None, None),
)
_COMPILED = tuple(
    (CLASSES.index(c), re.compile(p), re.compile(x) if x else None, cat) for c, p, x, cat in _RULES
)  # fmt: skip

#: features of the classification rows (``points`` normalised as the objects set's, in farthest-point order)
CLS_FEATURES = Features(
    {
        "id": Value("string"),
        "name": Value("string"),
        "category": Value("string"),
        "pack": Value("string"),
        "creator": Value("string"),
        "label": ClassLabel(names=list(CLASSES)),
        "points": List(List(Value("float32"), length=3)),
        "colors": List(List(Value("uint8"), length=3)),
    }
)


@dataclass
class ClsBuildSummary(BuildSummary):
    """A :class:`BuildSummary` that also counts the rows of each class per split."""

    class_counts: dict[str, list[int]] = field(default_factory=dict)

    def format(self) -> str:
        lines = [super().format(), "  rows per class (" + " / ".join(self.class_counts) + "):"]
        for c, name in enumerate(CLASSES):
            lines.append(f"    {name}: " + " / ".join(str(n[c]) for n in self.class_counts.values()))
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------ catalogue
def parse_properties(text: str) -> dict[str, str]:
    """Parse a Java ``.properties`` file (``key=value`` or ``key: value`` or ``key value``; ``#`` / ``!`` comments;
    a trailing backslash continues a line; ``\\uXXXX``, ``\\t``, ``\\n`` and ``\\<char>`` escapes). Later keys win."""
    out: dict[str, str] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].lstrip()
        i += 1
        if not line or line[0] in "#!":
            continue
        while _odd_trailing_backslashes(line) and i < len(lines):
            line = line[:-1] + lines[i].lstrip()
            i += 1
        key, j = [], 0
        while j < len(line) and line[j] not in "=: \t\f":
            if line[j] == "\\" and j + 1 < len(line):
                key.append(line[j : j + 2])
                j += 2
            else:
                key.append(line[j])
                j += 1
        rest = line[j:].lstrip(" \t\f")
        if rest[:1] in ("=", ":"):
            rest = rest[1:].lstrip(" \t\f")
        out[_unescape("".join(key))] = _unescape(rest)
    return out


def _odd_trailing_backslashes(line: str) -> bool:
    return (len(line) - len(line.rstrip("\\"))) % 2 == 1


def _unescape(value: str) -> str:
    def repl(m: re.Match) -> str:
        s = m.group(1)
        if s[0] == "u":
            return chr(int(s[1:], 16))
        return {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}.get(s, s)

    return re.sub(r"\\(u[0-9a-fA-F]{4}|.)", repl, value)


@dataclass
class FurnitureModel:
    """One catalogue entry of a ``.sh3f`` pack (sizes in metres)."""

    id: str
    name: str
    category: str
    tags: str
    creator: str
    pack: str
    pack_license: str
    sh3f: str
    model: str
    width: float
    depth: float
    height: float
    door_or_window: bool
    elevation: float
    rotation: tuple | None = None  # the catalogue's modelRotation: a 3x3 matrix (rows) applied to the y-up model


def list_furniture(source: str = DEFAULT_SOURCE) -> tuple[list[FurnitureModel], dict[str, str], list[tuple]]:
    """Read the catalogues of every ``*.sh3f`` under ``source``.

    Returns (models sorted by id, {pack name: licence}, [(entry id, reason)] for catalogue entries that are unusable:
    no model file named, or a size that is not a positive number).

    Raises:
        FileNotFoundError: ``source`` holds no ``.sh3f`` file (with how to install the package).
    """
    files = sorted(f for f in os.listdir(source) if f.endswith(".sh3f")) if os.path.isdir(source) else []
    if not files:
        raise FileNotFoundError(f"no SweetHome3D furniture packs (*.sh3f) in `source` {source!r}; {_INSTALL_HINT}")
    models, packs, bad = [], {}, []
    for file in files:
        path = os.path.join(source, file)
        try:
            with zipfile.ZipFile(path) as zf:
                raw = zf.read("PluginFurnitureCatalog.properties")
        except (zipfile.BadZipFile, KeyError, OSError) as err:
            bad.append((file, f"unreadable pack: {err}"))
            continue
        props = parse_properties(raw.decode("latin-1"))  # Java properties files are ISO-8859-1 + \u escapes
        pack = props.get("name", os.path.splitext(file)[0])
        packs[pack] = " ".join(props.get("license", "see the pack's LICENSE file").split())
        indices = sorted({int(m.group(1)) for k in props if (m := re.fullmatch(r"id#(\d+)", k))})
        for i in indices:
            entry = props[f"id#{i}"]
            model = props.get(f"model#{i}", "")
            dims = [_number(props.get(f"{k}#{i}"), math.nan) / 100.0 for k in ("width", "depth", "height")]
            if not model:
                bad.append((entry, "no model file in the catalogue"))
                continue
            if not all(math.isfinite(d) and d > 0 for d in dims):
                bad.append((entry, f"catalogue size is not positive: {dims}"))
                continue
            rotation = _rotation(props.get(f"modelRotation#{i}"))
            if rotation == ():
                text = props[f"modelRotation#{i}"]
                bad.append((entry, f"modelRotation is not 9 numbers of an invertible matrix: {text!r}"))
                continue
            models.append(
                FurnitureModel(
                    id=entry, name=props.get(f"name#{i}", entry), category=props.get(f"category#{i}", ""),
                    tags=props.get(f"tags#{i}", ""), creator=props.get(f"creator#{i}", "unknown"), pack=pack,
                    pack_license=packs[pack], sh3f=path, model=model.lstrip("/"), width=dims[0], depth=dims[1],
                    height=dims[2], door_or_window=props.get(f"doorOrWindow#{i}", "false").lower() == "true",
                    elevation=_number(props.get(f"elevation#{i}"), 0.0) / 100.0, rotation=rotation,
                )
            )  # fmt: skip
    models.sort(key=lambda m: m.id)
    return models, packs, bad


def _rotation(text: str | None) -> tuple | None:
    """A catalogue ``modelRotation`` (``m00 m01 m02 m10 m11 m12 m20 m21 m22``, rows first, applied as ``M @ v`` to the
    y-up model before it is sized: SweetHome3D's ``ModelManager.getRotationTransformation``) as a tuple of 3 rows;
    None when absent, ``()`` when it is not 9 finite numbers of an invertible matrix."""
    if text is None or not text.strip():
        return None
    try:
        values = [float(v) for v in text.split()]
    except ValueError:
        return ()
    if len(values) != 9 or not all(math.isfinite(v) for v in values):
        return ()
    matrix = np.array(values).reshape(3, 3)
    if abs(np.linalg.det(matrix)) < 1e-6:
        return ()
    return tuple(tuple(row) for row in matrix.tolist())


def _number(text: str | None, default: float) -> float:
    try:
        return float(text) if text else default
    except ValueError:
        return default


def classify_furniture(name: str, category: str = "") -> int | None:
    """The :data:`CLASSES` index of a catalogue entry from its name and category (see ``_RULES``), or None."""
    name, category = name.lower(), category.lower()
    for label, pattern, exclude, cat in _COMPILED:
        if cat is not None and category != cat:
            continue
        if pattern.search(name) and not (exclude is not None and exclude.search(name)):
            return label
    return None


# ---------------------------------------------------------------------------------------------------------- meshes
@dataclass
class _Part:
    vertices: np.ndarray  # [n, 3] float64, z up, metres at catalogue size, box centred in x/y, base at z = 0
    faces: np.ndarray  # [m, 3] int64
    normals: np.ndarray  # [n, 3]
    uvs: np.ndarray | None  # [n, 2]
    texture: str | None  # PNG path
    rgba: tuple


# keeps each pybullet shape under its per-shape vertex limit: 3 vertices per face, each face drawn from both sides
_MAX_FACES_PER_SHAPE = 15_000
# SweetHome3D's y-up, front +z model frame -> z-up, front -y: (x, y, z) -> (x, -z, y)
_Y_UP_TO_Z_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


def _extract_model(model: FurnitureModel, folder: str) -> str:
    """Extract the model's folder of its pack into ``folder``; returns the OBJ's path. Entries that would land
    outside ``folder`` are refused."""
    prefix = os.path.dirname(model.model)
    root = os.path.realpath(folder)
    with zipfile.ZipFile(model.sh3f) as zf:
        names = [n for n in zf.namelist() if (n.startswith(prefix + "/") if prefix else "/" not in n)]
        if model.model not in names:
            raise FileNotFoundError(f"{model.model} is not in {os.path.basename(model.sh3f)}")
        for name in names:
            target = os.path.realpath(os.path.join(folder, name))
            if not target.startswith(root + os.sep):
                raise ValueError(f"zip entry {name!r} escapes the extraction folder")
            if name.endswith("/"):
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with zf.open(name) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
    return os.path.join(folder, model.model)


def _vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals ``[n, 3]`` (zero for unused vertices)."""
    face_n = np.cross(vertices[faces[:, 1]] - vertices[faces[:, 0]], vertices[faces[:, 2]] - vertices[faces[:, 0]])
    out = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(out, faces[:, k], face_n)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-20)


def _material_look(material, folder: str, key: str) -> tuple[str | None, tuple]:
    """(path of the texture saved as PNG under ``folder``, or None; rgba in [0, 1]) of a trimesh material (Simple or
    PBR)."""
    image = getattr(material, "image", None)
    if image is None:
        image = getattr(material, "baseColorTexture", None)
    color = getattr(material, "diffuse", None)
    if color is None:
        color = getattr(material, "baseColorFactor", None)
    rgba = (1.0, 1.0, 1.0, 1.0) if color is None else tuple(float(c) / 255.0 for c in np.asarray(color)[:4])
    if image is None:
        return None, rgba
    path = os.path.join(folder, f"texture_{key}.png")
    image.convert("RGB").save(path)
    return path, (1.0, 1.0, 1.0, 1.0)  # pybullet multiplies the texture by the colour: keep the texture's own


def _load_parts(model: FurnitureModel, folder: str, texture_dir: str, key: str) -> list[_Part]:
    """Load a model into parts at catalogue size (see the module docstring); its files are extracted into
    ``folder`` (the caller may delete it afterwards), its textures saved as ``<texture_dir>/<key>_<n>.png``.

    Raises:
        ValueError: the model has no faces or is degenerate (non-finite vertices, zero size, zero surface area).
    """
    import trimesh

    obj = _extract_model(model, folder)
    scene = trimesh.load(obj, force="scene", process=False)
    raw = []
    for geom in scene.geometry.values():
        if not isinstance(geom, trimesh.Trimesh) or len(geom.faces) == 0:
            continue
        vertices = np.asarray(geom.vertices, dtype=np.float64)
        if model.rotation is not None:
            vertices = vertices @ np.asarray(model.rotation).T
        vertices = vertices @ _Y_UP_TO_Z_UP.T
        visual = geom.visual
        uvs = getattr(visual, "uv", None)
        material = getattr(visual, "material", None)
        texture, rgba = (None, (0.8, 0.8, 0.8, 1.0))
        if material is not None:
            texture, rgba = _material_look(material, texture_dir, f"{key}_{len(raw)}")
        elif getattr(visual, "kind", None) == "face" or getattr(visual, "kind", None) == "vertex":
            rgba = tuple(np.asarray(visual.main_color, dtype=np.float64)[:4] / 255.0)
        if uvs is None or len(uvs) != len(vertices):
            uvs, texture = None, None
        faces = np.asarray(geom.faces, dtype=np.int64)
        raw.append((vertices, faces, _vertex_normals(vertices, faces), uvs, texture, rgba))
    if not raw:
        raise ValueError("no faces")
    allv = np.concatenate([r[0] for r in raw])
    if not np.isfinite(allv).all():
        raise ValueError("degenerate: non-finite vertices")
    lo, hi = allv.min(axis=0), allv.max(axis=0)
    extent = hi - lo
    area = sum(float(np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1).sum())
               for v, f, *_ in raw)  # fmt: skip
    if extent.max() <= 0 or area <= 1e-12 * extent.max() ** 2:
        raise ValueError(f"degenerate: extent {extent.round(6).tolist()}, surface area {area:.3g}")
    target = np.array([model.width, model.depth, model.height])
    flat = extent <= 1e-3 * extent.max()  # a flat model (a rug, a bill) keeps the scale of its other axes
    scale = np.where(flat, 1.0, target / np.where(flat, 1.0, extent))
    scale[flat] = np.mean(scale[~flat])
    center = np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2]])
    parts = []
    for vertices, faces, normals, uvs, texture, rgba in raw:
        v = (vertices - center) * scale
        n = normals / np.where(scale == 0, 1.0, scale)  # normals transform with the inverse scale
        n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
        for start in range(0, len(faces), _MAX_FACES_PER_SHAPE):
            chunk = faces[start : start + _MAX_FACES_PER_SHAPE]
            used, local = np.unique(chunk, return_inverse=True)
            parts.append(_double_sided(v[used], local.reshape(-1, 3), n[used],
                                       None if uvs is None else np.asarray(uvs)[used], texture, rgba))  # fmt: skip
    return parts


def _double_sided(vertices, faces, normals, uvs, texture, rgba) -> _Part:
    """A part whose faces are drawn from both sides: a copy of the vertices with flipped normals (so that the side
    facing the camera is lit as its own side) and the faces in reverse winding on them; the renderer culls whichever
    of the two is clockwise on screen, so the pair never fights over depth."""
    k = len(vertices)
    return _Part(
        np.concatenate([vertices, vertices]), np.concatenate([faces, faces[:, ::-1] + k]),
        np.concatenate([normals, -normals]), None if uvs is None else np.concatenate([uvs, uvs]), texture, rgba,
    )  # fmt: skip


def _parts_size(parts: list[_Part]) -> np.ndarray:
    allv = np.concatenate([p.vertices for p in parts])
    return allv.max(axis=0) - allv.min(axis=0)


def _part_shapes(p, cid, parts: list[_Part], scale: float = 1.0) -> list[int]:
    """One pybullet visual shape per part, vertices scaled by ``scale``. pybullet never frees a mesh shape made from
    vertices (not on ``resetSimulation``, not on disconnect: about 240 bytes a vertex), so the rooms make each
    model's shapes once and place them in every room that uses the model."""
    shapes = []
    for part in parts:
        kwargs = {"uvs": part.uvs.tolist()} if part.uvs is not None and part.texture is not None else {}
        shape = p.createVisualShape(
            p.GEOM_MESH, vertices=(part.vertices * scale).tolist(), indices=part.faces.reshape(-1).tolist(),
            normals=part.normals.tolist(), physicsClientId=cid, **kwargs,
        )  # fmt: skip
        if shape < 0:
            raise ValueError("pybullet refused a mesh part")
        shapes.append(shape)
    return shapes


def _add_parts(p, cid, parts: list[_Part], scale: float, yaw: float, offset, textures: dict, shapes=None) -> list[int]:
    """Create one pybullet body per part: vertices scaled by ``scale``, turned by ``yaw`` about z, moved by
    ``offset``. ``textures`` caches texture ids by path for this pybullet world; ``shapes`` are the parts' shapes
    from :func:`_part_shapes` (made here when None). Returns the body ids."""
    shapes = _part_shapes(p, cid, parts, scale) if shapes is None else shapes
    bodies = []
    for part, shape in zip(parts, shapes):
        body = p.createMultiBody(0, -1, shape, list(offset), _yaw_quaternion(yaw), physicsClientId=cid)
        if part.uvs is not None and part.texture is not None:
            if part.texture not in textures:
                textures[part.texture] = p.loadTexture(part.texture, physicsClientId=cid)
            p.changeVisualShape(body, -1, textureUniqueId=textures[part.texture], rgbaColor=[1, 1, 1, 1],
                                physicsClientId=cid)  # fmt: skip
        else:
            p.changeVisualShape(body, -1, rgbaColor=list(part.rgba[:3]) + [1.0], physicsClientId=cid)
        bodies.append(body)
    return bodies


# ------------------------------------------------------------------------------------------------------ splits
def _splits(models: list[FurnitureModel], labels: list[int | None], seed: int, test_fraction: float, val_fraction):
    """Returns (cls split per model: "train" / "test" / None, objects split per model: "train" / "validation").
    cls: per class, a seeded shuffle and round(test_fraction * n) test models (at least one when n >= 2). objects:
    validation = the cls test models + a val_fraction of the unclassified models."""
    rng = np.random.default_rng(seed)
    cls_split: list[str | None] = [None if lab is None else "train" for lab in labels]
    for c in range(len(CLASSES)):
        idx = [i for i, lab in enumerate(labels) if lab == c]
        rng.shuffle(idx)
        n_test = max(1, round(test_fraction * len(idx))) if len(idx) >= 2 else 0
        for i in idx[:n_test]:
            cls_split[i] = "test"
    rest = [i for i, lab in enumerate(labels) if lab is None]
    rng.shuffle(rest)
    held = set(rest[: round(val_fraction * len(rest))])
    obj_split = ["validation" if (cls_split[i] == "test" or i in held) else "train" for i in range(len(models))]
    return cls_split, obj_split


# ------------------------------------------------------------------------------------------------------- rooms
def _rect_free(rect, placed, margin=0.05) -> bool:
    x0, y0, x1, y1 = rect
    return all(x1 + margin <= a0 or a1 + margin <= x0 or y1 + margin <= b0 or b1 + margin <= y0
               for a0, b0, a1, b1 in placed)  # fmt: skip


def _furnish_room(p, cid, data_dir, pool, parts_of, rng, doors, windows, shapes: dict, textures: dict):
    """Floor, walls, a door, 0-2 windows and 4-8 models of ``pool`` (model indices; ``parts_of(i)`` gives
    (model, parts or None when it failed to load)) placed at
    their real size without overlapping footprints (yaw in quarter turns). ``shapes`` (model index -> shape ids)
    and ``textures`` (path -> texture id) are this pybullet world's caches, kept from room to room. Returns
    ({body: (class, instance)}: every body made, half sizes (x, y), [placed model ids])."""
    half = np.array([rng.uniform(1.5, 2.2), rng.uniform(1.5, 2.2)])
    height = 2.5
    labels: dict[int, tuple[int, int]] = {}
    floor = os.path.join(data_dir, _FLOOR_TEXTURES[rng.integers(len(_FLOOR_TEXTURES))])
    if floor not in textures:
        textures[floor] = p.loadTexture(floor, physicsClientId=cid)
    tex = textures[floor]
    labels[_box(p, cid, [half[0], half[1], 0.01], [0, 0, -0.01], [1, 1, 1, 1], tex)] = (ROOM_CLASSES.index("floor"), -1)
    wall_rgb = rng.uniform(0.55, 0.95, 3)
    for axis in range(2):
        for sign in (-1, 1):
            ext = [half[0] + 0.04, 0.02, height / 2] if axis == 1 else [0.02, half[1] + 0.04, height / 2]
            pos = [0.0, 0.0, height / 2]
            pos[axis] = sign * (half[axis] + 0.02)
            shade = np.clip(wall_rgb * rng.uniform(0.85, 1.0), 0, 1)
            labels[_box(p, cid, ext, pos, [*shade, 1.0])] = (ROOM_CLASSES.index("wall"), -1)
    placed, used, instance = [], [], 0

    def put(index, yaw_quarters, center_xy, z):
        nonlocal instance
        model, parts = parts_of(index)
        if parts is None:  # failed to load (reported once by parts_of)
            return False
        size = _parts_size(parts)
        w, d = (size[0], size[1]) if yaw_quarters % 2 == 0 else (size[1], size[0])
        rect = (center_xy[0] - w / 2, center_xy[1] - d / 2, center_xy[0] + w / 2, center_xy[1] + d / 2)
        if rect[0] < -half[0] or rect[2] > half[0] or rect[1] < -half[1] or rect[3] > half[1]:
            return False
        if z < 0.3 and not _rect_free(rect, placed):  # windows hang above the floor furniture
            return False
        if index not in shapes:
            shapes[index] = _part_shapes(p, cid, parts)
        offset = [center_xy[0], center_xy[1], z]
        bodies = _add_parts(p, cid, parts, 1.0, yaw_quarters * math.pi / 2, offset, textures, shapes[index])
        label = classify_furniture(model.name, model.category)
        for b in bodies:
            labels[b] = (ROOM_CLASSES.index(CLASSES[label]), instance)
        instance += 1
        if z < 0.3:
            placed.append(rect)
        used.append(model.id)
        return True

    def against_wall(index, z):
        model, parts = parts_of(index)
        if parts is None:
            return
        size = _parts_size(parts)
        for _ in range(20):
            wall = int(rng.integers(4))  # 0: +y, 1: -x, 2: -y, 3: +x; the front (-y in the model frame) faces in
            along = half[0] if wall % 2 == 0 else half[1]
            t = (
                rng.uniform(-along + size[0] / 2 + 0.05, along - size[0] / 2 - 0.05)
                if along > size[0] / 2 + 0.05
                else 0
            )
            inset = (half[1] if wall % 2 == 0 else half[0]) - size[1] / 2 - 0.005
            xy = {0: (t, inset), 1: (-inset, t), 2: (-t, -inset), 3: (inset, -t)}[wall]
            if put(index, wall, xy, z):
                return

    if doors:
        against_wall(doors[rng.integers(len(doors))], 0.0)
    for _ in range(int(rng.integers(0, 3)) if windows else 0):
        index = windows[rng.integers(len(windows))]
        model, _ = parts_of(index)
        against_wall(index, model.elevation if model.elevation > 0.3 else rng.uniform(0.8, 1.0))
    for _ in range(int(rng.integers(4, 9))):
        index = pool[rng.integers(len(pool))]
        for _ in range(30):
            yaw = int(rng.integers(4))
            if put(index, yaw, rng.uniform(-half, half), 0.0):
                break
    return labels, half, used


# ------------------------------------------------------------------------------------------------------- build
def _credits(models: list[FurnitureModel], packs: dict[str, str]) -> str:
    lines = [
        "## Credits",
        "",
        "Every model is the work of its creator, distributed in Debian's `sweethome3d-furniture`",
        "(see `/usr/share/doc/sweethome3d-furniture/copyright`). Licences per pack:",
        "",
    ]
    lines += [f"- **{pack}**: {lic}" for pack, lic in sorted(packs.items())]
    lines += ["", "| model id | name | creator | pack |", "|---|---|---|---|"]
    lines += [f"| {m.id} | {m.name} | {m.creator} | {m.pack} |" for m in models]
    return "\n".join(lines)


def build_sweethome3d(
    out_dir: str = os.path.join("data", "sweethome3d"),
    source: str = DEFAULT_SOURCE,
    overwrite: bool = False,
    only: tuple[str, ...] = ("objects", "cls", "rooms"),
    max_models: int | None = None,
    views: int = 24,
    image_size: int = 128,
    num_points: int = 2048,
    rooms: int = 100,
    frames: int = 32,
    width: int = 160,
    height: int = 120,
    voxel_size: float = 0.02,
    image_format: str = "png",
    test_fraction: float = 0.2,
    cls_points: int | None = None,
    seed: int = 0,
    show_progress: bool = True,
    supersample: int = 2,
) -> dict[str, BuildSummary]:
    """Build ``<out_dir>/sweethome3d-objects``, ``-cls`` and ``-rooms`` (those named in ``only``) from the
    ``.sh3f`` packs in ``source``; see the module docstring. Each set replaces an existing one only once it is
    complete (``overwrite`` must be set to replace it). Deterministic for a seed and a source.

    Args:
        max_models: use the first ``max_models`` catalogue entries (sorted by id) only.
        views: views per object row (the ShapeNet layout has 24); image_size: their side (focal from the FoV).
        num_points: surface points per object / cls row, in farthest-point order.
        rooms: rooms to build; every 10th (index 9, 19, ...) is the ``validation`` split (the last one when fewer
            than 10). frames, width, height: RGB-D frames per room and their size (ScanNet's intrinsics scaled).
        voxel_size: grid of the rooms' fused cloud (metres).
        image_format: ``"png"`` (RGBA object views, lossless) or ``"jpeg"`` (RGB on black, quality 90; smaller).
            Depth frames are always 16-bit PNG.
        test_fraction: share of each class's models in the cls ``test`` split (these models are in the objects
            set's ``validation`` split, with the same share of the unclassified models).
        cls_points: points per cls row (default ``num_points``): the first ``cls_points`` of the objects row's
            farthest-point order, itself a farthest-point subset (for a smaller benchmark copy).
        supersample: object views (and the depth their points come from) are rendered at this many times
            ``image_size`` and box-filtered down: anti-aliased, alpha the covered fraction (1 = binary masks).
    """
    only = tuple(only)
    unknown = set(only) - {"objects", "cls", "rooms"}
    if unknown or not only:
        raise ValueError(f"`only` must name some of 'objects', 'cls', 'rooms', got {only!r}")
    if image_format not in ("png", "jpeg"):
        raise ValueError(f"`image_format` must be 'png' or 'jpeg', got {image_format!r}")
    if views < 1 or image_size < 8 or num_points < 1 or rooms < 0 or frames < 2 or width < 8 or height < 8:
        raise ValueError(
            "need views >= 1, image_size >= 8, num_points >= 1, rooms >= 0, frames >= 2, width/height >= 8"
        )
    cls_points = num_points if cls_points is None else cls_points
    if not 1 <= cls_points <= num_points:
        raise ValueError(f"`cls_points` must be in [1, num_points = {num_points}], got {cls_points}")
    check_supersample(supersample)
    if not 0 < test_fraction < 1 or voxel_size <= 0:
        raise ValueError(f"need 0 < test_fraction < 1 and voxel_size > 0, got {test_fraction}, {voxel_size}")
    command = (
        f"python scripts/build_dataset.py sweethome3d --only {','.join(only)} --views {views} --image-size {image_size}"
        f" --image-format {image_format} --points {num_points} --rooms {rooms} --frames {frames} --width {width}"
        f" --height {height} --voxel-size {voxel_size} --cls-points {cls_points} --seed {seed}"
        f" --supersample {supersample}" + (f" --max-models {max_models}" if max_models else "")
    )
    models, packs, bad_entries = list_furniture(source)
    models = models[:max_models] if max_models else models
    labels = [classify_furniture(m.name, m.category) for m in models]
    cls_split, obj_split = _splits(models, labels, seed, test_fraction, test_fraction)
    summaries = {}
    scratch = tempfile.mkdtemp(prefix="sweethome3d-")
    try:
        if "objects" in only or "cls" in only:
            # pybullet never frees the mesh shapes it makes from vertices (~10 GB for all 820 models' views): when the
            # rooms follow, the objects pass runs in a child process, whose memory goes back when it ends
            args = (
                out_dir, overwrite, only, models, packs, bad_entries, labels, cls_split, obj_split, views, image_size,
                num_points, image_format, seed, scratch, show_progress, test_fraction, command, cls_points, supersample,
            )  # fmt: skip
            if "rooms" in only and rooms > 0:
                summaries.update(_in_child_process(_build_objects_and_cls, *args))
            else:
                summaries.update(_build_objects_and_cls(*args))
        if "rooms" in only and rooms > 0:
            summaries["rooms"] = _build_rooms(
                out_dir, overwrite, models, packs, labels, rooms, frames, width, height, voxel_size, image_format,
                seed, scratch, show_progress, command,
            )  # fmt: skip
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return summaries


def _in_child_process(fn, *args):
    """``fn(*args)`` in a fresh (spawned) process; its result or its exception comes back to the caller."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def _build_objects_and_cls(
    out_dir, overwrite, only, models, packs, bad_entries, labels, cls_split, obj_split, views, image_size,
    num_points, image_format, seed, scratch, show_progress, test_fraction, command, cls_points, supersample,
):  # fmt: skip
    import contextlib

    start = time.perf_counter()
    focal = 0.5 * image_size / math.tan(0.5 * math.radians(SHAPENET_FOV_DEG))
    intr = np.array([focal, focal, image_size / 2, image_size / 2], dtype=np.float32)
    obj_summary, cls_summary = BuildSummary("sweethome3d-objects"), ClsBuildSummary("sweethome3d-cls")
    for entry, reason in bad_entries:
        obj_summary.skip(entry, reason)
    cls_features = CLS_FEATURES
    class_counts = {s: [0] * len(CLASSES) for s in ("train", "test")}
    written_models = {"objects": [], "cls": []}
    with contextlib.ExitStack() as stack:
        obj_dir = cls_dir = None
        if "objects" in only:
            obj_dir = stack.enter_context(dataset_output(os.path.join(out_dir, "sweethome3d-objects"), overwrite))
            obj_writers = {s: ShardedParquetWriter(obj_dir, s, OBJECT_FEATURES, rows_per_shard=128)
                           for s in ("train", "validation")}  # fmt: skip
        if "cls" in only:
            cls_dir = stack.enter_context(dataset_output(os.path.join(out_dir, "sweethome3d-cls"), overwrite))
            cls_writers = {s: ShardedParquetWriter(cls_dir, s, cls_features, rows_per_shard=512)
                           for s in ("train", "test")}  # fmt: skip
        todo = [i for i in range(len(models)) if "objects" in only or cls_split[i] is not None]
        p, cid, _ = _connect()
        bar = _progress(len(todo), "sweethome3d objects") if show_progress else None
        try:
            for i in todo:
                model = models[i]
                rng = np.random.default_rng([seed, i])  # per model: a model's row does not depend on the others
                p.resetSimulation(physicsClientId=cid)
                folder = os.path.join(scratch, f"m{i}")
                try:
                    parts = _load_parts(model, folder, folder, "t")
                    size = _parts_size(parts)
                    scale = 1.0 / float(np.linalg.norm(size))
                    bodies = _add_parts(p, cid, parts, scale, 0.0, [0.0, 0.0, -size[2] * scale / 2], {})
                except Exception as err:  # one bad model never stops the build
                    obj_summary.skip(model.id, f"failed to load: {type(err).__name__}: {err}")
                    if cls_split[i] is not None:
                        cls_summary.skip(model.id, f"failed to load: {type(err).__name__}: {err}")
                    continue
                finally:
                    shutil.rmtree(folder, ignore_errors=True)
                eyes = _orbit_eyes(rng, views, (-20.0, 60.0), (1.75, 1.75))
                images, c2ws, pts, cols = _object_views_and_points(
                    p, cid, set(bodies), eyes, intr, image_size, 1.0 / 200.0, num_points, rng, image_format, supersample
                )
                if bar is not None:
                    bar.update(1)
                if pts is None:
                    obj_summary.skip(model.id, "too few visible surface points")
                    if cls_split[i] is not None:
                        cls_summary.skip(model.id, "too few visible surface points")
                    continue
                category = CLASSES[labels[i]] if labels[i] is not None else model.category.lower()
                if obj_dir is not None:
                    obj_writers[obj_split[i]].write(
                        {
                            "id": model.id, "category": category, "points": pts, "colors": cols, "images": images,
                            "camera_to_world": c2ws, "intrinsics": np.tile(intr, (views, 1)),
                            "width": image_size, "height": image_size,
                        }
                    )  # fmt: skip
                    written_models["objects"].append(model)
                if cls_dir is not None and cls_split[i] is not None:
                    cls_writers[cls_split[i]].write(
                        {
                            "id": model.id, "name": model.name, "category": model.category, "pack": model.pack,
                            "creator": model.creator, "label": labels[i], "points": pts[:cls_points],
                            "colors": cols[:cls_points],
                        }
                    )  # fmt: skip
                    class_counts[cls_split[i]][labels[i]] += 1
                    written_models["cls"].append(model)
        finally:
            p.disconnect(physicsClientId=cid)
            if bar is not None:
                bar.close()
        left_out = sum(lab is None for lab in labels)
        if obj_dir is not None:
            for split, writer in obj_writers.items():
                writer.close()
                obj_summary.rows_written[split] = writer.num_rows
            write_dataset_card(
                obj_dir, OBJECT_FEATURES, obj_summary.rows_written, pretty_name="UniPre3D SweetHome3D objects",
                license="cc-by-3.0", tags=["sweethome3d", "furniture", "pybullet", "renders"],
                description=f"""Object-level pre-training data in the ShapeNet multi-view layout, made from the
{len(models)} furniture and household models of SweetHome3D's furniture library (Debian `sweethome3d-furniture`).
Each model is shown at its catalogue proportions, upright (z up, front towards -y), its bounding box centred at the
origin and scaled to a diagonal of 1 (ShapeNet's normalisation). Each row has {views} views at
{image_size}x{image_size} ({"RGBA PNG, alpha = the object's mask" if image_format == "png" else "RGB JPEG on black"};
{_edges_text(supersample)}),
rendered textured with pybullet's CPU renderer at distance 1.75 with the paper's FoV ({SHAPENET_FOV_DEG:.4f} deg,
fx = fy = {focal:.1f} px), azimuth stratified over 360 deg, elevation uniform in [-20, 60] deg. Cameras:
camera-to-world, OpenCV axes; intrinsics (fx, fy, cx, cy) with pixel centres at +0.5. Points: {num_points} per row on
the surface with their rendered colour (depth of the views and 6 axis-aligned ones unprojected, reduced on a 1/200
grid, farthest-point order); points and cameras share one frame. `category` is the benchmark class (see
`sweethome3d-cls`) or, for models outside the class map, the catalogue category.

Splits by model (seed {seed}): `validation` holds the `sweethome3d-cls` test models and
{round(100 * test_fraction)}% of the unclassified models; no validation model appears in `train`. Rows skipped
(failed to load, no faces, degenerate, too few visible points): {len(obj_summary.skipped)}; they are listed in the
build's printed summary.

Built with `{command}` (deterministic for a seed).

{_credits(written_models["objects"], packs)}""",
            )  # fmt: skip
        if cls_dir is not None:
            for split, writer in cls_writers.items():
                writer.close()
                cls_summary.rows_written[split] = writer.num_rows
            table = "\n".join(
                f"| {c} | {name} | {class_counts['train'][c]} | {class_counts['test'][c]} |"
                for c, name in enumerate(CLASSES)
            )
            write_dataset_card(
                cls_dir, cls_features, cls_summary.rows_written, pretty_name="UniPre3D SweetHome3D classification",
                license="cc-by-3.0", tags=["sweethome3d", "furniture", "classification"],
                extra_yaml={"class_names": list(CLASSES)},
                description=f"""A point-cloud classification benchmark made from SweetHome3D's furniture library: one
row per model with {cls_points} surface points (xyz normalised as `sweethome3d-objects`: box centred, diagonal 1;
farthest-point order), their colours and an integer `label` indexing `class_names`. The label comes from the
catalogue name and category by the ordered rules of `unipre3d_hf.data.sweethome3d._RULES` (first match wins);
{left_out} of the {len(models)} models fit no class and are left out. Train/test split by model, stratified per class
({round(100 * test_fraction)}% test, seed {seed}); the test models are in the `validation` split of
`sweethome3d-objects`, never in its `train` split. Rows skipped (failed to load or too few points):
{len(cls_summary.skipped)}.

| label | class | train | test |
|---|---|---|---|
{table}

Built with `{command}`.

{_credits(written_models["cls"], packs)}""",
            )  # fmt: skip
    seconds = time.perf_counter() - start
    out = {}
    if obj_dir is not None:
        obj_summary.seconds, obj_summary.bytes_on_disk = (
            seconds,
            folder_size(os.path.join(out_dir, "sweethome3d-objects")),
        )
        out["objects"] = obj_summary
    if cls_dir is not None:
        cls_summary.seconds, cls_summary.bytes_on_disk = seconds, folder_size(os.path.join(out_dir, "sweethome3d-cls"))
        cls_summary.class_counts = class_counts
        out["cls"] = cls_summary
    return out


def _build_rooms(
    out_dir, overwrite, models, packs, labels, rooms, frames, width, height, voxel_size, image_format, seed, scratch,
    show_progress, command,
):  # fmt: skip
    start = time.perf_counter()
    summary = BuildSummary("sweethome3d-rooms")
    focal = SCANNET_FX_160 * width / 160.0
    intr = np.array([focal, focal, width / 2, height / 2], dtype=np.float32)
    cache: dict[int, list[_Part] | None] = {}

    def parts_of(index):
        if index not in cache:
            folder = os.path.join(scratch, f"r{index}")
            try:
                cache[index] = _load_parts(models[index], folder, scratch, f"room_model{index}")
            except Exception as err:  # reported once; the model is then never drawn again
                summary.skip(models[index].id, f"failed to load: {type(err).__name__}: {err}")
                cache[index] = None
            finally:
                shutil.rmtree(folder, ignore_errors=True)
        return models[index], cache[index]

    def fits(i, max_side, max_height):
        m = models[i]
        return max(m.width, m.depth) <= max_side and m.height <= max_height

    doors = [i for i, lab in enumerate(labels) if lab == CLASSES.index("door") and fits(i, 1.6, 2.4)]
    windows = [i for i, lab in enumerate(labels) if lab == CLASSES.index("window") and fits(i, 1.6, 1.5)]
    pool = [i for i, lab in enumerate(labels) if lab is not None and CLASSES[lab] not in ("door", "window")
            and fits(i, 1.8, 2.3) and max(models[i].width, models[i].depth, models[i].height) >= 0.08]  # fmt: skip
    used_ids: set[str] = set()
    with dataset_output(os.path.join(out_dir, "sweethome3d-rooms"), overwrite) as build_dir:
        writers = {
            s: ShardedParquetWriter(build_dir, s, SCENE_FEATURES, rows_per_shard=32) for s in ("train", "validation")
        }
        p, cid, data_dir = _connect()
        shapes, textures = {}, {}  # one world for every room: its mesh shapes and textures are made once
        bar = _progress(rooms, "sweethome3d rooms") if show_progress else None
        try:
            for r in range(rooms):
                rng = np.random.default_rng([seed, 1_000_003, r])
                room_labels, half, used = _furnish_room(
                    p, cid, data_dir, pool, parts_of, rng, doors, windows, shapes, textures
                )
                used_ids.update(used)
                row = _scene_frames(p, cid, room_labels, half, rng, frames, intr, width, height, voxel_size,
                                    image_format)  # fmt: skip
                for body in room_labels:  # the next room starts empty; the shapes stay for reuse
                    p.removeBody(body, physicsClientId=cid)
                split = "validation" if (r % 10 == 9 or (rooms < 10 and rooms >= 2 and r == rooms - 1)) else "train"
                writers[split].write({"id": f"sh3d_room{r:04d}", **row})
                if bar is not None:
                    bar.update(1)
        finally:
            p.disconnect(physicsClientId=cid)
            if bar is not None:
                bar.close()
        for split, writer in writers.items():
            writer.close()
            summary.rows_written[split] = writer.num_rows
        used_models = [m for m in models if m.id in used_ids]
        write_dataset_card(
            build_dir, SCENE_FEATURES, summary.rows_written, pretty_name="UniPre3D SweetHome3D rooms",
            license="cc-by-3.0", tags=["sweethome3d", "furniture", "pybullet", "rgb-d"],
            extra_yaml={"class_names": list(ROOM_CLASSES)},
            description=f"""Scene-level pre-training and segmentation data in the ScanNet layout: {rooms} procedurally
furnished rooms (3-4.4 m sides, 2.5 m high): a textured floor (a texture of `pybullet_data`), four walls, a door and
0-2 windows against the walls, and 4-8 models of SweetHome3D's furniture library (the benchmark classes, at their
catalogue size, yaw in quarter turns) placed on the floor without overlapping footprints. {frames} RGB-D frames per
room at {width}x{height} follow one loop of the scenes-mini camera path, rendered textured with pybullet's CPU
renderer; intrinsics are ScanNet's depth camera scaled to this size (fx = fy = {focal:.3f} px; pixel centres at +0.5),
poses are camera-to-world in OpenCV axes, depth is a 16-bit PNG in millimetres (0 = no depth), colour frames are
{image_format.upper()}. The cloud is fused from the depth frames on a {voxel_size * 100:g} cm grid (mean position and
colour, normals from the depth maps). `segment` indexes `class_names` ({", ".join(ROOM_CLASSES)}); `instance` numbers
the models of a room (door and windows included), -1 for floor and walls. Every 10th room is the `validation` split.
Models that failed to load: {len(summary.skipped)}.

Built with `{command}` (deterministic for a seed).

{_credits(used_models, packs)}""",
        )  # fmt: skip
    summary.seconds = time.perf_counter() - start
    summary.bytes_on_disk = folder_size(os.path.join(out_dir, "sweethome3d-rooms"))
    return summary
