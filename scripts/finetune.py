#!/usr/bin/env python
"""Fine-tune a (pre-trained) backbone on a downstream task, on 1 CPU .. N GPUs (Accelerate).

    python scripts/finetune.py --config configs/finetune/demo_objects_cls.yaml --init outputs/demo_objects
    accelerate launch scripts/finetune.py --config configs/finetune/pointmlp_scanobjectnn.yaml --init unipre3d/pointmlp

Any field of ``FinetuneArguments`` (``unipre3d_hf/training/finetune.py``, with the shared fields of
``unipre3d_hf/training/loop.py``) can be overridden as ``--<field> <value>`` (values parsed as YAML); backbone config
and head settings take ``--backbone.<key> <value>``. ``--mode full | linear_probe | scratch``; ``--init`` a backbone
folder, a Hub id or a pretrain output folder. Outputs: checkpoints, ``best/``, ``metrics.json``, ``per_class.md`` /
``.csv``, ``confusion_matrix.png`` and ``model/`` (``AutoModelForPointCloud...from_pretrained``).
"""

import sys

from unipre3d_hf.training.finetune import main

if __name__ == "__main__":
    main(sys.argv[1:])
