#!/usr/bin/env python
"""Turn a model folder into a folder ready for ``huggingface_hub.upload_folder`` (and upload it with ``--push``).

    python scripts/export_hub.py --model_dir outputs/demo_objects --output_dir outputs/hub/demo_objects
    python scripts/export_hub.py --model_dir converted/ptv3 --output_dir hub/ptv3 --card hub_cards/ptv3.md \\
        --paper_checkpoint --push unipre3d/ptv3

``--model_dir`` is a pre-training run's output directory (its ``backbone/`` is exported, its ``final.json`` metrics go
into the card), a converted checkpoint folder or a fine-tuned model folder. The output holds ``config.json`` (with an
``auto_map`` for ``trust_remote_code=True``), ``model.safetensors``, ``unipre3d_remote.py`` and ``README.md``. The card
defaults to ``hub_cards/<name>.md`` for the model's type (``--card none`` writes no README). Nothing is uploaded
without ``--push`` (which needs a token: ``hf auth login`` or ``HF_TOKEN``).
"""

from __future__ import annotations

import argparse
import json
import os

from unipre3d_hf.hub import HUB_NAMES, export_for_hub, push_to_hub, resolve_model_dir

CARDS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "hub_cards")


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True, help="pre-training run, converted checkpoint or model folder")
    parser.add_argument("--output_dir", required=True, help="the Hub-ready folder to write")
    parser.add_argument("--card", default=None, help="card template (default hub_cards/<name>.md; 'none': no README)")
    parser.add_argument("--push", default=None, metavar="REPO_ID", help="upload the folder to this Hub model repo")
    parser.add_argument("--repo_id", default=None, help="Hub id used in the card's snippets (default: --push's)")
    parser.add_argument(
        "--paper_checkpoint", action="store_true", help="the weights are the paper's, converted: keep its model-index"
    )
    parser.add_argument("--license", default="other", help="the card's licence when not --paper_checkpoint")
    parser.add_argument("--private", action="store_true", help="with --push: create the repo private")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output_dir")
    args = parser.parse_args(argv)

    card = args.card
    if card is None:
        weights_dir, _ = resolve_model_dir(args.model_dir)
        with open(os.path.join(weights_dir, "config.json")) as f:
            model_type = json.load(f).get("model_type")
        if model_type not in HUB_NAMES:
            parser.error(f"`model_type` {model_type!r} of {weights_dir} is not a unipre3d_hf backbone")
        card = os.path.join(CARDS, f"{HUB_NAMES[model_type]}.md")
    elif card.lower() == "none":
        card = None
    out = export_for_hub(
        args.model_dir, args.output_dir, card=card, repo_id=args.repo_id or args.push,
        paper_checkpoint=args.paper_checkpoint, license=args.license, overwrite=args.overwrite,
    )  # fmt: skip
    print(f"wrote {out}: {', '.join(sorted(os.listdir(out)))}")
    if args.push:
        print(f"uploaded to {args.push}: {push_to_hub(out, args.push, private=args.private)}")
    return out


if __name__ == "__main__":
    main()
