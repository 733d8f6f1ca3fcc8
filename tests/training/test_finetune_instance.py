"""Instance segmentation fine-tuning (``--task instance_segmentation``) on tiny synthetic rooms (CPU): a run whose loss
falls and whose evaluation returns AP / AP@50 / AP@25 in [0, 1] with the three losses logged apart, the distributed AP
reduction (two shards of scenes gathered equal one process), instance ids through the collator's crop and
augmentation, the stuff classes from the class names or the card, and the clear errors. Every finetune preset parses."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset, Features, List, Value

import unipre3d_hf  # noqa: F401
from tests.training.test_finetune import TINY_SPUNET, _write, tiny
from unipre3d_hf import AutoModelForPointCloudInstanceSegmentation
from unipre3d_hf.data.downstream import scene_segmentation_features
from unipre3d_hf.data.finetune_collators import DataCollatorForPackedScenes
from unipre3d_hf.modeling.heads import instance_centroids
from unipre3d_hf.training.finetune import (
    build_task,
    main,
    parse_finetune_arguments,
    reduce_scene_matches,
)
from unipre3d_hf.training.instance_metrics import (
    instance_ap_from_matches,
    instance_average_precision,
    instance_scene_matches,
)

ROOT = Path(__file__).resolve().parents[2]
NAMES = ["wall", "floor", "chair", "table"]
COLOURS = {0: (200, 200, 200), 1: (90, 60, 30), 2: (220, 30, 30), 3: (30, 30, 220)}
BOX_POINTS = 80
# clustering thresholds for rooms of a few hundred points at a 0.15 m grid
SMALL_CLUSTERS = {"cluster_min_points": 3, "cluster_propose_points": 5}


def room(rng: np.random.Generator, boxes: int = 3) -> dict:
    """A 3 m square room: a floor, one wall, ``boxes`` 0.6 m boxes (chairs and tables, one instance each) in the
    cells of a 2 x 2 grid; colours by class with noise."""
    parts = [np.c_[rng.uniform(0, 3, (150, 2)), np.zeros(150)], np.c_[np.zeros(60), rng.uniform(0, 3, (60, 2))]]
    segment, instance = [np.full(150, 1), np.full(60, 0)], [np.full(150, -1), np.full(60, -1)]
    for k, cell in enumerate(rng.permutation(4)[:boxes]):
        corner = np.array([0.4 + 1.3 * (cell % 2), 0.4 + 1.3 * (cell // 2), 0.0])
        pts = rng.uniform(0, 0.6, (BOX_POINTS, 3))
        face = rng.integers(0, 3, BOX_POINTS)
        pts[np.arange(BOX_POINTS), face] = rng.choice([0.0, 0.6], BOX_POINTS)  # on the box surface
        parts.append(corner + pts)
        segment.append(np.full(BOX_POINTS, 2 + k % 2))
        instance.append(np.full(BOX_POINTS, k))
    segment, instance = np.concatenate(segment), np.concatenate(instance)
    colours = np.array([COLOURS[int(s)] for s in segment]) + rng.integers(-20, 20, (len(segment), 3))
    colours = np.clip(colours, 0, 255).astype(np.uint8)
    coords, normals = np.concatenate(parts).astype(np.float32), np.zeros((0, 3), np.float32)
    return {"coords": coords, "colors": colours, "normals": normals, "segment": segment.tolist(),
            "instance": instance.tolist()}  # fmt: skip


def rooms_folder(folder: Path, train: int = 4, val: int = 2, seed: int = 0, features=None) -> str:
    rng = np.random.default_rng(seed)
    features = features or scene_segmentation_features(NAMES)

    def rows(n, split):
        return [{"id": f"{split}{i}", **room(rng)} for i in range(n)]

    return _write({"train": Dataset.from_list(rows(train, "train"), features),
                   "validation": Dataset.from_list(rows(val, "val"), features)}, folder)  # fmt: skip


def insseg_args(tmp_path, dataset, **kw) -> list[str]:
    backbone = {**TINY_SPUNET, "grid_size": 0.15, **SMALL_CLUSTERS, **kw.pop("backbone", {})}
    args = {"task": "instance_segmentation", "mode": "scratch", "backbone_type": "sparse_unet", "batch_size": 2,
            "augment": "none", "instance_min_region_size": 20, **kw}  # fmt: skip
    return tiny(tmp_path, dataset, backbone=backbone, **args)


@pytest.fixture(scope="module")
def rooms(tmp_path_factory):
    return rooms_folder(tmp_path_factory.mktemp("rooms"))


def test_instance_segmentation_end_to_end(tmp_path, rooms):
    history = main(insseg_args(tmp_path, rooms, max_steps=6, eval_every=6, save_every=6, learning_rate=1e-2))
    final = history["final"]
    for key in ("AP", "AP50", "AP25", "mIoU", "mAcc", "allAcc"):
        assert 0.0 <= final[f"val/{key}"] <= 1.0, key  # not NaN: the validation rooms hold chair and table instances
    assert final["val/AP25"] >= final["val/AP50"] >= final["val/AP"]
    parts = final["val/semantic_loss"] + final["val/offset_l1_loss"] + final["val/offset_cosine_loss"]
    assert final["val/loss"] == pytest.approx(parts, rel=1e-5)
    logs = [json.loads(x) for x in (tmp_path / "run/logs/t/metrics.jsonl").read_text().splitlines()]
    train = [r for r in logs if "train/loss" in r]
    assert len(train) == 6 and all(f"train/{k}" in train[0] for k in ("semantic_loss", "offset_l1_loss", "accuracy"))
    assert np.mean([r["train/loss"] for r in train[-2:]]) < np.mean([r["train/loss"] for r in train[:2]])
    per_class = json.loads((tmp_path / "run/metrics.json").read_text())["per_class"]
    assert [r["class"] for r in per_class] == NAMES and [r["stuff"] for r in per_class] == [True, True, False, False]
    model = AutoModelForPointCloudInstanceSegmentation.from_pretrained(tmp_path / "run/model")
    assert model.config.segment_ignore_index == [-1, 0, 1] and model.config.voxel_size == pytest.approx(0.15)
    assert model.config.cluster_min_points == 3 and model.config.id2label[2] == "chair"


def _fake_predictions(rng, references):
    """Per scene: every instance predicted with a few points dropped or added, plus a false positive."""
    predictions = []
    for ref in references:
        masks, scores, classes = [], [], []
        for inst in np.unique(ref["instance"][ref["instance"] >= 0]):
            mask = ref["instance"] == inst
            mask &= rng.random(mask.shape) > rng.uniform(0.0, 0.6)  # IoU from 1 down to about 0.4
            masks.append(mask)
            scores.append(rng.random())
            classes.append(int(ref["segment"][np.flatnonzero(ref["instance"] == inst)[0]]))
        masks.append(rng.random(ref["segment"].shape) < 0.2)
        scores.append(rng.random())
        classes.append(2)
        predictions.append({"pred_masks": np.stack(masks), "pred_scores": np.array(scores),
                            "pred_classes": np.array(classes)})  # fmt: skip
    return predictions


def test_ap_reduction_over_two_processes_equals_one_process():
    rng = np.random.default_rng(3)
    references = [
        {"segment": np.asarray(r["segment"]), "instance": np.asarray(r["instance"])}
        for r in (room(rng) for _ in range(5))
    ]
    predictions = _fake_predictions(rng, references)
    single = instance_average_precision(predictions, references, 4, NAMES, (-1, 0, 1), -1, 20)
    assert 0.0 < single["map"] < single["map50"] <= single["map25"] <= 1.0  # a non-trivial case
    shards = []
    for rank in range(2):  # the task's split of the validation rows: rank::world
        local = instance_scene_matches(predictions[rank::2], references[rank::2], 4, (-1, 0, 1), -1, 20)
        shards.append(pickle.loads(pickle.dumps(local)))  # gather_object pickles each process's list
    gathered = shards[0] + shards[1]  # gather_object's order: process 0's scenes, then process 1's
    reduced = instance_ap_from_matches(gathered, 4, NAMES, (-1, 0, 1), 20)
    assert reduced == single
    assert reduce_scene_matches(None, shards[0]) is shards[0]  # one process: nothing to gather
    # the mean of the two processes' APs is not the AP of all scenes
    halves = [instance_ap_from_matches(s, 4, NAMES, (-1, 0, 1), 20)["map"] for s in shards]
    assert np.mean(halves) != pytest.approx(single["map"])


def test_collator_keeps_instance_ids_through_crop_and_augmentation():
    rng = np.random.default_rng(4)
    rows = []
    for i in range(2):
        r = room(rng)
        n = len(r["coords"])
        index = np.arange(n)  # each point's index in its colour (base 256), to find it after the crop
        r["colors"] = np.stack([index // 256, index % 256, np.full(n, 7 + i)], 1).astype(np.uint8)
        rows.append({"id": f"r{i}", **r})
    collator = DataCollatorForPackedScenes(max_points=300, augment=True, seed=0, instance_column="instance")
    batch = collator(rows)
    assert batch["instance_labels"].dtype == torch.long and batch["instance_labels"].shape == batch["labels"].shape
    colour = torch.round((batch["features"][:, 3:] + 1) * 127.5).long()
    start = 0
    for i, end in enumerate(batch["offsets"].tolist()):
        assert (colour[start:end, 2] == 7 + i).all()
        index = (colour[start:end, 0] * 256 + colour[start:end, 1]).numpy()
        assert len(np.unique(index)) == end - start == 300  # a crop without repeats
        np.testing.assert_array_equal(
            batch["instance_labels"][start:end].numpy(), np.asarray(rows[i]["instance"])[index]
        )
        np.testing.assert_array_equal(batch["labels"][start:end].numpy(), np.asarray(rows[i]["segment"])[index])
        start = end
    # the offset targets: every point of an instance shifts to the mean of the instance's collated (augmented) points
    valid = batch["instance_labels"] >= 0
    centres = instance_centroids(batch["coords"], batch["instance_labels"], batch["offsets"], valid)
    first = slice(0, 300)
    for inst in torch.unique(batch["instance_labels"][first][valid[first]]):
        member = batch["instance_labels"][first] == inst
        torch.testing.assert_close(
            centres[first][member], batch["coords"][first][member].mean(0).expand(int(member.sum()), 3)
        )
    assert int(valid[300:].sum()) > 0 and (centres[~valid] == 0).all()
    # ids stay local per scene: scene 1's instance 0 is not merged with scene 0's
    ids0, ids1 = (set(batch["instance_labels"][s].tolist()) - {-1} for s in (first, slice(300, 600)))
    assert ids0 & ids1


def test_stuff_classes_from_the_card_of_an_integer_segment_column(tmp_path):
    features = Features({"id": Value("string"), "coords": List(List(Value("float32"), length=3)),
                         "colors": List(List(Value("uint8"), length=3)),
                         "normals": List(List(Value("float32"), length=3)), "segment": List(Value("int32")),
                         "instance": List(Value("int32"))})  # fmt: skip
    folder = rooms_folder(tmp_path / "rooms", train=2, val=1, features=features)
    args = parse_finetune_arguments(insseg_args(tmp_path, folder))
    with pytest.raises(ValueError, match="classes of `segment` have no names.*`backbone.segment_ignore_index`"):
        build_task(args).train_dataset()
    with open(os.path.join(folder, "README.md"), "w") as f:  # the package's builders write class_names in the card
        f.write("---\nclass_names:\n- floor\n- wall\n- chair\n- table\n---\n# rooms\n")
    task = build_task(args)
    task.train_dataset()
    assert task.names == ["floor", "wall", "chair", "table"] and task.stuff == [-1, 0, 1]
    # semantic segmentation names the classes from the card too (its metrics and id2label say "chair", not "2")
    semantic_args = tiny(tmp_path, folder, task="semantic_segmentation", mode="scratch", backbone_type="sparse_unet",
                         backbone={**TINY_SPUNET, "grid_size": 0.15})  # fmt: skip
    semantic = build_task(parse_finetune_arguments(semantic_args))
    semantic.train_dataset()
    assert semantic.names == ["floor", "wall", "chair", "table"]


def test_clear_errors(tmp_path, rooms):
    rng = np.random.default_rng(5)
    rows = [{"id": f"v{i}", **room(rng)} for i in range(2)]
    rows[1]["instance"] = [-1] * len(rows[1]["segment"])
    features = scene_segmentation_features(NAMES)
    folder = _write({"train": Dataset.from_list(rows[:1], features), "validation": Dataset.from_list(rows, features)},
                    tmp_path / "unlabelled")  # fmt: skip
    with pytest.raises(ValueError, match=r"`instance` is -1 \(no instance\) at every point of 1 validation scene\(s\)"):
        build_task(parse_finetune_arguments(insseg_args(tmp_path, folder))).train_dataset()
    args = parse_finetune_arguments(insseg_args(tmp_path, rooms, backbone={"segment_ignore_index": [-1, 0, 7]}))
    with pytest.raises(ValueError, match=r"`backbone.segment_ignore_index` \[-1, 0, 7\] must hold class indices in "):
        build_task(args).train_dataset()
    with pytest.raises(SystemExit, match="task 'instance_segmentation' needs a scene backbone"):
        main(tiny(tmp_path, rooms, task="instance_segmentation", mode="scratch", backbone_type="pointmlp"))
    with pytest.raises(SystemExit, match="`backbone.cluster_min_pointz` is no field of SparseUNetConfig"):
        main(insseg_args(tmp_path, rooms, backbone={"cluster_min_pointz": 3}))
    with pytest.raises(SystemExit, match="`instance_min_region_size` must be an int >= 1"):
        main(insseg_args(tmp_path, rooms, instance_min_region_size=0))


@pytest.mark.parametrize("preset", sorted(p.name for p in (ROOT / "configs" / "finetune").glob("*.yaml")))
def test_finetune_presets_parse(preset):
    args = parse_finetune_arguments(["--config", str(ROOT / "configs" / "finetune" / preset), "--init", "unused"])
    if "insseg" in preset:
        assert args.task == "instance_segmentation" and args.stuff_classes == ["wall", "floor"]
        assert args.backbone["grid_size"] == 0.02
