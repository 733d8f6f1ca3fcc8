"""Downstream data sets as HF Datasets (Parquet + card), converted from the layouts users download.

Schemas (labels are integers, ``ClassLabel`` with the names in the card, never strings):

- ``classification_features(names)``: ``id``, ``points [N, 3]`` float32, ``normals [N, 3]`` float32 (``[0, 3]`` when
  the source has none), ``label`` (``ClassLabel``). ModelNet40 and ScanObjectNN.
- ``PART_SEGMENTATION_FEATURES``: ``id``, ``category`` (``ClassLabel`` of the 16 ShapeNetPart categories), ``points``,
  ``normals``, ``parts [N]`` (``ClassLabel`` of the 50 parts, global indices as the benchmark stores them; the parts
  of each category are :data:`SHAPENET_PART_CATEGORY_PARTS`).
- ``scene_segmentation_features(names)``: ``id``, ``coords [P, 3]`` float32 metres, ``colors [P, 3]`` uint8, ``normals
  [P, 3]`` float32 (``[0, 3]`` when absent), ``segment [P]`` (``ClassLabel``, -1 = unlabelled), ``instance [P]`` int32
  (-1 = none). S3DIS, ScanNet20, ScanNet200 in Pointcept's preprocessed layout.

Source layouts (checked against the loaders of Point-BERT / PointNet++ / Pointcept):

- ModelNet40 ``modelnet40_normal_resampled``: ``modelnet40_shape_names.txt``, ``modelnet40_{train,test}.txt`` (one
  ``airplane_0001`` per line) and ``<category>/<id>.txt`` with comma-separated ``x,y,z,nx,ny,nz`` rows (10 000 per
  shape; Point-BERT's ``ModelNetDataset`` keeps the first ``npoints``).
- ModelNet40 ``modelnet40_ply_hdf5_2048``: ``ply_data_{train,test}<k>.h5`` with ``data [S, 2048, 3]``, ``label
  [S, 1]`` (and ``normal`` when present), ``shape_names.txt``.
- ScanObjectNN ``h5_files/main_split{,_nobg}/{training,test}_objectdataset{,_augmentedrot_scale75}.h5`` with ``data
  [S, 2048, 3]``, ``label [S]``, ``mask [S, 2048]`` (background points, unused here): OBJ_BG = ``main_split``,
  OBJ_ONLY = ``main_split_nobg``, PB_T50_RS = ``main_split`` ``_augmentedrot_scale75``.
- ShapeNetPart ``shapenetcore_partanno_segmentation_benchmark_v0_normal``: ``synsetoffset2category.txt`` (``Airplane
  02691156``), ``<synset>/<token>.txt`` with ``x y z nx ny nz part`` rows, ``train_test_split/shuffled_{train,val,
  test}_file_list.json`` (entries ``shape_data/<synset>/<token>``).
- Pointcept: one folder per scene with ``coord.npy``, ``color.npy`` (0..255), ``normal.npy``, ``segment.npy`` /
  ``segment20.npy`` / ``segment200.npy`` (``[P]`` or ``[P, 1]``, -1 unlabelled), ``instance.npy``; ScanNet under
  ``train/``, ``val/`` (``test/`` has no labels), S3DIS under ``Area_1`` .. ``Area_6`` (Area 5 is the validation split).

Every item that can't be read or fails a check (shape, finite values, label range) is skipped with its id and reason in
the :class:`BuildSummary`; the build goes on. Files are read with ``np.load(allow_pickle=False)`` and h5py only.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable

import numpy as np
from datasets import ClassLabel, Features, List, Value

from .schemas import BuildSummary, ShardedParquetWriter, dataset_output, folder_size, write_dataset_card

__all__ = [
    "MODELNET40_NUM_CLASSES",
    "PART_SEGMENTATION_FEATURES",
    "S3DIS_CLASSES",
    "SCANNET20_CLASSES",
    "SCANNET200_CLASSES",
    "SCANOBJECTNN_CLASSES",
    "SCANOBJECTNN_VARIANTS",
    "SHAPENET_PART_CATEGORIES",
    "SHAPENET_PART_CATEGORY_PARTS",
    "classification_features",
    "convert_modelnet40",
    "convert_pointcept_scenes",
    "convert_scanobjectnn",
    "convert_shapenet_part",
    "scene_segmentation_features",
]

MODELNET40_NUM_CLASSES = 40
# ScanObjectNN's 15 classes in label order (the ScanObjectNN paper's table; Point-BERT / PointMLP configs)
SCANOBJECTNN_CLASSES = (
    "bag", "bin", "box", "cabinet", "chair", "desk", "display", "door", "shelf", "table", "bed", "pillow", "sink",
    "sofa", "toilet",
)  # fmt: skip
# variant -> (folder under h5_files, file suffix)
SCANOBJECTNN_VARIANTS = {
    "OBJ_BG": ("main_split", ""),
    "OBJ_ONLY": ("main_split_nobg", ""),
    "PB_T50_RS": ("main_split", "_augmentedrot_scale75"),
}
# ShapeNetPart: the 16 categories and their global part indices (PointNet++ / Point-BERT `seg_classes`)
SHAPENET_PART_CATEGORY_PARTS = {
    "Airplane": [0, 1, 2, 3], "Bag": [4, 5], "Cap": [6, 7], "Car": [8, 9, 10, 11], "Chair": [12, 13, 14, 15],
    "Earphone": [16, 17, 18], "Guitar": [19, 20, 21], "Knife": [22, 23], "Lamp": [24, 25, 26, 27], "Laptop": [28, 29],
    "Motorbike": [30, 31, 32, 33, 34, 35], "Mug": [36, 37], "Pistol": [38, 39, 40], "Rocket": [41, 42, 43],
    "Skateboard": [44, 45, 46], "Table": [47, 48, 49],
}  # fmt: skip
SHAPENET_PART_CATEGORIES = tuple(SHAPENET_PART_CATEGORY_PARTS)
_PART_NAMES = [f"{c}_{i}" for c, parts in SHAPENET_PART_CATEGORY_PARTS.items() for i in range(len(parts))]
# S3DIS (Pointcept's s3dis configs), ScanNet20 (the benchmark's 20 classes, Pointcept's scannet configs)
S3DIS_CLASSES = (
    "ceiling", "floor", "wall", "beam", "column", "window", "door", "table", "chair", "sofa", "bookcase", "board",
    "clutter",
)  # fmt: skip
SCANNET20_CLASSES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture", "counter",
    "desk", "curtain", "refrigerator", "shower curtain", "toilet", "sink", "bathtub", "otherfurniture",
)  # fmt: skip
# ScanNet200: CLASS_LABELS_200 of ScanNet's BenchmarkScripts/ScanNet200/scannet200_constants.py (as Pointcept uses it)
SCANNET200_CLASSES = tuple(
    """wall,chair,floor,table,door,couch,cabinet,shelf,desk,office chair,bed,pillow,sink,picture,window,toilet,
    bookshelf,monitor,curtain,book,armchair,coffee table,box,refrigerator,lamp,kitchen cabinet,towel,clothes,tv,
    nightstand,counter,dresser,stool,cushion,plant,ceiling,bathtub,end table,dining table,keyboard,bag,backpack,
    toilet paper,printer,tv stand,whiteboard,blanket,shower curtain,trash can,closet,stairs,microwave,stove,shoe,
    computer tower,bottle,bin,ottoman,bench,board,washing machine,mirror,copier,basket,sofa chair,file cabinet,fan,
    laptop,shower,paper,person,paper towel dispenser,oven,blinds,rack,plate,blackboard,piano,suitcase,rail,radiator,
    recycling bin,container,wardrobe,soap dispenser,telephone,bucket,clock,stand,light,laundry basket,pipe,
    clothes dryer,guitar,toilet paper holder,seat,speaker,column,bicycle,ladder,bathroom stall,shower wall,cup,jacket,
    storage bin,coffee maker,dishwasher,paper towel roll,machine,mat,windowsill,bar,toaster,bulletin board,
    ironing board,fireplace,soap dish,kitchen counter,doorframe,toilet paper dispenser,mini fridge,fire extinguisher,
    ball,hat,shower curtain rod,water cooler,paper cutter,tray,shower door,pillar,ledge,toaster oven,mouse,
    toilet seat cover dispenser,furniture,cart,storage container,scale,tissue box,light switch,crate,power outlet,
    decoration,sign,projector,closet door,vacuum cleaner,candle,plunger,stuffed animal,headphones,dish rack,broom,
    guitar case,range hood,dustpan,hair dryer,water bottle,handicap bar,purse,vent,shower floor,water pitcher,mailbox,
    bowl,paper bag,alarm clock,music stand,projector screen,divider,laundry detergent,bathroom counter,object,
    bathroom vanity,closet wall,laundry hamper,bathroom stall door,ceiling light,trash bin,dumbbell,stair rail,tube,
    bathroom cabinet,cd case,closet rod,coffee kettle,structure,shower head,keyboard piano,case of water bottles,
    coat rack,storage organizer,folded chair,fire alarm,power strip,calendar,poster,potted plant,luggage,
    mattress""".replace("\n    ", "").split(",")
)
SCENE_SETS = {"s3dis": S3DIS_CLASSES, "scannet20": SCANNET20_CLASSES, "scannet200": SCANNET200_CLASSES}
_MAX_POINTS = 50_000_000  # bound on one item (a scene of ScanNet has ~150k points, S3DIS rooms up to ~10M)


def _points(dtype: str) -> List:
    return List(List(Value(dtype), length=3))


def classification_features(names: Iterable[str]) -> Features:
    return Features(
        {
            "id": Value("string"),
            "points": _points("float32"),
            "normals": _points("float32"),
            "label": ClassLabel(names=list(names)),
        }
    )


PART_SEGMENTATION_FEATURES = Features(
    {
        "id": Value("string"),
        "category": ClassLabel(names=list(SHAPENET_PART_CATEGORIES)),
        "points": _points("float32"),
        "normals": _points("float32"),
        "parts": List(ClassLabel(names=_PART_NAMES)),
    }
)


def scene_segmentation_features(names: Iterable[str]) -> Features:
    return Features(
        {
            "id": Value("string"),
            "coords": _points("float32"),
            "colors": _points("uint8"),
            "normals": _points("float32"),
            "segment": List(ClassLabel(names=list(names))),
            "instance": List(Value("int32")),
        }
    )


# ----------------------------------------------------------------------------------------------- checks and writing
def _xyz(name: str, array, num_points: int | None = None) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 2 or array.shape[1] != 3 or array.shape[0] == 0 or array.shape[0] > _MAX_POINTS:
        raise ValueError(f"`{name}` must have shape [N, 3] with 0 < N <= {_MAX_POINTS}, got {list(array.shape)}")
    if num_points is not None and array.shape[0] != num_points:
        raise ValueError(f"`{name}` must have {num_points} rows (one per point), got {array.shape[0]}")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise ValueError(f"`{name}` holds non-finite values")
    return array


def _labels(name: str, array, num_points: int, num_classes: int, allow_ignore: bool) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.shape != (num_points,):
        raise ValueError(f"`{name}` must have shape [{num_points}] (one label per point), got {list(array.shape)}")
    if array.dtype.kind == "f":
        if not np.isfinite(array).all() or (array != np.round(array)).any():
            raise ValueError(f"`{name}` must hold integer labels")
    array = array.astype(np.int64)
    low = -1 if allow_ignore else 0
    bad = (array < low) | (array >= num_classes)
    if bad.any():
        raise ValueError(f"`{name}` must lie in [{low}, {num_classes}), got {sorted(set(array[bad].tolist()))[:5]}")
    return array.astype(np.int32)


def _write(
    out_dir: str,
    overwrite: bool,
    name: str,
    features: Features,
    splits: dict[str, list[tuple[str, Callable[[], dict]]]],
    pretty_name: str,
    license: str,
    description: str,
    tags: Iterable[str],
    show_progress: bool = True,
) -> BuildSummary:
    """Reads every item of every split (``(id, loader)``; a loader raising skips that item with its reason) and
    writes the rows into a fresh folder that replaces ``out_dir`` once complete."""
    from tqdm.auto import tqdm

    summary, start = BuildSummary(name), time.time()
    total = sum(len(items) for items in splits.values())
    if total == 0:
        raise FileNotFoundError(f"no {pretty_name} items were found; check the source folder")
    with dataset_output(out_dir, overwrite) as build_dir:
        bar = tqdm(total=total, desc=name, disable=not show_progress)
        for split, items in splits.items():
            writer = None
            for item_id, load in items:
                bar.update(1)
                try:
                    row = {"id": item_id, **load()}
                except (OSError, EOFError, ValueError, KeyError, IndexError, TypeError) as err:  # never stops a build
                    summary.skip(item_id, f"{type(err).__name__}: {err}")
                    continue
                if writer is None:
                    writer = ShardedParquetWriter(build_dir, split, features, rows_per_shard=512)
                writer.write(row)
            if writer is not None:
                writer.close()
                summary.rows_written[split] = writer.num_rows
        bar.close()
        if not summary.rows_written:
            raise ValueError(f"every {pretty_name} item failed to read:\n{summary.format()}")
        split = next(iter(summary.rows_written))
        loading = (
            f'```python\nimport datasets\nds = datasets.load_dataset("{out_dir}", split="{split}")\n'
            "ds.features  # the class names are in the ClassLabel features\n```"
        )
        write_dataset_card(
            build_dir, features, summary.rows_written, pretty_name, license,
            f"{description.strip()}\n\nRows skipped at conversion: {len(summary.skipped)}.", tags=tags, loading=loading,
        )  # fmt: skip
        summary.bytes_on_disk = folder_size(build_dir)
    summary.seconds = time.time() - start
    return summary


def _read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def _h5_items(path: str, split_tag: str, num_classes: int, normals_key: str | None = None):
    """(id, loader) per sample of an h5 file with ``data [S, N, 3]`` and ``label [S]`` / ``[S, 1]``; an unreadable
    file becomes one skipped item named after the file."""
    import h5py

    stem = os.path.splitext(os.path.basename(path))[0]
    try:
        with h5py.File(path, "r") as f:
            data, labels = np.asarray(f["data"]), np.asarray(f["label"]).reshape(-1)
            normals = np.asarray(f[normals_key]) if normals_key and normals_key in f else None
        if data.ndim != 3 or data.shape[-1] < 3 or labels.shape[0] != data.shape[0]:
            raise ValueError(f"`data` must be [S, N, 3] with one `label` per sample, got {data.shape}, {labels.shape}")
    except (OSError, ValueError, KeyError) as err:
        message = f"{type(err).__name__}: {err}"

        def fail(message=message):
            raise OSError(message)

        return [(f"{split_tag}/{stem}", fail)]

    def loader(i: int):
        def load():
            points = _xyz("points", data[i, :, :3])
            label = _labels("label", labels[i : i + 1], 1, num_classes, allow_ignore=False)[0]
            row_normals = _xyz("normals", normals[i], len(points)) if normals is not None else np.zeros((0, 3))
            return {"points": points, "normals": row_normals.astype(np.float32), "label": int(label)}

        return load

    return [(f"{split_tag}/{stem}/{i:05d}", loader(i)) for i in range(data.shape[0])]


# ------------------------------------------------------------------------------------------------------ converters
def convert_modelnet40(
    root: str, out_dir: str, layout: str | None = None, max_points: int | None = None, overwrite: bool = False,
    show_progress: bool = True,
) -> BuildSummary:  # fmt: skip
    """ModelNet40 from ``modelnet40_normal_resampled`` (``layout="txt"``) or ``modelnet40_ply_hdf5_2048``
    (``layout="h5"``); by default the layout is read from the folder. ``max_points``: keep the first N points of each
    txt shape (Point-BERT's ``ModelNetDataset`` without ``uniform``); the h5 shapes have 2048."""
    if layout is None:
        layout = "txt" if os.path.isfile(os.path.join(root, "modelnet40_shape_names.txt")) else "h5"
    if layout not in ("txt", "h5"):
        raise ValueError(f"`layout` must be 'txt' or 'h5', got {layout!r}")
    if max_points is not None and max_points < 1:
        raise ValueError(f"`max_points` must be >= 1, got {max_points}")
    names_file = "modelnet40_shape_names.txt" if layout == "txt" else "shape_names.txt"
    names = _read_lines(os.path.join(root, names_file))
    if len(names) != MODELNET40_NUM_CLASSES or len(set(names)) != len(names):
        raise ValueError(f"{names_file} must list {MODELNET40_NUM_CLASSES} distinct classes, got {len(names)}")
    splits: dict[str, list] = {}
    if layout == "txt":
        index = {n: i for i, n in enumerate(names)}
        for split, tag in (("train", "train"), ("test", "test")):
            items = []
            for shape_id in _read_lines(os.path.join(root, f"modelnet40_{tag}.txt")):
                category = shape_id.rsplit("_", 1)[0]  # night_stand_0001 -> night_stand

                def load(shape_id=shape_id, category=category):
                    if category not in index:
                        raise ValueError(f"category {category!r} is not in {names_file}")
                    path = os.path.join(root, category, f"{shape_id}.txt")
                    table = np.loadtxt(path, delimiter=",", dtype=np.float32, ndmin=2, max_rows=max_points)
                    if table.shape[1] != 6:
                        raise ValueError(f"{path} must have 6 columns (x,y,z,nx,ny,nz), got {table.shape[1]}")
                    points = _xyz("points", table[:, :3])
                    return {"points": points, "normals": _xyz("normals", table[:, 3:6]), "label": index[category]}

                items.append((shape_id, load))
            splits[split] = items
    else:
        for split in ("train", "test"):
            files = sorted(f for f in os.listdir(root) if f.startswith(f"ply_data_{split}") and f.endswith(".h5"))
            splits[split] = [item for f in files for item in _h5_items(os.path.join(root, f), split, 40, "normal")]
    return _write(
        out_dir, overwrite, "modelnet40", classification_features(names), splits, "ModelNet40", "other",
        f"ModelNet40 shape classification (Wu et al., CVPR 2015), converted from `{os.path.basename(root.rstrip('/'))}`"
        f" ({layout} layout) by `python scripts/build_dataset.py modelnet40`. 40 classes; `label` is a ClassLabel.",
        ("classification", "modelnet40"), show_progress,
    )  # fmt: skip


def convert_scanobjectnn(
    root: str, out_dir: str, variant: str = "PB_T50_RS", overwrite: bool = False, show_progress: bool = True
) -> BuildSummary:
    """ScanObjectNN ``variant`` (OBJ_BG, OBJ_ONLY, PB_T50_RS) from ``h5_files`` (``root``: it or its parent)."""
    if variant not in SCANOBJECTNN_VARIANTS:
        raise ValueError(f"`variant` must be one of {sorted(SCANOBJECTNN_VARIANTS)}, got {variant!r}")
    if os.path.isdir(os.path.join(root, "h5_files")):
        root = os.path.join(root, "h5_files")
    folder, suffix = SCANOBJECTNN_VARIANTS[variant]
    splits = {}
    for split, tag in (("train", "training"), ("test", "test")):
        path = os.path.join(root, folder, f"{tag}_objectdataset{suffix}.h5")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} is missing (ScanObjectNN {variant} {split} split)")
        splits[split] = _h5_items(path, split, len(SCANOBJECTNN_CLASSES))
    return _write(
        out_dir, overwrite, f"scanobjectnn-{variant}", classification_features(SCANOBJECTNN_CLASSES), splits,
        f"ScanObjectNN {variant}", "other",
        f"ScanObjectNN (Uy et al., ICCV 2019) variant {variant}, from `{folder}/*_objectdataset{suffix}.h5`, converted "
        "by `python scripts/build_dataset.py scanobjectnn`. 15 classes; 2048 points per object; no normals.",
        ("classification", "scanobjectnn"), show_progress,
    )  # fmt: skip


def convert_shapenet_part(root: str, out_dir: str, overwrite: bool = False, show_progress: bool = True) -> BuildSummary:
    """ShapeNetPart (``shapenetcore_partanno_segmentation_benchmark_v0_normal``): train / validation / test from the
    shuffled file lists; each point's part must be one of its category's parts."""
    synset_to_category = {}
    for line in _read_lines(os.path.join(root, "synsetoffset2category.txt")):
        category, synset = line.split()
        if category not in SHAPENET_PART_CATEGORY_PARTS:
            raise ValueError(f"synsetoffset2category.txt: unknown category {category!r}")
        synset_to_category[synset] = category
    splits = {}
    for split, tag in (("train", "train"), ("validation", "val"), ("test", "test")):
        with open(os.path.join(root, "train_test_split", f"shuffled_{tag}_file_list.json"), encoding="utf-8") as f:
            entries = json.load(f)
        items = []
        for entry in entries:
            synset, token = str(entry).split("/")[-2:]

            def load(synset=synset, token=token):
                if synset not in synset_to_category:
                    raise ValueError(f"synset {synset} is not in synsetoffset2category.txt")
                category = synset_to_category[synset]
                table = np.loadtxt(os.path.join(root, synset, f"{token}.txt"), dtype=np.float32, ndmin=2)
                if table.shape[1] != 7:
                    raise ValueError(f"expected 7 columns (x y z nx ny nz part), got {table.shape[1]}")
                parts = _labels("parts", table[:, 6], len(table), len(_PART_NAMES), allow_ignore=False)
                allowed = SHAPENET_PART_CATEGORY_PARTS[category]
                outside = sorted(set(np.unique(parts).tolist()) - set(allowed))
                if outside:
                    raise ValueError(f"parts {outside} do not belong to {category} (parts {allowed})")
                return {
                    "category": SHAPENET_PART_CATEGORIES.index(category),
                    "points": _xyz("points", table[:, :3]),
                    "normals": _xyz("normals", table[:, 3:6]),
                    "parts": parts,
                }

            items.append((f"{synset}/{token}", load))
        splits[split] = items
    return _write(
        out_dir, overwrite, "shapenet-part", PART_SEGMENTATION_FEATURES, splits, "ShapeNetPart", "other",
        "ShapeNetPart part segmentation (Yi et al., SIGGRAPH Asia 2016), from "
        "`shapenetcore_partanno_segmentation_benchmark_v0_normal`, converted by `python scripts/build_dataset.py "
        "shapenet-part`. 16 categories, 50 parts (global indices); the parts of each category are "
        "`unipre3d_hf.data.downstream.SHAPENET_PART_CATEGORY_PARTS`.",
        ("part-segmentation", "shapenet-part"), show_progress,
    )  # fmt: skip


def _load_scene(folder: str, segment_file: str, num_classes: int) -> dict:
    def npy(name: str, required: bool = True):
        path = os.path.join(folder, f"{name}.npy")
        if not os.path.isfile(path):
            if required:
                raise FileNotFoundError(f"{name}.npy is missing")
            return None
        return np.load(path, allow_pickle=False)

    coords = _xyz("coord", npy("coord"))
    n = len(coords)
    colors = npy("color", required=False)
    if colors is None:
        colors = np.zeros((n, 3), np.uint8)
    colors = _xyz("color", colors, n)
    if colors.min() < 0 or colors.max() > 255:
        raise ValueError(f"`color` must lie in [0, 255], got [{colors.min()}, {colors.max()}]")
    normals = npy("normal", required=False)
    normals = _xyz("normal", normals, n) if normals is not None else np.zeros((0, 3), np.float32)
    segment = _labels(segment_file, npy(segment_file), n, num_classes, allow_ignore=True)
    instance = npy("instance", required=False)
    instance = instance.reshape(-1).astype(np.int32) if instance is not None else np.full(n, -1, np.int32)
    if instance.shape != (n,):
        raise ValueError(f"`instance` must have shape [{n}], got {list(instance.shape)}")
    return {
        "coords": coords,
        "colors": np.round(colors).astype(np.uint8),
        "normals": normals,
        "segment": segment,
        "instance": instance,
    }


def convert_pointcept_scenes(
    root: str, out_dir: str, dataset: str, segment_file: str | None = None, validation_area: int = 5,
    overwrite: bool = False, show_progress: bool = True,
) -> BuildSummary:  # fmt: skip
    """S3DIS (``dataset="s3dis"``, ``Area_N/<room>``; ``validation_area`` is the held-out area), ScanNet20 or
    ScanNet200 (``train/``, ``val/``) in Pointcept's preprocessed layout. ``segment_file`` defaults to ``segment``
    (S3DIS), ``segment20`` or ``segment200``."""
    if dataset not in SCENE_SETS:
        raise ValueError(f"`dataset` must be one of {sorted(SCENE_SETS)}, got {dataset!r}")
    names = SCENE_SETS[dataset]
    segment_file = segment_file or {"s3dis": "segment", "scannet20": "segment20", "scannet200": "segment200"}[dataset]
    splits: dict[str, list] = {}

    def add(split: str, folder: str, scene_id: str) -> None:
        splits.setdefault(split, []).append(
            (scene_id, lambda folder=folder: _load_scene(folder, segment_file, len(names)))
        )

    if dataset == "s3dis":
        areas = sorted(d for d in os.listdir(root) if d.startswith("Area_") and os.path.isdir(os.path.join(root, d)))
        if f"Area_{validation_area}" not in areas:
            raise FileNotFoundError(f"Area_{validation_area} (the validation area) is missing under {root}")
        for area in areas:
            split = "validation" if area == f"Area_{validation_area}" else "train"
            for room in sorted(os.listdir(os.path.join(root, area))):
                if os.path.isdir(os.path.join(root, area, room)):
                    add(split, os.path.join(root, area, room), f"{area}/{room}")
    else:
        for split, tag in (("train", "train"), ("validation", "val")):
            base = os.path.join(root, tag)
            if not os.path.isdir(base):
                raise FileNotFoundError(f"{base} is missing (Pointcept's ScanNet layout has train/ and val/)")
            for scene in sorted(os.listdir(base)):
                if os.path.isdir(os.path.join(base, scene)):
                    add(split, os.path.join(base, scene), scene)
    pretty = {"s3dis": "S3DIS", "scannet20": "ScanNet20", "scannet200": "ScanNet200"}[dataset]
    return _write(
        out_dir, overwrite, dataset, scene_segmentation_features(names), splits, f"{pretty} semantic segmentation",
        "other",
        f"{pretty} scenes in Pointcept's preprocessed layout (`{segment_file}.npy` labels, -1 unlabelled), "
        f"converted by `python scripts/build_dataset.py {dataset}`. {len(names)} classes (ClassLabel).",
        ("semantic-segmentation", dataset), show_progress,
    )  # fmt: skip
