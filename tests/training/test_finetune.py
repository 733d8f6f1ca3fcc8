"""Fine-tuning on the shared loop, end to end on tiny data sets (CPU): each task's outputs and exported model,
linear-probe freezing, strict --init loading with its report, exact resume, and argument errors."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from datasets import Dataset, Features, List, Value
from safetensors.torch import load_file

import unipre3d_hf  # noqa: F401
from tests.models.test_pretraining import OBJECT_BACKBONES
from unipre3d_hf import AutoModelForPointCloudClassification, AutoModelForPointCloudSegmentation
from unipre3d_hf.training.finetune import (
    FinetuneArguments,
    build_task,
    load_backbone_weights,
    main,
    parse_finetune_arguments,
)

XYZ = List(List(Value("float32"), length=3))
TINY_TRANSFORMER = {"num_groups": 8, "group_size": 8, "encoder_dims": 16, "hidden_size": 16, "num_hidden_layers": 1,
                    "num_attention_heads": 2}  # fmt: skip
TINY_SPUNET = {"base_channels": 8, "channels": [8, 16, 16, 16, 16, 16, 8, 8], "layers": [1] * 8}


def _write(ds_by_split: dict, folder) -> str:
    for split, ds in ds_by_split.items():
        os.makedirs(folder / "data", exist_ok=True)
        ds.to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    return str(folder)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """Discs, sticks and balls as string labels (converted to a ClassLabel by the task)."""
    rng = np.random.default_rng(0)
    kinds = {"disc": [1.0, 1.0, 0.05], "stick": [0.05, 0.05, 1.0], "ball": [0.6, 0.6, 0.6]}

    def rows(n):
        names = list(kinds)
        return [{"id": f"s{i}", "points": (rng.normal(size=(96, 3)) * kinds[names[i % 3]]).astype(np.float32),
                 "shape": names[i % 3]} for i in range(n)]  # fmt: skip

    features = Features({"id": Value("string"), "points": XYZ, "shape": Value("string")})
    folder = tmp_path_factory.mktemp("shapes")
    return _write({"train": Dataset.from_list(rows(12), features), "validation": Dataset.from_list(rows(6), features)},
                  folder)  # fmt: skip


@pytest.fixture(scope="module")
def pointmlp_init(tmp_path_factory):
    from transformers import AutoModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("init") / "backbone"
    AutoModel.from_config(OBJECT_BACKBONES["pointmlp"]()).save_pretrained(folder)
    return str(folder.parent)  # a pretrain output folder: its backbone/ is used


def tiny(tmp_path, dataset, **kw) -> list[str]:
    args = {"dataset": dataset, "output_dir": str(tmp_path / "run"), "max_steps": 4, "batch_size": 4,
            "eval_every": 4, "save_every": 2, "log_every": 1, "min_batches_per_epoch": 1, "num_points": 64,
            "val_batch_size": 8, "learning_rate": 1e-3, "seed": 0, "run_name": "t", **kw}  # fmt: skip
    argv = []
    for k, v in args.items():
        if isinstance(v, dict):
            argv += [x for kk, vv in v.items() for x in (f"--{k}.{kk}", json.dumps(vv))]
        else:
            argv += [f"--{k}", json.dumps(v) if not isinstance(v, str) else v]
    return argv


def test_classification_end_to_end_with_voting_and_outputs(tmp_path, shapes, pointmlp_init):
    history = main(tiny(tmp_path, shapes, init=pointmlp_init, label_column="shape", voting=2))
    out = tmp_path / "run"
    final = history["final"]
    assert {"val/loss", "val/accuracy", "val/mean_class_accuracy", "val/vote_accuracy"} <= set(final)
    assert 0.0 <= final["val/accuracy"] <= 1.0
    assert history["init_report"]["missing"] == [] and history["init_report"]["unexpected"] == []
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["step"] == 4 and [r["class"] for r in metrics["per_class"]] == ["ball", "disc", "stick"]
    assert sum(r["samples"] for r in metrics["per_class"]) == 6
    assert "| class | samples | accuracy |" in (out / "per_class.md").read_text()
    from PIL import Image

    assert Image.open(out / "confusion_matrix.png").size[1] == 3 * 24 + 1
    model = AutoModelForPointCloudClassification.from_pretrained(out / "model")
    assert model.config.id2label == {0: "ball", 1: "disc", 2: "stick"}
    assert (out / "best" / "best.json").exists() and (out / "init_report.json").exists()


def test_linear_probe_keeps_the_backbone_bit_identical(tmp_path, shapes, pointmlp_init):
    from transformers import AutoModel

    main(tiny(tmp_path, shapes, init=pointmlp_init, label_column="shape", mode="linear_probe", learning_rate=0.05))
    init = AutoModel.from_pretrained(os.path.join(pointmlp_init, "backbone")).state_dict()
    tuned = AutoModelForPointCloudClassification.from_pretrained(tmp_path / "run" / "model")
    for name, value in tuned.backbone.state_dict().items():  # weights and BatchNorm statistics
        assert torch.equal(value, init[name]), name
    head = load_file(tmp_path / "run" / "checkpoint-4" / "model.safetensors")
    first = load_file(tmp_path / "run" / "checkpoint-2" / "model.safetensors")
    assert any(not torch.equal(head[k], first[k]) for k in head if k.startswith("classifier."))

    task = build_task(parse_finetune_arguments(tiny(tmp_path / "x", shapes, init=pointmlp_init, label_column="shape",
                                                    mode="linear_probe")))  # fmt: skip
    model = task.build_model()
    assert all(not p.requires_grad for p in model.backbone.parameters())
    assert task.parameter_groups(model)["all"] == [p for p in model.classifier.parameters()]
    task.set_train_mode(model)
    assert model.training and model.classifier.training and not model.backbone.training


def test_init_is_loaded_strictly_and_reported(tmp_path, pointmlp_init):
    config = OBJECT_BACKBONES["pointmlp"]()
    config.num_labels = 3
    config.pre_blocks = [b + 1 for b in config.pre_blocks]  # one more block per stage than the checkpoint
    model = AutoModelForPointCloudClassification.from_config(config)
    with pytest.raises(ValueError, match=r"does not match the model \(init_strict\): missing \['"):
        load_backbone_weights(model, pointmlp_init)
    report = load_backbone_weights(model, pointmlp_init, strict=False)
    assert report["missing"] and all(
        k.startswith("pre_extractors.") and ".operation.1." in k for k in report["missing"]
    )
    assert report["unexpected"] == [] and report["source"].endswith("backbone")
    with pytest.raises(FileNotFoundError, match="no config.json and no backbone/config.json"):
        load_backbone_weights(model, str(tmp_path))


def test_resume_is_bit_identical(tmp_path, shapes, pointmlp_init):
    torch.set_num_threads(1)
    try:
        common = {"init": pointmlp_init, "label_column": "shape", "lr_scheduler": "constant",
                  "augment": "scale_translate", "point_sampling": "random"}  # fmt: skip
        main(tiny(tmp_path / "full", shapes, **common))
        main(tiny(tmp_path / "part", shapes, **common, max_steps=2))
        main(tiny(tmp_path / "part", shapes, **common, resume="latest"))
    finally:
        torch.set_num_threads(2)
    a = load_file(tmp_path / "full" / "run" / "checkpoint-4" / "model.safetensors")
    b = load_file(tmp_path / "part" / "run" / "checkpoint-4" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_part_segmentation_end_to_end(tmp_path):
    from unipre3d_hf.data.downstream import PART_SEGMENTATION_FEATURES

    rng = np.random.default_rng(1)

    def rows(n):  # Airplane (parts 0-3) and Bag (parts 4, 5): part = which half of the cloud along x
        out = []
        for i in range(n):
            pts = rng.normal(size=(80, 3)).astype(np.float32)
            parts = np.where(pts[:, 0] > 0, 1, 0) + (0 if i % 2 == 0 else 4)
            out.append({"id": f"p{i}", "category": i % 2, "points": pts, "normals": np.zeros((0, 3), np.float32),
                        "parts": parts.tolist()})  # fmt: skip
        return out

    splits = {"train": Dataset.from_list(rows(8), PART_SEGMENTATION_FEATURES),
              "validation": Dataset.from_list(rows(4), PART_SEGMENTATION_FEATURES)}  # fmt: skip
    folder = _write(splits, tmp_path / "parts")
    history = main(tiny(tmp_path, folder, task="part_segmentation", mode="scratch", backbone_type="point_transformer",
                        backbone=TINY_TRANSFORMER, normalize="none", augment="none"))  # fmt: skip
    final = history["final"]
    assert 0.0 <= final["val/instance_mIoU"] <= 1.0 and 0.0 <= final["val/class_mIoU"] <= 1.0
    per_class = json.loads((tmp_path / "run" / "metrics.json").read_text())["per_class"]
    assert per_class[0]["category"] == "Airplane" and per_class[0]["shapes"] == 2 and per_class[2]["shapes"] == 0
    model = AutoModelForPointCloudSegmentation.from_pretrained(tmp_path / "run" / "model")
    assert model.config.segmentation_num_categories == 16 and model.config.num_labels == 50


def test_semantic_segmentation_end_to_end_on_packed_scenes(tmp_path):
    from unipre3d_hf.data.downstream import scene_segmentation_features

    rng = np.random.default_rng(2)
    names = ["floor", "wall", "table"]

    def rows(n):
        out = []
        for i in range(n):
            coords = rng.uniform(0, 2, size=(300, 3)).astype(np.float32)
            segment = np.where(coords[:, 2] < 0.3, 0, np.where(coords[:, 0] < 0.3, 1, 2))
            segment[:10] = -1
            out.append({"id": f"r{i}", "coords": coords, "colors": rng.integers(0, 255, (300, 3)).astype(np.uint8),
                        "normals": np.zeros((0, 3), np.float32), "segment": segment.tolist(),
                        "instance": [-1] * 300})  # fmt: skip
        return out

    features = scene_segmentation_features(names)
    folder = _write({"train": Dataset.from_list(rows(4), features), "validation": Dataset.from_list(rows(2), features)},
                    tmp_path / "scenes")  # fmt: skip
    history = main(tiny(tmp_path, folder, task="semantic_segmentation", mode="scratch", backbone_type="sparse_unet",
                        backbone={**TINY_SPUNET, "grid_size": 0.1}, batch_size=2, augment="none"))  # fmt: skip
    final = history["final"]
    assert {"val/mIoU", "val/mAcc", "val/allAcc"} <= set(final) and 0.0 <= final["val/allAcc"] <= 1.0
    per_class = json.loads((tmp_path / "run" / "metrics.json").read_text())["per_class"]
    assert [r["class"] for r in per_class] == names and sum(r["points"] for r in per_class) == 2 * 290


def test_argument_errors_name_the_field(tmp_path, shapes, pointmlp_init):
    with pytest.raises(SystemExit, match="`mode` must be one of"):
        main(tiny(tmp_path, shapes, init=pointmlp_init, mode="probe"))
    with pytest.raises(SystemExit, match="`init` is needed for mode 'full'"):
        main(tiny(tmp_path, shapes))
    with pytest.raises(
        SystemExit, match=r"`backbone.embed_dimm` is no field of PointMLPConfig; did you mean 'embed_dim'"
    ):
        main(tiny(tmp_path, shapes, init=pointmlp_init, backbone={"embed_dimm": 8}))
    with pytest.raises(SystemExit, match="`voting` > 1 applies to task 'classification' only"):
        main(tiny(tmp_path, shapes, task="semantic_segmentation", mode="scratch", backbone_type="ptv3", voting=3))
    args = FinetuneArguments(init=pointmlp_init, dataset=shapes, label_column="nope")
    with pytest.raises(ValueError, match="`label_column` 'nope' is not a column"):
        build_task(args).train_dataset()
