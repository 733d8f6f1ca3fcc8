"""Dataset schemas (``datasets.Features``), Parquet shard writing, dataset cards and loading.

One row is one training sample:

- **object level** (ShapeNet multi-view layout, ``OBJECT_FEATURES``): ``id``, ``category``, ``points`` ``[N, 3]``
  float32 (xyz in the frame of the cameras), ``colors`` ``[N, 3]`` uint8 (empty ``[0, 3]`` when the source has
  no colour, as ShapeNet), ``images`` (``V`` PNGs, RGB or RGBA), ``camera_to_world`` ``[V, 4, 4]`` float32 (OpenCV
  axes: x right, y down, z forward), ``intrinsics`` ``[V, 4]`` float32 ``(fx, fy, cx, cy)`` in pixels of the stored
  images (pixel centres at +0.5, as :mod:`unipre3d_hf.rendering.cameras`), ``width`` and ``height`` of the images.
- **scene level** (ScanNet layout, ``SCENE_FEATURES``): ``id``, ``coords`` ``[P, 3]`` float32 metres, ``colors``
  ``[P, 3]`` uint8, ``normals`` ``[P, 3]`` float32, ``segment`` ``[P]`` int32 semantic labels (-1 = ignore),
  ``instance`` ``[P]`` int32 (-1 = none), and ``F`` RGB-D frames: ``images`` (PNG/JPEG RGB), ``depths`` (16-bit PNG,
  millimetres, as ScanNet), ``camera_to_world`` ``[F, 4, 4]``, ``intrinsics`` ``[F, 4]`` (shared by a frame's colour
  and depth image, which are pixel-aligned), ``frame_ids`` ``[F]`` (the source frame numbers), ``width``, ``height``.

Images are stored as encoded bytes (``datasets.Image()``), so the Hub viewer shows them and a sample decodes only the
views it uses (:func:`load_pretraining_dataset` turns decoding off; the collators decode).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import yaml
from datasets import Features, Image, List, Value

__all__ = [
    "OBJECT_FEATURES",
    "SCENE_FEATURES",
    "DEPTH_SCALE",
    "MAX_IMAGE_PIXELS",
    "open_image",
    "check_depth_image",
    "ShardedParquetWriter",
    "BuildSummary",
    "dataset_output",
    "write_dataset_card",
    "load_pretraining_dataset",
    "load_split_dataset",
    "read_card_class_names",
    "raw_features",
]

#: depth PNGs hold millimetres (ScanNet's convention): metres = value / DEPTH_SCALE
DEPTH_SCALE = 1000.0

#: the most pixels an image file may declare before it is decoded (64 Mpx, e.g. 8192 x 8192; ScanNet's colour
#: frames have 1.25 Mpx): the size is read from the header, so a decompression bomb is refused before any decoding
MAX_IMAGE_PIXELS = 2**26

#: PIL modes of a 16-bit single-channel PNG (PIL opens 16-bit greyscale as "I;16", older versions as "I")
_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I")


def _points(dtype: str) -> List:
    return List(List(Value(dtype), length=3))


_MATRICES = List(List(List(Value("float32"), length=4), length=4))
_INTRINSICS = List(List(Value("float32"), length=4))

OBJECT_FEATURES = Features(
    {
        "id": Value("string"),
        "category": Value("string"),
        "points": _points("float32"),
        "colors": _points("uint8"),
        "images": List(Image()),
        "camera_to_world": _MATRICES,
        "intrinsics": _INTRINSICS,
        "width": Value("int32"),
        "height": Value("int32"),
    }
)

SCENE_FEATURES = Features(
    {
        "id": Value("string"),
        "coords": _points("float32"),
        "colors": _points("uint8"),
        "normals": _points("float32"),
        "segment": List(Value("int32")),
        "instance": List(Value("int32")),
        "images": List(Image()),
        "depths": List(Image()),
        "camera_to_world": _MATRICES,
        "intrinsics": _INTRINSICS,
        "frame_ids": List(Value("int32")),
        "width": Value("int32"),
        "height": Value("int32"),
    }
)

_IMAGE_COLUMNS = ("images", "depths")


def open_image(source, max_pixels: int = MAX_IMAGE_PIXELS):
    """Open and fully decode an image from a path, bytes or a binary file, refusing one that declares more than
    ``max_pixels`` pixels before decoding it. Raises ``ValueError`` (too large, or PIL's own decompression-bomb
    limit) or ``OSError`` (not an image, truncated)."""
    import io

    from PIL import Image as PILImage

    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    try:
        img = PILImage.open(source)
    except PILImage.DecompressionBombError as err:
        raise ValueError(f"image too large to decode safely ({err})") from err
    w, h = img.size
    if w * h > max_pixels:
        img.close()
        raise ValueError(
            f"image declares {w}x{h} = {w * h} pixels, more than the limit of {max_pixels} (MAX_IMAGE_PIXELS)"
        )
    try:
        img.load()
    except PILImage.DecompressionBombError as err:
        raise ValueError(f"image too large to decode safely ({err})") from err
    return img


def check_depth_image(img) -> None:
    """Raise ``ValueError`` unless ``img`` (PIL) is a single-channel 16-bit depth image (millimetres, as ScanNet):
    an 8-bit PNG (mode "L") would be read as 0..255 mm, an RGB one as three channels."""
    if img.mode not in _DEPTH_MODES:
        raise ValueError(
            f"depth image has PIL mode {img.mode!r} ({len(img.getbands())} channel(s)); depth must be a single-channel "
            "16-bit PNG in millimetres"
        )


def raw_features(features: Features) -> Features:
    """A copy of ``features`` whose image columns are not decoded (rows then hold ``{"bytes", "path"}`` dicts)."""
    out = Features(dict(features))
    for name in _IMAGE_COLUMNS:
        if name in out:
            out[name] = List(Image(decode=False))
    return out


@dataclass
class BuildSummary:
    """What a builder or converter wrote: rows per split, every skipped item (a whole row not written) with its
    reason, and every dropped frame or view (left out of a row that was kept or skipped) with its item id and reason;
    ``dropped_frames`` counts the latter."""

    name: str
    rows_written: dict[str, int] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    dropped_frames: int = 0
    dropped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    bytes_on_disk: int = 0

    def skip(self, item_id: str, reason: str) -> None:
        self.skipped.append((item_id, reason))

    def drop(self, item_id: str, reason: str) -> None:
        """Record one frame or view of ``item_id`` left out (``reason`` names the frame and why)."""
        self.dropped_frames += 1
        self.dropped.append((item_id, reason))

    def format(self) -> str:
        lines = [f"{self.name}: {sum(self.rows_written.values())} rows written in {self.seconds:.1f} s"]
        for split, n in self.rows_written.items():
            lines.append(f"  {split}: {n} rows")
        if self.bytes_on_disk:
            lines.append(f"  size on disk: {self.bytes_on_disk / 2**20:.2f} MiB")
        if self.dropped_frames:
            lines.append(f"  frames / views dropped (bad camera, missing or unreadable file): {self.dropped_frames}")
            for item_id, reason in self.dropped[:20]:
                lines.append(f"    - {item_id}: {reason}")
            if len(self.dropped) > 20:
                lines.append(f"    ... and {len(self.dropped) - 20} more")
        lines.append(f"  rows skipped: {len(self.skipped)}")
        reasons: dict[str, int] = {}
        for _, reason in self.skipped:
            key = reason.split(":")[0]
            reasons[key] = reasons.get(key, 0) + 1
        for reason, n in sorted(reasons.items()):
            lines.append(f"    {n} x {reason}")
        for item_id, reason in self.skipped[:20]:
            lines.append(f"    - {item_id}: {reason}")
        if len(self.skipped) > 20:
            lines.append(f"    ... and {len(self.skipped) - 20} more")
        return "\n".join(lines)


class ShardedParquetWriter:
    """Writes rows of one split to ``<out_dir>/data/<split>-NNNNN-of-MMMMM.parquet`` shards.

    Rows are encoded with ``features.encode_example`` (images as ``{"bytes": png, "path": None}``, PIL images or
    arrays; arrays as nested lists), and the Parquet files carry the ``datasets`` feature metadata, so
    ``datasets.load_dataset(out_dir)`` restores the exact features. Small row groups keep random access and streaming
    cheap for image-heavy rows.
    """

    def __init__(self, out_dir: str, split: str, features: Features, rows_per_shard: int = 256, row_group_size=32):
        from datasets.arrow_writer import ParquetWriter

        if rows_per_shard <= 0:
            raise ValueError(f"`rows_per_shard` must be positive, got {rows_per_shard}")
        self._writer_cls = ParquetWriter
        self.data_dir = os.path.join(out_dir, "data")
        os.makedirs(self.data_dir, exist_ok=True)
        stale = [n for n in os.listdir(self.data_dir) if n.startswith(f"{split}-") and n.endswith(".parquet")]
        if stale:  # never delete a finished set's shards: builds write into a fresh folder (see dataset_output)
            raise FileExistsError(
                f"{self.data_dir} already holds {split!r} shards ({stale[0]}, ...); build into the folder that "
                "`dataset_output(out_dir, overwrite=...)` gives, which replaces the old set only once the new one is "
                "complete"
            )
        self.split = split
        self.features = features
        self.rows_per_shard = rows_per_shard
        self.row_group_size = row_group_size
        self.num_rows = 0
        self._shards: list[str] = []
        self._writer = None
        self._rows_in_shard = 0

    def write(self, row: dict) -> None:
        missing = set(self.features) - set(row)
        if missing:
            raise ValueError(f"row {row.get('id')!r} lacks the fields {sorted(missing)}")
        if self._writer is None or self._rows_in_shard >= self.rows_per_shard:
            self._close_shard()
            path = os.path.join(self.data_dir, f"{self.split}-{len(self._shards):05d}.parquet.tmp")
            self._shards.append(path)
            self._writer = self._writer_cls(features=self.features, path=path, writer_batch_size=self.row_group_size)
            self._rows_in_shard = 0
        self._writer.write(self.features.encode_example({k: row[k] for k in self.features}))
        self._rows_in_shard += 1
        self.num_rows += 1

    def _close_shard(self) -> None:
        if self._writer is not None:
            self._writer.finalize()
            self._writer.close()
            self._writer = None

    def close(self) -> list[str]:
        """Finish the last shard and give every shard its final ``-of-`` name; returns the final paths."""
        self._close_shard()
        final = []
        for i, tmp in enumerate(self._shards):
            path = os.path.join(self.data_dir, f"{self.split}-{i:05d}-of-{len(self._shards):05d}.parquet")
            os.replace(tmp, path)
            final.append(path)
        return final


@contextlib.contextmanager
def dataset_output(out_dir: str, overwrite: bool = False) -> Iterator[str]:
    """A fresh build folder for a dataset that replaces ``out_dir`` only once the build is complete.

    ::

        with dataset_output("data/objects-mini", overwrite=args.overwrite) as build_dir:
            writer = ShardedParquetWriter(build_dir, "train", OBJECT_FEATURES)
            ...
            write_dataset_card(build_dir, ...)
        # here data/objects-mini holds the new set; the old one was removed only after the new one was in place

    The build folder is a sibling of ``out_dir`` (same file system, so the final move is a rename). If the body
    raises (or the process is killed), ``out_dir`` is left exactly as it was; a killed build leaves a
    ``.tmp-build-*`` sibling behind, which the next build of the same ``out_dir`` removes.

    Raises:
        FileExistsError: ``out_dir`` exists and is not empty, and ``overwrite`` is False.
        ValueError: the body finished without writing anything into the build folder (the old set is kept).
    """
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)) and not overwrite:
        raise FileExistsError(f"`out_dir` {out_dir} already exists; pass overwrite=True (--overwrite) to replace it")
    parent, name = os.path.split(out_dir)
    os.makedirs(parent, exist_ok=True)
    for child in os.listdir(parent):  # leftovers of killed builds of this same set (not those of a live build)
        for prefix in (f".tmp-build-{name}-", f".tmp-old-{name}-"):
            if child.startswith(prefix) and not _build_alive(child[len(prefix) :]):
                shutil.rmtree(os.path.join(parent, child), ignore_errors=True)
    build_dir = os.path.join(parent, f".tmp-build-{name}-{os.getpid()}-{time.time_ns()}")
    os.makedirs(build_dir)
    try:
        yield build_dir
        if not os.listdir(build_dir):
            raise ValueError(f"the build of {out_dir} wrote nothing; the previous contents are kept")
    except BaseException:
        shutil.rmtree(build_dir, ignore_errors=True)
        raise
    trash = None
    if os.path.exists(out_dir):
        trash = os.path.join(parent, f".tmp-old-{name}-{os.getpid()}-{time.time_ns()}")
        os.replace(out_dir, trash)
    os.replace(build_dir, out_dir)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def _build_alive(suffix: str) -> bool:
    """Whether the build named by a ``<pid>-<ns>`` folder suffix is still running on this machine (its process
    exists and is not this one); such a folder belongs to a concurrent build and is left alone."""
    pid = suffix.split("-")[0]
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else
    return True


def folder_size(path: str) -> int:
    """Bytes of every file under ``path``."""
    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total


def _split_bytes(out_dir: str, split: str) -> int:
    data_dir = os.path.join(out_dir, "data")
    names = os.listdir(data_dir) if os.path.isdir(data_dir) else []
    return sum(os.path.getsize(os.path.join(data_dir, n)) for n in names if n.startswith(f"{split}-"))


def write_dataset_card(
    out_dir: str,
    features: Features,
    splits: dict[str, int],
    pretty_name: str,
    license: str,
    description: str,
    tags: Iterable[str] = (),
    extra_yaml: dict | None = None,
    loading: str | None = None,
    load_path: str | None = None,
) -> str:
    """Write ``<out_dir>/README.md``: a YAML header (licence, configs/data files, features, split sizes) and a body.

    ``description`` is Markdown (provenance, how the set was built, the command). Splits without rows have no shard
    and are left out of the card (``datasets`` can't load a split without files). ``load_path`` is the path the card's
    loading snippet shows (default ``out_dir``; pass the final folder when ``out_dir`` is a build folder of
    :func:`dataset_output`). ``loading`` (Markdown) replaces the default "Loading" snippet (the pre-training
    loader). Returns the card's path.
    """
    load_path = out_dir if load_path is None else load_path
    splits = {s: n for s, n in splits.items() if n > 0}
    if not splits:
        raise ValueError(f"no rows were written to {out_dir}; nothing to describe")
    header = {
        "pretty_name": pretty_name,
        "license": license,
        "tags": ["unipre3d", "point-cloud", "3d", "gaussian-splatting", *tags],
        "configs": [
            {
                "config_name": "default",
                "data_files": [{"split": s, "path": f"data/{s}-*.parquet"} for s in splits],
            }
        ],
        "dataset_info": {
            "features": features._to_yaml_list(),
            "splits": [
                {"name": s, "num_examples": int(n), "num_bytes": _split_bytes(out_dir, s)} for s, n in splits.items()
            ],
        },
    }
    if extra_yaml:
        header.update(extra_yaml)
    if loading is None:
        loading = (
            "```python\nfrom unipre3d_hf.data import load_pretraining_dataset\n"
            f'ds = load_pretraining_dataset("{load_path}", split="{next(iter(splits))}")  # or streaming=True\n'
            f'# plain datasets works too: datasets.load_dataset("{load_path}")\n```'
        )
    body = (
        f"# {pretty_name}\n\n{description.strip()}\n\n## Loading\n\n{loading.strip()}\n\n"
        f"Card written {datetime.date.today().isoformat()} by `unipre3d_hf`.\n"
    )
    path = os.path.join(out_dir, "README.md")
    with open(path, "w") as f:
        f.write("---\n" + yaml.safe_dump(header, sort_keys=False) + "---\n\n" + body)
    return path


def read_card_class_names(folder: str) -> list[str] | None:
    """``class_names`` of the card (the YAML front matter of ``<folder>/README.md``) that
    :func:`write_dataset_card` writes with ``extra_yaml={"class_names": ...}``, or None."""
    path = os.path.join(folder, "README.md")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if not text.startswith("---"):
        return None
    header = yaml.safe_load(text.split("---", 2)[1]) or {}
    names = header.get("class_names") if isinstance(header, dict) else None
    return [str(n) for n in names] if isinstance(names, list) and names else None


def load_split_dataset(path: str, split: str, streaming: bool = False, features: Features | None = None):
    """One split of a dataset: a local folder this package wrote (``<path>/data/<split>-*.parquet``) or a Hub id.

    A local folder is read through the ``parquet`` builder with its files named explicitly, so that the ``datasets``
    cache is keyed by the files' paths and modification times. ``datasets.load_dataset(<folder>)`` keys it by the
    folder's name and card alone (datasets 5.2): a rebuilt set, or another folder of the same name with the same card,
    would silently come back as the rows cached from the first one.
    """
    import datasets

    if not os.path.isdir(path):
        return datasets.load_dataset(path, split=split, streaming=streaming, features=features)
    data_dir = os.path.join(path, "data")
    names = sorted(os.listdir(data_dir)) if os.path.isdir(data_dir) else []
    files = [os.path.join(data_dir, n) for n in names if n.startswith(f"{split}-") and n.endswith(".parquet")]
    if not files:
        splits = sorted({n.split("-")[0] for n in names if n.endswith(".parquet")})
        raise ValueError(
            f"split {split!r} not found in {path}: no {data_dir}/{split}-*.parquet (splits there: {splits or 'none'})"
        )
    return datasets.load_dataset(
        "parquet", data_files={split: files}, split=split, streaming=streaming, features=features
    )


def load_pretraining_dataset(path: str, split: str = "train", streaming: bool = False, level: str | None = None):
    """Load a dataset written by this package (a local folder or a Hub id) for the pre-training collators.

    Images are left encoded (``{"bytes", "path"}``) so that a sample decodes only the views it uses, and the dataset is
    formatted as NumPy so that point arrays arrive as ``[N, 3]`` arrays. ``level`` (``"object"`` or ``"scene"``)
    picks the schema; by default it is read from the columns.
    """

    if level is None:
        probe = load_split_dataset(path, split, streaming=True)
        columns = set(probe.features or {})
        level = "scene" if "coords" in columns else "object"
    if level not in ("object", "scene"):
        raise ValueError(f"`level` must be 'object' or 'scene', got {level!r}")
    features = raw_features(OBJECT_FEATURES if level == "object" else SCENE_FEATURES)
    ds = load_split_dataset(path, split, streaming=streaming, features=features)
    return ds.with_format("numpy")
