#!/usr/bin/env python
"""Build the pre-training datasets (Parquet shards + a dataset card, loadable with ``datasets.load_dataset``).

    python scripts/build_dataset.py objects-mini                       # -> data/objects-mini (needs pybullet)
    python scripts/build_dataset.py scenes-mini                        # -> data/scenes-mini
    python scripts/build_dataset.py shapenet --root /data/shapenet_multiview --out data/shapenet
    python scripts/build_dataset.py sweethome3d --out data/sweethome3d          # needs sweethome3d-furniture, trimesh
    python scripts/build_dataset.py scannet --points-root /data/scannet_pointcept --frames-root /data/scannet_2d \\
        --out data/scannet
    python scripts/build_dataset.py modelnet40 --root /data/modelnet40_normal_resampled --out data/modelnet40
    python scripts/build_dataset.py scanobjectnn --root /data/h5_files --variant PB_T50_RS --out data/scanobjectnn
    python scripts/build_dataset.py shapenet-part --root /data/shapenetcore_partanno_segmentation_benchmark_v0_normal
    python scripts/build_dataset.py scannet200 --root /data/pointcept/scannet --out data/scannet200  # s3dis, scannet20

Each subcommand shows a progress bar and prints a summary: rows written per split, frames/views dropped, rows skipped
and why. An existing output folder is kept unless ``--overwrite`` is given; the new set is built beside it and
replaces it only once complete.
"""

from __future__ import annotations

import argparse
import os
import sys

from unipre3d_hf.data import build_objects_mini, build_scenes_mini, convert_scannet, convert_shapenet
from unipre3d_hf.data.downstream import (
    SCANOBJECTNN_VARIANTS,
    convert_modelnet40,
    convert_pointcept_scenes,
    convert_scanobjectnn,
    convert_shapenet_part,
)
from unipre3d_hf.data.sweethome3d import DEFAULT_SOURCE, build_sweethome3d


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("objects-mini", help="object set rendered from pybullet_data meshes")
    p.add_argument("--out", default=os.path.join("data", "objects-mini"))
    p.add_argument("--objects", type=int, default=None, help="number of meshes (default all 12)")
    p.add_argument("--poses", type=int, default=6, help="random orientations and sizes per mesh")
    p.add_argument("--views", type=int, default=24)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--points", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--supersample", type=int, default=2, help="render at N x the size, box-filter (1 = no AA)")

    p = sub.add_parser("scenes-mini", help="room set rendered from pybullet_data meshes")
    p.add_argument("--out", default=os.path.join("data", "scenes-mini"))
    p.add_argument("--scenes", type=int, default=4)
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--width", type=int, default=160)
    p.add_argument("--height", type=int, default=120)
    p.add_argument("--voxel-size", type=float, default=0.02)
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("shapenet", help="convert the ShapeNet multi-view render layout")
    p.add_argument("--root", required=True, help="folder holding image/ and pts/")
    p.add_argument("--out", default=os.path.join("data", "shapenet"))
    p.add_argument("--seed", type=int, default=42, help="the paper's seed; the shuffle uses seed + 1")
    p.add_argument("--min-views", type=int, default=5)
    p.add_argument("--max-objects", type=int, default=None)
    p.add_argument("--default-fov-deg", type=float, default=None, help="FoV for objects without metadata")

    p = sub.add_parser("scannet", help="convert Pointcept ScanNet scenes + exported RGB-D frames")
    p.add_argument("--points-root", required=True)
    p.add_argument("--frames-root", required=True)
    p.add_argument("--out", default=os.path.join("data", "scannet"))
    p.add_argument("--width", type=int, default=160)
    p.add_argument("--height", type=int, default=120)
    p.add_argument("--frame-skip", type=int, default=1)
    p.add_argument("--min-frames", type=int, default=16)
    p.add_argument("--segment", default="segment20", choices=["segment20", "segment200"])
    p.add_argument("--max-scenes", type=int, default=None)

    p = sub.add_parser("sweethome3d", help="objects, classification and room sets from SweetHome3D's furniture")
    p.add_argument("--out", default=os.path.join("data", "sweethome3d"), help="folder for the three sets")
    p.add_argument("--source", default=DEFAULT_SOURCE, help="folder of .sh3f packs")
    p.add_argument("--only", default="objects,cls,rooms", help="comma-separated subset of objects,cls,rooms")
    p.add_argument("--max-models", type=int, default=None, help="first N catalogue entries (sorted by id)")
    p.add_argument("--views", type=int, default=24)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--image-format", default="png", choices=["png", "jpeg"], help="object views and room colour")
    p.add_argument("--points", type=int, default=2048)
    p.add_argument("--cls-points", type=int, default=None, help="points per cls row (default --points)")
    p.add_argument("--rooms", type=int, default=100)
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--width", type=int, default=160)
    p.add_argument("--height", type=int, default=120)
    p.add_argument("--voxel-size", type=float, default=0.02)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--supersample", type=int, default=2, help="object views at N x the size, box-filtered (1 = no AA)")

    # downstream sets (fine-tuning); each refuses an existing --out unless --overwrite
    p = sub.add_parser("modelnet40", help="ModelNet40: modelnet40_normal_resampled (txt) or modelnet40_ply_hdf5_2048")
    p.add_argument("--root", required=True)
    p.add_argument("--out", default=os.path.join("data", "modelnet40"))
    p.add_argument("--layout", choices=["txt", "h5"], default=None, help="default: read from the folder")
    p.add_argument("--max-points", type=int, default=None, help="keep the first N points of each txt shape")
    p = sub.add_parser("scanobjectnn", help="ScanObjectNN h5_files (OBJ_BG / OBJ_ONLY / PB_T50_RS)")
    p.add_argument("--root", required=True)
    p.add_argument("--variant", choices=sorted(SCANOBJECTNN_VARIANTS), default="PB_T50_RS")
    p.add_argument("--out", default=None, help="default: data/scanobjectnn-<variant>")
    p = sub.add_parser("shapenet-part", help="ShapeNetPart (..._benchmark_v0_normal)")
    p.add_argument("--root", required=True)
    p.add_argument("--out", default=os.path.join("data", "shapenet-part"))
    for name in ("s3dis", "scannet20", "scannet200"):
        p = sub.add_parser(name, help=f"{name} semantic labels in Pointcept's preprocessed layout")
        p.add_argument("--root", required=True)
        p.add_argument("--out", default=os.path.join("data", name))
        p.add_argument("--segment-file", default=None, help="label file stem (default segment / segment20 / 200)")
        p.add_argument("--validation-area", type=int, default=5, help="S3DIS: the held-out area")
    for name, p in sub.choices.items():  # every subcommand: never replace an existing set unless asked
        p.add_argument(
            "--overwrite",
            action="store_true",
            help=f"replace an existing {name} output (only once the new one is complete)",
        )

    args = parser.parse_args(argv)
    if args.command == "sweethome3d":
        summaries = build_sweethome3d(
            args.out, args.source, args.overwrite, tuple(s.strip() for s in args.only.split(",") if s.strip()),
            args.max_models, args.views, args.image_size, args.points, args.rooms, args.frames, args.width,
            args.height, args.voxel_size, args.image_format, cls_points=args.cls_points, seed=args.seed,
            supersample=args.supersample,
        )  # fmt: skip
        for summary in summaries.values():
            print(summary.format())
        print(f"written to {os.path.abspath(args.out)}")
        return
    if args.command == "scanobjectnn" and args.out is None:
        args.out = os.path.join("data", f"scanobjectnn-{args.variant}")
    if args.command == "objects-mini":
        summary = build_objects_mini(
            args.out, args.objects, args.poses, args.views, args.image_size, args.points, args.seed,
            overwrite=args.overwrite, supersample=args.supersample,
        )  # fmt: skip
    elif args.command == "scenes-mini":
        summary = build_scenes_mini(
            args.out, args.scenes, args.frames, args.width, args.height, args.voxel_size, args.seed,
            overwrite=args.overwrite,
        )  # fmt: skip
    elif args.command == "shapenet":
        summary = convert_shapenet(
            args.root, args.out, args.seed, args.min_views, args.max_objects, args.default_fov_deg,
            overwrite=args.overwrite,
        )  # fmt: skip
    elif args.command == "modelnet40":
        summary = convert_modelnet40(args.root, args.out, args.layout, args.max_points, args.overwrite)
    elif args.command == "scanobjectnn":
        summary = convert_scanobjectnn(args.root, args.out, args.variant, args.overwrite)
    elif args.command == "shapenet-part":
        summary = convert_shapenet_part(args.root, args.out, args.overwrite)
    elif args.command in ("s3dis", "scannet20", "scannet200"):
        summary = convert_pointcept_scenes(
            args.root, args.out, args.command, args.segment_file, args.validation_area, args.overwrite
        )
    else:
        summary = convert_scannet(
            args.points_root, args.frames_root, args.out, args.width, args.height, args.frame_skip, args.min_frames,
            args.segment, args.max_scenes, overwrite=args.overwrite,
        )  # fmt: skip
    print(summary.format())
    print(f"written to {os.path.abspath(args.out)}")


if __name__ == "__main__":
    try:
        main()
    except FileExistsError as err:  # an existing output without --overwrite: a one-line error, no traceback
        sys.exit(f"build_dataset.py: error: {err}")
