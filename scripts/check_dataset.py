#!/usr/bin/env python
"""Geometry checks of a built pre-training set (the checks the tests run on the mini sets, on a real build).

    python scripts/check_dataset.py objects data/sweethome3d/sweethome3d-objects   # points on their silhouettes
    python scripts/check_dataset.py scenes data/sweethome3d/sweethome3d-rooms      # depth onto the cloud, labels

``objects`` (RGBA views): the share of (view, point) pairs whose point projects onto the view's alpha > 0, strict
and with 1 pixel of tolerance, over all rows and for the worst rows. ``scenes``: per row, the median distance from
the depth frames' unprojected pixels to the fused cloud, the instances per row (and, with the card's
``class_names``, the instances per row outside the ``--not-objects`` classes), and whether every instance id holds one
class.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from unipre3d_hf.data import check_object_rows, check_scene_rows, load_pretraining_dataset
from unipre3d_hf.data.schemas import read_card_class_names


def _splits(path: str, splits: str | None) -> list[str]:
    if splits:
        return splits.split(",")
    files = os.listdir(os.path.join(path, "data")) if os.path.isdir(os.path.join(path, "data")) else []
    return sorted({f.split("-")[0] for f in files if f.endswith(".parquet")}) or ["train"]


def _spread(values) -> str:
    v = np.asarray(values, dtype=np.float64)
    return f"min {v.min():.4g} / median {np.median(v):.4g} / max {v.max():.4g}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("level", choices=["objects", "scenes"])
    parser.add_argument("path", help="folder of a set written by scripts/build_dataset.py (or a Hub id)")
    parser.add_argument("--splits", default=None, help="comma-separated splits (default: all in the folder)")
    parser.add_argument("--worst", type=int, default=10, help="rows to list, worst first")
    parser.add_argument("--not-objects", default="wall,floor,door,window", help="classes not counted as objects")
    parser.add_argument("--max-pixels", type=int, default=4096, help="depth pixels per scene row for the distance")
    args = parser.parse_args(argv)

    rows = []
    for split in _splits(args.path, args.splits):
        ds = load_pretraining_dataset(args.path, split=split, level="object" if args.level == "objects" else "scene")
        checked = check_object_rows(ds) if args.level == "objects" else check_scene_rows(ds, args.max_pixels)
        rows += [{"split": split, **r} for r in checked]
    if args.level == "objects":
        strict = np.array([r["hit"][0] for r in rows])
        loose = np.array([r["hit"][1] for r in rows])
        print(
            f"{len(rows)} rows: points on their silhouettes {strict.mean():.4f} strict, {loose.mean():.4f} within 1 px"
        )
        print(f"  rows under 0.95 strict: {(strict < 0.95).sum()}, under 0.90: {(strict < 0.90).sum()}")
        for r in sorted(rows, key=lambda r: r["hit"][0])[: args.worst]:
            print(f"  {r['hit'][0]:.3f} strict  {r['hit'][1]:.3f} 1px  {r['id']} ({r['category']}, {r['split']})")
        return
    print(f"{len(rows)} rows: median unprojection distance (m) per row {_spread([r['median_distance'] for r in rows])}")
    print(f"  share of pixels with depth: {_spread([r['valid_fraction'] for r in rows])}")
    print(f"  instances per row: {_spread([len(r['instance_segments']) for r in rows])}")
    names = read_card_class_names(args.path)
    if names:
        skip = {names.index(n) for n in args.not_objects.split(",") if n in names}
        counts = [sum(s not in skip for s in r["instance_segments"]) for r in rows]
        print(f"  instances per row outside {args.not_objects}: {_spread(counts)}")
        per_class = np.bincount([s for r in rows for s in r["instance_segments"]], minlength=len(names))
        print("  instances per class: " + ", ".join(f"{n} {c}" for n, c in zip(names, per_class) if c))
    print(f"  most classes within one instance: {max(r['classes_per_instance'] for r in rows)}")
    print(f"  instance points without a class: {sum(r['unlabelled_instances'] for r in rows)}")
    for r in sorted(rows, key=lambda r: -r["median_distance"])[: args.worst]:
        print(f"  {r['median_distance'] * 100:.3f} cm  {r['id']} ({r['split']})")


if __name__ == "__main__":
    main()
