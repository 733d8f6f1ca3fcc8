"""Row access for the collators: numeric list columns straight from Arrow as NumPy arrays (`NumpyRows`), and a training
order whose every draw carries its own seed (`EpochSampler` + `SeededRows`).

``datasets`` turns a row into Python objects first (one Python float per coordinate), which dominates a DataLoader
worker's time on point clouds: an objects-mini row takes ~14 ms that way and ~0.6 ms here, a scenes-mini row (~70k
points with colours, normals and labels) ~240 ms and ~17 ms (2-core CPU).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import Dataset, Sampler

SAMPLE_SEED_KEY = "__sample_seed__"


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def arrow_value_to_numpy(array: pa.Array):
    """The value of a length-1 Arrow array: a NumPy array for a numeric list whose inner lists all have a fixed size
    (``List(List(float32, length=3))`` -> ``[N, 3]``, ``List(List(List(float32, 4), 4))`` -> ``[V, 4, 4]``), the
    Python value (``to_pylist``) for anything else, e.g. strings, scalars and image structs."""
    if len(array) != 1:
        raise ValueError(f"expected the column of one row, got {len(array)} values")
    t, shape, values = array.type, [], array
    while _is_list(t):
        if pa.types.is_fixed_size_list(t):
            shape.append(t.list_size)
        elif shape:  # a variable-length list inside a list has no array shape
            return array.to_pylist()[0]
        else:
            shape.append(-1)
        values, t = values.flatten(), t.value_type
    if not shape or not (pa.types.is_integer(t) or pa.types.is_floating(t)) or values.null_count:
        return array.to_pylist()[0]
    return values.to_numpy(zero_copy_only=False).reshape(shape)


class NumpyRows(Dataset):
    """A map-style view of a ``datasets.Dataset`` whose rows are dicts with numeric list columns as NumPy arrays
    (and everything else as ``datasets`` gives it undecoded: strings, numbers, ``{"bytes", "path"}`` image entries).
    Index mappings (``select``, ``shuffle``, ``train_test_split``) are honoured.

    Args:
        dataset (`datasets.Dataset`): a map-style dataset, e.g. from `load_mini_dataset` or
            `load_pretraining_dataset`.
    """

    def __init__(self, dataset):
        if not hasattr(dataset, "with_format") or not hasattr(dataset, "__len__"):
            raise TypeError(f"NumpyRows takes a map-style datasets.Dataset, got {type(dataset).__name__}")
        self.dataset = dataset
        self._arrow = dataset.with_format("arrow")

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"NumpyRows takes one integer index, got {type(index).__name__}")
        table = self._arrow[int(index)]
        return {name: arrow_value_to_numpy(table.column(name).combine_chunks()) for name in table.column_names}

    @property
    def column_names(self) -> list[str]:
        return self.dataset.column_names

    def __repr__(self) -> str:
        return f"NumpyRows({self.dataset!r})"


class EpochSampler(Sampler[int]):
    """The training order: epoch ``e`` is a permutation (seeded with ``seed + e``) of ``repeats`` copies of the
    ``num_rows`` rows. Each draw is yielded as the key ``row + num_rows * draw``, ``draw = e * len(self) + position``,
    which `SeededRows` turns into the row plus a seed for that sample's randomness (views, augmentation).

    A sample's randomness then depends on (seed, epoch, position) alone, not on which DataLoader worker collates it or
    on what was collated before, so a run resumed mid-epoch, whose skipped batches are never collated, draws exactly
    what the uninterrupted run drew. ``repeats > 1`` makes an epoch of a small split long enough for the DataLoader's
    workers to keep batches ready (they prepare none across an epoch's end); rows then recur within an epoch, as in the
    paper's sampling with replacement (method reference 8.3).
    """

    def __init__(self, num_rows: int, repeats: int = 1, seed: int = 0):
        if num_rows < 1 or repeats < 1:
            raise ValueError(f"EpochSampler needs num_rows >= 1 and repeats >= 1, got {num_rows} and {repeats}")
        self.num_rows, self.repeats, self.seed, self.epoch = num_rows, repeats, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_rows * self.repeats

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        first_draw = self.epoch * len(self)
        for position, slot in enumerate(torch.randperm(len(self), generator=generator).tolist()):
            yield slot % self.num_rows + self.num_rows * (first_draw + position)


class SeededRows(Dataset):
    """Rows indexed by `EpochSampler` keys: ``rows[key % len(rows)]`` with the sample's seed ``(seed, key //
    len(rows))`` under ``SAMPLE_SEED_KEY``, which the collators seed that sample's random choices with.

    Args:
        rows (`Dataset`): map-style rows, e.g. `NumpyRows`.
        seed (`int`): the run's seed.
    """

    def __init__(self, rows, seed: int = 0):
        self.rows, self.seed = rows, seed

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: int) -> dict:
        draw, index = divmod(int(key), len(self.rows))
        return {**self.rows[index], SAMPLE_SEED_KEY: (self.seed, draw)}
