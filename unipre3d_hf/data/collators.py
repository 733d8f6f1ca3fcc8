"""Collators: rows of the object / scene datasets -> dicts of tensors for ``UniPre3DForGaussianPretraining``.

Both are plain callables for ``torch.utils.data.DataLoader(collate_fn=...)`` (map-style or streaming datasets). They
select views (:mod:`.sampling`), decode only the selected images, centre the points and cameras together, augment,
sample points and stack. The output is a ``dict`` of tensors only, so Accelerate moves it to the device; the model
builds cameras with ``Cameras.from_camera_to_world(batch["target_c2w"], batch["target_intrinsics"], W, H)``.

A row that can't be used (bad shapes, non-finite values, a camera matrix that is not rigid or a focal length that is
not positive, an image that does not decode or declares more than ``MAX_IMAGE_PIXELS`` pixels, a depth image that is
not 16-bit, too few views) raises
:class:`CorruptSampleError` naming the row's id; with ``skip_corrupt=True`` the row is dropped from the batch instead,
a warning is logged and ``collator.skipped`` records ``(id, reason)``.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from PIL import Image

from ..rendering.cameras import check_rigid_transforms
from .rows import SAMPLE_SEED_KEY
from .sampling import ObjectViewSampler, SceneViewSampler
from .schemas import DEPTH_SCALE, check_depth_image, open_image
from .transforms import (
    SceneAugmentation,
    apply_rigid_transform,
    center_points_and_cameras,
    farthest_point_order,
    farthest_point_sample,
    normalize_color,
    random_object_rotation,
)

logger = logging.getLogger(__name__)

__all__ = ["CorruptSampleError", "ObjectPretrainingCollator", "ScenePretrainingCollator", "decode_image"]


class CorruptSampleError(ValueError):
    """A dataset row that can't be turned into a training sample; ``sample_id`` names it."""

    def __init__(self, sample_id: str, reason: str):
        super().__init__(f"sample {sample_id!r}: {reason}")
        self.sample_id = sample_id
        self.reason = reason


def decode_image(entry) -> Image.Image:
    """A PIL image from a dataset image entry: ``{"bytes", "path"}`` dict (undecoded), PIL image or array. Encoded
    images are decoded with :func:`~unipre3d_hf.data.schemas.open_image` (at most ``MAX_IMAGE_PIXELS`` pixels)."""
    if isinstance(entry, Image.Image):
        return entry
    if isinstance(entry, np.ndarray) and entry.dtype != object:
        return Image.fromarray(entry)
    if isinstance(entry, dict):
        if entry.get("bytes") is not None:
            return open_image(entry["bytes"])
        if entry.get("path"):
            return open_image(entry["path"])
        raise ValueError("image entry has neither bytes nor path")
    raise ValueError(f"unsupported image entry of type {type(entry).__name__}")


def _array(row: dict, key: str, sid: str, trailing: tuple[int, ...], dtype) -> np.ndarray:
    if key not in row:
        raise CorruptSampleError(sid, f"missing field `{key}`")
    value = row[key]
    try:
        arr = np.asarray(value if not (isinstance(value, np.ndarray) and value.dtype == object) else list(value))
        if arr.size == 0:
            arr = arr.reshape(0, *trailing)
        arr = arr.astype(dtype)
    except (TypeError, ValueError) as err:
        raise CorruptSampleError(sid, f"`{key}` is not a numeric array ({err})") from err
    if arr.ndim != 1 + len(trailing) or tuple(arr.shape[1:]) != trailing:
        shape = ", ".join(["N", *map(str, trailing)])
        raise CorruptSampleError(sid, f"`{key}` must have shape [{shape}], got {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise CorruptSampleError(sid, f"`{key}` contains NaN or Inf")
    return arr


def _size(image_size) -> tuple[int, int] | None:
    """``None``, an int (square) or ``(height, width)`` -> ``(height, width)``."""
    if image_size is None:
        return None
    if isinstance(image_size, int):
        return (image_size, image_size)
    h, w = image_size
    return (int(h), int(w))


def _rgb(entry, size: tuple[int, int] | None, background: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode to float ``[3, H, W]`` in [0, 1]; an alpha channel is composited over ``background``; returns the source
    (height, width) as well."""
    img = decode_image(entry)
    src = (img.height, img.width)
    mode = "RGBA" if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info else "RGB"
    img = img.convert(mode)
    if size is not None and (img.height, img.width) != size:
        img = img.resize((size[1], size[0]), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    if mode == "RGBA":
        alpha = arr[..., 3:]
        arr = arr[..., :3] * alpha + background[None, None, :] * (1.0 - alpha)
    return np.ascontiguousarray(arr.transpose(2, 0, 1)), src


def _depth(entry, size: tuple[int, int] | None) -> np.ndarray:
    """Decode a 16-bit millimetre depth PNG to float metres ``[H, W]`` (nearest resize, as the paper); an 8-bit or
    RGB depth image raises ``ValueError``."""
    img = decode_image(entry)
    check_depth_image(img)
    if size is not None and (img.height, img.width) != size:
        img = img.resize((size[1], size[0]), Image.NEAREST)
    return np.asarray(img, dtype=np.float32) / DEPTH_SCALE


def _scale_intrinsics(intr: np.ndarray, src: tuple[int, int], dst: tuple[int, int]) -> np.ndarray:
    """Rescale (fx, fy, cx, cy) from a (h, w) image to another; with pixel centres at +0.5 every term scales."""
    sy, sx = dst[0] / src[0], dst[1] / src[1]
    return (intr * np.array([sx, sy, sx, sy], dtype=np.float32)).astype(np.float32)


class _BaseCollator:
    def __init__(self, skip_corrupt: bool, seed: int | None):
        self.skip_corrupt = skip_corrupt
        self.skipped: list[tuple[str, str]] = []
        self._rng = np.random.default_rng(seed) if seed is not None else None

    def _generator(self) -> np.random.Generator:
        # Without a seed, draw from torch's RNG so that DataLoader workers (seeded differently by torch) differ.
        if self._rng is not None:
            return self._rng
        return np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))

    def _prepare_all(self, rows: list[dict]) -> list[dict]:
        if not isinstance(rows, (list, tuple)) or not rows:
            raise ValueError("the collator takes a non-empty list of dataset rows")
        # draw from torch's RNG only for rows without their own seed: drawing it for seeded rows would shift the
        # training's random stream (dropout) by whether a batch was collated before or after a checkpoint
        rng = self._generator() if any(row.get(SAMPLE_SEED_KEY) is None for row in rows) else None
        samples = []
        for i, row in enumerate(rows):
            sid = str(row.get("id", f"<row {i} of the batch>"))
            # a row from `SeededRows` brings its own seed: its views and augmentation depend on nothing else
            seed = row.get(SAMPLE_SEED_KEY)
            try:
                samples.append(self._prepare(row, sid, rng if seed is None else np.random.default_rng(list(seed))))
            except CorruptSampleError as err:
                self._handle(err)
            except (OSError, ValueError, KeyError, IndexError) as err:
                self._handle(CorruptSampleError(sid, f"{type(err).__name__}: {err}"))
        if not samples:
            raise ValueError(f"every row of the batch was corrupt: {self.skipped[-len(rows) :]}")
        return samples

    def _handle(self, err: CorruptSampleError) -> None:
        if not self.skip_corrupt:
            raise err
        logger.warning("skipping corrupt sample %s: %s", err.sample_id, err.reason)
        self.skipped.append((err.sample_id, err.reason))

    def _views(self, row, sid, ref, sup, size, background, depth_key=None) -> dict:
        images = row["images"]
        c2w = _array(row, "camera_to_world", sid, (4, 4), np.float32)
        intr = _array(row, "intrinsics", sid, (4,), np.float32)
        if not (len(images) == len(c2w) == len(intr)):
            raise CorruptSampleError(
                sid, f"views disagree: {len(images)} images, {len(c2w)} camera_to_world, {len(intr)} intrinsics"
            )
        bad = np.flatnonzero(~(intr[:, :2] > 0).all(1))
        if len(bad):
            raise CorruptSampleError(
                sid, f"`intrinsics` focal lengths must be positive, view {bad[0]} has (fx, fy, cx, cy) = {intr[bad[0]]}"
            )
        try:
            check_rigid_transforms("camera_to_world", c2w)
        except ValueError as err:
            raise CorruptSampleError(sid, str(err)) from err
        out = {}
        for name, idx in (("reference", ref), ("target", sup)):
            imgs, intrs, depths = [], [], []
            for v in idx:
                try:
                    img, src = _rgb(images[v], size, background)
                    if depth_key is not None:
                        depths.append(_depth(row[depth_key][v], size))
                except (OSError, ValueError) as err:
                    raise CorruptSampleError(sid, f"view {int(v)} does not decode ({err})") from err
                intrs.append(_scale_intrinsics(intr[v], src, img.shape[1:]))
                imgs.append(img)
            shapes = {im.shape for im in imgs} | {(3, *d.shape) for d in depths}
            if len(shapes) != 1:
                raise CorruptSampleError(sid, f"views have different sizes {sorted(shapes)}; pass image_size=")
            out[f"{name}_images"] = np.stack(imgs)
            out[f"{name}_c2w"] = c2w[idx]
            out[f"{name}_intrinsics"] = np.stack(intrs)
            out[f"{name}_index"] = np.asarray(idx, dtype=np.int64)
            if depth_key is not None:
                out[f"{name}_depths"] = np.stack(depths)
        return out

    @staticmethod
    def _stack_views(samples: list[dict], batch: dict, with_depth: bool) -> None:
        shapes = {s["reference_images"].shape[1:] for s in samples} | {s["target_images"].shape[1:] for s in samples}
        if len(shapes) != 1:
            raise ValueError(f"samples of one batch have different image sizes {sorted(shapes)}; pass image_size=")
        for name in ("reference", "target"):
            for key in ("images", "c2w", "intrinsics", "index") + (("depths",) if with_depth else ()):
                batch[f"{name}_{key}"] = torch.from_numpy(np.stack([s[f"{name}_{key}"] for s in samples]))
        for key in ("reference_index", "target_index"):
            batch[key.replace("index", "view_index")] = batch.pop(key)


class ObjectPretrainingCollator(_BaseCollator):
    """Object-level batches (method reference 1.2 and 8.1).

    Per row: pick views with ``view_sampler`` (default: the paper's 1 reference + 4 supervision views, the reference
    among them), centre points and cameras by the points' mean, optionally apply the paper's random rotation to points
    and cameras together (``augment=True``), then keep ``num_points`` points by ``point_sampling``: ``"fps"``
    (farthest point sampling from index 0, as the paper), ``"random"``, or ``"first"`` (the stored order; the mini sets
    store points in FPS order, so ``"first"`` equals ``"fps"`` there and costs nothing). Clouds with fewer points are
    padded by repeating their points and marked in ``point_mask``. Images with alpha are composited over
    ``background`` (default black, as the paper); images are resized to ``image_size`` when given, intrinsics with
    them.

    Returns a dict (B rows, N = ``num_points``, Vr / Vs = reference / supervision views, H x W image size):

    - ``points`` ``[B, N, 3]`` float32: xyz, centred, in the frame of the cameras (ShapeNet: axis-remapped);
    - ``point_mask`` ``[B, N]`` bool: False for padding repeats;
    - ``point_colors`` ``[B, N, 3]`` float32 in [0, 1] (only with ``return_colors=True``; zeros where the data set has
      no colours);
    - ``reference_images`` ``[B, Vr, 3, H, W]`` float32 in [0, 1]; ``reference_c2w`` ``[B, Vr, 4, 4]`` camera-to-world
      (OpenCV axes); ``reference_intrinsics`` ``[B, Vr, 4]`` (fx, fy, cx, cy) pixels; ``reference_view_index``
      ``[B, Vr]`` int64 (indices into the row's views);
    - ``target_images`` ``[B, Vs, 3, H, W]``, ``target_c2w`` ``[B, Vs, 4, 4]``, ``target_intrinsics`` ``[B, Vs, 4]``,
      ``target_view_index`` ``[B, Vs]``: the supervision views;
    - ``background`` ``[B, 3]`` float32: the colour the renders should be composited over.
    """

    def __init__(
        self,
        num_points: int = 1024,
        point_sampling: str = "fps",
        view_sampler: ObjectViewSampler | None = None,
        image_size: int | tuple[int, int] | None = None,
        background: tuple[float, float, float] = (0.0, 0.0, 0.0),
        augment: bool = True,
        return_colors: bool = False,
        skip_corrupt: bool = False,
        seed: int | None = None,
    ):
        super().__init__(skip_corrupt, seed)
        if point_sampling not in ("fps", "random", "first"):
            raise ValueError(f"`point_sampling` must be 'fps', 'random' or 'first', got {point_sampling!r}")
        if num_points <= 0:
            raise ValueError(f"`num_points` must be positive, got {num_points}")
        self.num_points = num_points
        self.point_sampling = point_sampling
        self.view_sampler = view_sampler or ObjectViewSampler()
        self.image_size = _size(image_size)
        self.background = np.asarray(background, dtype=np.float32)
        if self.background.shape != (3,):
            raise ValueError(f"`background` must have 3 values, got {background!r}")
        self.augment = augment
        self.return_colors = return_colors

    def _prepare(self, row: dict, sid: str, rng: np.random.Generator) -> dict:
        points = _array(row, "points", sid, (3,), np.float32)
        if len(points) == 0:
            raise CorruptSampleError(sid, "`points` is empty")
        colors = _array(row, "colors", sid, (3,), np.float32) if "colors" in row else np.zeros((0, 3), np.float32)
        if len(colors) not in (0, len(points)):
            raise CorruptSampleError(sid, f"`colors` has {len(colors)} rows for {len(points)} points")
        num_views = len(row["images"])
        try:
            ref, sup = self.view_sampler(num_views, rng)
        except ValueError as err:
            raise CorruptSampleError(sid, str(err)) from err
        sample = self._views(row, sid, ref, sup, self.image_size, self.background)
        all_c2w = np.concatenate([sample["reference_c2w"], sample["target_c2w"]])
        points, all_c2w = center_points_and_cameras(points, all_c2w)
        if self.augment:
            points, all_c2w = apply_rigid_transform(points, all_c2w, random_object_rotation(rng))
        sample["reference_c2w"], sample["target_c2w"] = all_c2w[: len(ref)], all_c2w[len(ref) :]
        if self.point_sampling == "fps":
            keep = farthest_point_order(points, self.num_points)
            points = points[keep]
            colors = colors[keep] if len(colors) else colors
        elif self.point_sampling == "random":
            keep = rng.choice(len(points), size=min(self.num_points, len(points)), replace=False)
            points = points[keep]
            colors = colors[keep] if len(colors) else colors
        elif self.point_sampling == "first":
            points, colors = points[: self.num_points], colors[: self.num_points]
        sample["points"] = points
        sample["colors"] = colors / 255.0 if len(colors) else np.zeros_like(points)
        return sample

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        samples = self._prepare_all(rows)
        b, n = len(samples), self.num_points
        lengths = torch.tensor([len(s["points"]) for s in samples])
        # every sample holds <= n points after sampling; pad by cycling through its points, marked in point_mask
        idx = torch.arange(n)[None, :] % lengths[:, None]
        mask = torch.arange(n)[None, :] < lengths[:, None]
        gathered = torch.zeros(b, n, 6)
        for i, s in enumerate(samples):
            both = torch.from_numpy(np.concatenate([s["points"], s["colors"]], axis=1).astype(np.float32))
            gathered[i] = both[idx[i]]
        batch = {"points": gathered[..., :3].contiguous(), "point_mask": mask}
        if self.return_colors:
            batch["point_colors"] = gathered[..., 3:].contiguous()
        self._stack_views(samples, batch, with_depth=False)
        batch["background"] = torch.from_numpy(self.background).expand(len(samples), 3).clone()
        return batch


class ScenePretrainingCollator(_BaseCollator):
    """Scene-level batches, packed Pointcept-style (method reference 1.3 and 8.2); several scenes per batch.

    Per row: pick frame pairs with ``view_sampler`` (default: 8 supervision frames spread over the sequence, each with
    a reference within +-5 frames), centre the points and the cameras by the points' mean (x, y and z, as the paper),
    apply ``augmentation`` (``None`` by default, as the paper's configs; :class:`SceneAugmentation` gives the paper's
    optional list), cap the points at ``max_points`` (the paper's PTv3 option: ``max_points=80000``,
    ``max_points_method="fps"``; ``"random"`` is the cheap variant), and build ``features = [normal, colour / 127.5 -
    1]``. No grid sampling: the scene backbones voxelize with their ``config.grid_size``.

    Returns a dict (B scenes, P points in total, V = ``num_reference`` frames, H x W):

    - ``coords`` ``[P, 3]`` float32 metres, centred per scene; ``features`` ``[P, 6]`` float32 (normal, colour in
      [-1, 1]); ``offsets`` ``[B]`` int64 cumulative point counts (scene ``b`` is ``offsets[b-1]:offsets[b]``);
    - ``segment`` ``[P]`` and ``instance`` ``[P]`` int64 (-1 = ignore / none; only with ``return_labels=True``);
    - ``reference_images`` ``[B, V, 3, H, W]`` in [0, 1], ``reference_depths`` ``[B, V, H, W]`` float32 metres (0 =
      no depth), ``reference_c2w`` ``[B, V, 4, 4]``, ``reference_intrinsics`` ``[B, V, 4]``,
      ``reference_view_index`` ``[B, V]`` (frame indices in the row's sequence);
    - ``target_images``, ``target_depths``, ``target_c2w``, ``target_intrinsics``, ``target_view_index``: the same for
      the supervision frames (``target_*[:, i]`` pairs with ``reference_*[:, i]``);
    - ``background`` ``[B, 3]`` float32 (default white, as the paper).
    """

    def __init__(
        self,
        view_sampler: SceneViewSampler | None = None,
        image_size: int | tuple[int, int] | None = None,
        background: tuple[float, float, float] = (1.0, 1.0, 1.0),
        augmentation: SceneAugmentation | None = None,
        max_points: int | None = None,
        max_points_method: str = "fps",
        return_labels: bool = True,
        skip_corrupt: bool = False,
        seed: int | None = None,
    ):
        super().__init__(skip_corrupt, seed)
        if max_points_method not in ("fps", "random"):
            raise ValueError(f"`max_points_method` must be 'fps' or 'random', got {max_points_method!r}")
        if max_points is not None and max_points <= 0:
            raise ValueError(f"`max_points` must be positive or None, got {max_points}")
        self.view_sampler = view_sampler or SceneViewSampler()
        self.image_size = _size(image_size)
        self.background = np.asarray(background, dtype=np.float32)
        if self.background.shape != (3,):
            raise ValueError(f"`background` must have 3 values, got {background!r}")
        self.augmentation = augmentation
        self.max_points = max_points
        self.max_points_method = max_points_method
        self.return_labels = return_labels

    def _prepare(self, row: dict, sid: str, rng: np.random.Generator) -> dict:
        coords = _array(row, "coords", sid, (3,), np.float32)
        if len(coords) == 0:
            raise CorruptSampleError(sid, "`coords` is empty")
        p = len(coords)
        colors = _array(row, "colors", sid, (3,), np.float32)
        normals = _array(row, "normals", sid, (3,), np.float32)
        labels = {}
        for key in ("segment", "instance"):
            arr = _array(row, key, sid, (), np.int64) if key in row else np.zeros(0, np.int64)
            labels[key] = arr if len(arr) else np.full(p, -1, np.int64)
        for key, arr in (("colors", colors), ("normals", normals), *labels.items()):
            if len(arr) != p:
                raise CorruptSampleError(sid, f"`{key}` has {len(arr)} rows for {p} coords")
        num_frames = len(row["images"])
        if "depths" not in row or len(row["depths"]) != num_frames:
            raise CorruptSampleError(sid, f"`depths` must hold one depth image per frame ({num_frames})")
        try:
            ref, sup = self.view_sampler(num_frames, rng)
        except ValueError as err:
            raise CorruptSampleError(sid, str(err)) from err
        sample = self._views(row, sid, ref, sup, self.image_size, self.background, depth_key="depths")
        all_c2w = np.concatenate([sample["reference_c2w"], sample["target_c2w"]])
        coords, all_c2w = center_points_and_cameras(coords, all_c2w)
        if self.augmentation is not None:
            aug = self.augmentation(
                {"coords": coords, "colors": colors, "normals": normals, "camera_to_world": all_c2w}, rng
            )
            coords, colors, normals, all_c2w = aug["coords"], aug["colors"], aug["normals"], aug["camera_to_world"]
        sample["reference_c2w"], sample["target_c2w"] = all_c2w[: len(ref)], all_c2w[len(ref) :]
        if self.max_points is not None and p > self.max_points:
            if self.max_points_method == "fps":
                keep = farthest_point_sample(torch.from_numpy(coords)[None], self.max_points)[0].numpy()
            else:
                keep = np.sort(rng.choice(p, size=self.max_points, replace=False))
            coords, colors, normals = coords[keep], colors[keep], normals[keep]
            labels = {k: v[keep] for k, v in labels.items()}
        sample["coords"] = coords
        sample["features"] = np.concatenate([normals, normalize_color(colors)], axis=1).astype(np.float32)
        sample.update(labels)
        return sample

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        samples = self._prepare_all(rows)
        batch = {
            "coords": torch.from_numpy(np.concatenate([s["coords"] for s in samples])),
            "features": torch.from_numpy(np.concatenate([s["features"] for s in samples])),
            "offsets": torch.from_numpy(np.cumsum([len(s["coords"]) for s in samples]).astype(np.int64)),
        }
        if self.return_labels:
            batch["segment"] = torch.from_numpy(np.concatenate([s["segment"] for s in samples]))
            batch["instance"] = torch.from_numpy(np.concatenate([s["instance"] for s in samples]))
        self._stack_views(samples, batch, with_depth=True)
        batch["background"] = torch.from_numpy(self.background).expand(len(samples), 3).clone()
        return batch
