"""Fine-tuning collators (fixed-size object batches, packed scenes), the part-segmentation category input, and
transformers' Trainer training a task model out of the box with compute_metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import unipre3d_hf  # noqa: F401
from tests.models.test_pretraining import OBJECT_BACKBONES
from unipre3d_hf import AutoModelForPointCloudClassification, AutoModelForPointCloudSegmentation
from unipre3d_hf.data.finetune_collators import (
    DataCollatorForPackedScenes,
    DataCollatorForPointClouds,
    build_compute_metrics,
)


def shape_rows(n_rows=8, n_points=300, seed=0):
    """Two separable classes: flat discs (label 0) and tall sticks (label 1)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_rows):
        label = i % 2
        pts = rng.normal(size=(n_points, 3)) * ([1.0, 1.0, 0.05] if label == 0 else [0.05, 0.05, 1.0])
        rows.append({"id": f"s{i}", "points": pts.astype(np.float32).tolist(), "label": label})
    return rows


def test_point_cloud_collator_sampling_normalisation_and_labels():
    rows = shape_rows(3, n_points=50)
    rows[2]["points"] = rows[2]["points"][:10]  # a small cloud repeats points
    batch = DataCollatorForPointClouds(num_points=32, sampling="fps", seed=0)(rows)
    assert batch["points"].shape == (3, 32, 3) and batch["points"].dtype == torch.float32
    assert batch["labels"].tolist() == [0, 1, 0] and batch["labels"].dtype == torch.int64
    radius = batch["points"].norm(dim=-1).amax(dim=1)
    torch.testing.assert_close(radius[:2], torch.ones(2))  # FPS keeps point 0 and the farthest ones
    first = DataCollatorForPointClouds(num_points=4, sampling="first", normalize="none")(rows[:1])
    torch.testing.assert_close(first["points"][0], torch.tensor(rows[0]["points"][:4]))
    parts = [{"id": "p", "points": rows[0]["points"], "parts": list(range(50)), "category": 3}]
    batch = DataCollatorForPointClouds(num_points=8, sampling="first", normalize="none", part_column="parts")(parts)
    assert batch["labels"].tolist() == [list(range(8))] and batch["category"].tolist() == [3]
    with pytest.raises(ValueError, match="`sampling` must be one of"):
        DataCollatorForPointClouds(sampling="grid")
    with pytest.raises(ValueError, match=r"'s0': `points` must have shape \[N, 3\]"):
        DataCollatorForPointClouds()([{"id": "s0", "points": [[0.0, 1.0]], "label": 0}])


def test_packed_scene_collator():
    rng = np.random.default_rng(1)
    rows = [
        {"id": "a", "coords": rng.normal(size=(40, 3)), "colors": np.full((40, 3), 255), "normals": np.zeros((0, 3)),
         "segment": np.arange(40) % 3 - 1},
        {"id": "b", "coords": rng.normal(size=(20, 3)) + 5, "colors": np.zeros((20, 3)),
         "normals": np.ones((20, 3)), "segment": np.zeros(20, int)},
    ]  # fmt: skip
    batch = DataCollatorForPackedScenes(max_points=30, seed=0)(rows)
    assert batch["coords"].shape == (50, 3) and batch["features"].shape == (50, 6)
    assert batch["offsets"].tolist() == [30, 50] and batch["labels"].shape == (50,)
    torch.testing.assert_close(batch["coords"][30:].mean(0), torch.zeros(3), atol=1e-5, rtol=0)  # centred
    assert (batch["features"][:30, 3:] == 1).all() and (batch["features"][30:, 3:] == -1).all()
    assert (batch["features"][:30, :3] == 0).all()  # missing normals are zeros
    with pytest.raises(ValueError, match="'b': `segment` has 3 rows for 20 coords"):
        DataCollatorForPackedScenes()([rows[0], {**rows[1], "segment": [0, 0, 0]}])


def test_part_segmentation_head_takes_the_category():
    config = OBJECT_BACKBONES["point_transformer"]()
    config.num_labels, config.segmentation_num_categories = 6, 3
    model = AutoModelForPointCloudSegmentation.from_config(config)
    points = torch.randn(2, 128, 3)
    out = model(points, labels=torch.randint(0, 6, (2, 128)), category=torch.tensor([0, 2]))
    assert out.logits.shape == (2, 128, 6)
    out.loss.backward()
    assert model.category_embed[0].weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():  # the category changes the prediction
        assert not torch.equal(model(points, category=torch.tensor([0, 0])).logits,
                               model(points, category=torch.tensor([1, 1])).logits)  # fmt: skip
    with pytest.raises(ValueError, match="`category` \\[B\\] is required"):
        model(points)
    with pytest.raises(ValueError, match=r"`category` must lie in \[0, 3\)"):
        model(points, category=torch.tensor([0, 3]))


def test_trainer_trains_a_classifier_out_of_the_box(tmp_path):
    from datasets import ClassLabel, Dataset, Features, List, Value
    from transformers import Trainer, TrainingArguments

    features = Features({"id": Value("string"), "points": List(List(Value("float32"), length=3)),
                         "label": ClassLabel(names=["disc", "stick"])})  # fmt: skip
    train = Dataset.from_list(shape_rows(16, 96), features=features)
    config = OBJECT_BACKBONES["pointmlp"]()
    config.num_labels, config.classifier_dropout = 2, 0.0
    torch.manual_seed(0)
    model = AutoModelForPointCloudClassification.from_config(config)
    args = TrainingArguments(
        output_dir=str(tmp_path), use_cpu=True, per_device_train_batch_size=8, per_device_eval_batch_size=16,
        max_steps=8, learning_rate=3e-3, logging_steps=1, report_to=[], remove_unused_columns=False,
        save_strategy="no", seed=0, dataloader_num_workers=0,
    )  # fmt: skip
    trainer = Trainer(
        model=model, args=args, train_dataset=train, eval_dataset=train,
        data_collator=DataCollatorForPointClouds(num_points=64, sampling="random", seed=0),
        compute_metrics=build_compute_metrics("classification", num_labels=2),
    )  # fmt: skip
    trainer.train()
    losses = [float(log["loss"]) for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 8 and np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3]), losses
    metrics = trainer.evaluate()
    assert {"eval_loss", "eval_accuracy", "eval_mean_class_accuracy"} <= set(metrics)
    # (eval mode: after 8 steps BatchNorm's running statistics have not settled, so accuracy is not asserted high;
    # the metric must agree with the predictions the Trainer returns)
    predictions = trainer.predict(train)
    expected = (predictions.predictions.argmax(-1) == np.asarray(train["label"])).mean()
    assert predictions.metrics["test_accuracy"] == pytest.approx(expected)


def test_compute_metrics_for_segmentation_leaves_out_padding_and_ignored():
    from transformers import EvalPrediction

    logits = np.eye(3)[[0, 1, 1, 2, 0]][None]  # [1, 5, 3]
    labels = np.array([[0, 1, 0, -1, -100]])
    out = build_compute_metrics("segmentation", num_labels=3)(EvalPrediction(predictions=logits, label_ids=labels))
    assert out["allAcc"] == pytest.approx(2 / 3) and out["mIoU"] == pytest.approx((1 / 2 + 1 / 2) / 2)
