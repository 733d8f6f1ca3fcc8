#!/usr/bin/env python
"""Convert an original UniPre3D checkpoint (or a Pointcept backbone) into this package's models.

    python scripts/convert_checkpoint.py --checkpoint ptv3.pth --backbone ptv3 --output_dir conv/ptv3 [--full_model]
    python scripts/convert_checkpoint.py --from pointcept --pointcept_arch PT-v3m1 --checkpoint model_best.pth \\
        --backbone ptv3 --output_dir converted/ptv3-pointcept
    python scripts/convert_checkpoint.py --from pointcept --checkpoint sonata.pth --backbone ptv3 \\
        --output_dir converted/sonata
    python scripts/convert_checkpoint.py --to pointcept --model_dir converted/ptv3 --output_dir pointcept/ptv3 \\
        [--prefix module.backbone.]

``--pointcept_arch`` (``SpUNet-v1m1``, ``PT-v3m1``, ``PT-v3m2``) defaults to ``auto``: read from the stem's key. A
Sonata file (``{"config": ..., "state_dict": ...}``, encoder-only PT-v3m2) takes its heads, patch sizes and orders from
its ``config``.

``--output_dir`` gets the backbone (``AutoModel.from_pretrained(DIR)``) and ``conversion.json`` (what was mapped,
dropped and set); with ``--full_model``, ``DIR/pretraining/`` holds ``UniPre3DForGaussianPretraining``. Files are read
with ``torch.load(weights_only=True)`` and written as safetensors (``--to pointcept`` writes ``model.pth``, a plain
``{"state_dict": ...}`` that Pointcept's ``load_state_dict`` reads). An existing ``--output_dir`` is replaced only with
``--overwrite``, and only once the new output is complete.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import warnings

import torch

import unipre3d_hf  # noqa: F401  (registers the Auto classes)
from unipre3d_hf.conversion.original import (
    BACKBONE_PREFIX,
    BACKBONES,
    DROPPED,
    convert_original_state_dict,
    load_original_checkpoint,
)
from unipre3d_hf.conversion.pointcept import (
    ARCHS,
    detect_pointcept_arch,
    export_pointcept_state_dict,
    import_pointcept_state_dict,
    load_pointcept_checkpoint,
)
from unipre3d_hf.data.schemas import dataset_output


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="the .pth to convert (--from original / pointcept)")
    p.add_argument("--backbone", choices=sorted(BACKBONES))
    p.add_argument("--output_dir", required=True)
    p.add_argument("--full_model", action="store_true", help="also write UniPre3DForGaussianPretraining")
    p.add_argument("--from", dest="source", choices=("original", "pointcept"), default="original")
    p.add_argument("--to", dest="target", choices=("unipre3d_hf", "pointcept"), default="unipre3d_hf")
    p.add_argument(
        "--pointcept_arch", choices=[*sorted(ARCHS), "auto"], default="auto", help="auto: from the stem's key"
    )
    p.add_argument("--model_dir", help="--to pointcept: our saved Sparse UNet / PTv3 backbone")
    p.add_argument("--prefix", default="", help="--to pointcept: key prefix ('', 'backbone.', 'module.backbone.')")
    p.add_argument("--pcm_pythonhashseed", type=int, help="PCM: the training process's PYTHONHASHSEED")
    p.add_argument("--pcm_unique_orders", help="PCM: the training process's list(set(orders)), comma-separated")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output_dir")
    args = p.parse_args(argv)
    if args.target == "pointcept":
        if not args.model_dir:
            p.error("--to pointcept needs --model_dir")
    elif not (args.checkpoint and args.backbone):
        p.error("--checkpoint and --backbone are required")
    return args


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main(argv=None) -> None:
    args = parse_args(argv)
    with dataset_output(args.output_dir, overwrite=args.overwrite) as build_dir:
        if args.target == "pointcept":
            from transformers import AutoModel

            model = AutoModel.from_pretrained(args.model_dir)
            torch.save({"state_dict": export_pointcept_state_dict(model, args.prefix)}, f"{build_dir}/model.pth")
            print(f"wrote {args.output_dir}/model.pth ({type(model).__name__} -> Pointcept names)")
            return
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if args.source == "pointcept":
                state_dict, checkpoint_config = load_pointcept_checkpoint(args.checkpoint)
                arch = args.pointcept_arch if args.pointcept_arch != "auto" else detect_pointcept_arch(state_dict)
                if ARCHS[arch] != args.backbone:
                    raise SystemExit(f"--pointcept_arch {arch} is a {ARCHS[arch]}, not --backbone {args.backbone}")
                model, dropped = import_pointcept_state_dict(
                    state_dict, arch, checkpoint_config=checkpoint_config if arch == "PT-v3m2" else None
                )
                full = None
            else:
                state_dict = load_original_checkpoint(args.checkpoint)
                unique = args.pcm_unique_orders.split(",") if args.pcm_unique_orders else None
                model, _ = convert_original_state_dict(
                    state_dict, args.backbone, full_model=args.full_model, pcm_unique_orders=unique,
                    pcm_pythonhashseed=args.pcm_pythonhashseed,
                )  # fmt: skip
                full, model = (model, model.backbone) if args.full_model else (None, model)
                dropped = [k for k in state_dict if not k.startswith(BACKBONE_PREFIX)] if full is None else []
                dropped += [k for k in state_dict if any(k.startswith(d) for d in DROPPED)]
        for w in caught:
            print(f"warning: {w.message}")
        model.save_pretrained(build_dir)
        if args.full_model and full is not None:
            full.save_pretrained(os.path.join(build_dir, "pretraining"))
        record = {
            "source": args.source,
            **({"pointcept_arch": arch} if args.source == "pointcept" else {}),
            "checkpoint": os.path.basename(args.checkpoint),
            "sha256": sha256(args.checkpoint),
            "backbone": args.backbone,
            "model_type": model.config.model_type,
            "num_parameters": sum(p.numel() for p in model.parameters()),
            "dropped_keys": len(set(dropped)),
            "warnings": [str(w.message) for w in caught],
        }
        with open(os.path.join(build_dir, "conversion.json"), "w") as f:
            json.dump(record, f, indent=2)
    print(json.dumps(record, indent=2))
    print(f"wrote {args.output_dir}" + (f" and {args.output_dir}/pretraining" if args.full_model else ""))


if __name__ == "__main__":
    main()
