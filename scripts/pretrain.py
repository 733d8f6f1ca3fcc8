#!/usr/bin/env python
"""UniPre3D pre-training with Accelerate, on 1 CPU to N GPUs.

    accelerate launch scripts/pretrain.py --config configs/pretrain/ptv3_scannet.yaml
    accelerate launch --mixed_precision bf16 scripts/pretrain.py --config configs/pretrain/ptv3_scannet.yaml
    python scripts/pretrain.py --config configs/pretrain/demo_objects.yaml            # the CPU demo, ~5 minutes
    python scripts/pretrain.py --config configs/pretrain/demo_objects.yaml --max_steps 50 --model.initial_scale 0.05

Any field of ``PretrainArguments`` (``unipre3d_hf/training/pretrain.py``, with the shared fields of
``unipre3d_hf/training/loop.py``) can be overridden as ``--<field> <value>`` (values parsed as YAML:
``--image_size 64``, ``--use_ema false``); dict fields take ``--backbone.<key> <value>`` / ``--model.<key> <value>``.
Every name and value is checked before anything runs. ``--resume latest`` continues the newest good checkpoint in
``output_dir``; a used ``output_dir`` is refused without ``--resume`` or ``--overwrite_output_dir true``. SIGTERM /
SIGINT save a checkpoint at the end of the step, then exit with 143 / 130.
"""

import sys

from unipre3d_hf.training.pretrain import main

if __name__ == "__main__":
    main(sys.argv[1:])
