"""Task heads: classification on the four object backbones, per-point segmentation on all six; the Auto classes,
loading a (pre-trained) backbone into a task model, save/load, labels and their errors, and losses that fall on the
built-in mini sets."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

import unipre3d_hf  # noqa: F401
from tests.models.object_backbone_common import make_points
from tests.models.scene_backbone_checks import two_scenes
from tests.models.test_pretraining import OBJECT_BACKBONES, SCENE_BACKBONES
from unipre3d_hf import AutoModelForPointCloudClassification, AutoModelForPointCloudSegmentation
from unipre3d_hf.modeling.heads import CLASSIFICATION_MODELS, SEGMENTATION_MODELS
from unipre3d_hf.training import accuracy, mean_iou

NUM_POINTS = 128
BACKBONES = {**OBJECT_BACKBONES, **SCENE_BACKBONES}


def backbone_model(name: str):
    from transformers import AutoModel

    torch.manual_seed(0)
    return AutoModel.from_config(BACKBONES[name]())


def seg_inputs(name: str, batch: int = 2) -> tuple[dict, tuple]:
    """Model inputs and the logits' leading shape: objects ``[B, N]``, scenes ``[P]``."""
    if name in SCENE_BACKBONES:
        coords, feats, offsets = two_scenes(300, 500)
        return {"coords": coords, "features": feats, "offsets": offsets}, (coords.shape[0],)
    return {"points": make_points(batch, NUM_POINTS, seed=1)}, (batch, NUM_POINTS)


@pytest.mark.parametrize("name", sorted(OBJECT_BACKBONES))
def test_classification_shapes_loss_and_gradients(name):
    config = OBJECT_BACKBONES[name]()
    config.num_labels = 5
    model = AutoModelForPointCloudClassification.from_config(config)
    assert type(model).__name__ == f"{type(model.backbone).__name__[:-5]}ForPointCloudClassification"
    assert model.backbone is getattr(model, model.base_model_prefix)
    points, labels = make_points(3, NUM_POINTS, seed=2), torch.tensor([0, 4, 2])
    out = model(points, labels=labels)
    assert out.logits.shape == (3, 5) and out.loss.ndim == 0
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels))
    out.loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not missing, missing
    model.eval()
    with torch.no_grad():
        (logits,) = model(points, return_dict=False)
        assert torch.equal(logits, model(points).logits)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_segmentation_shapes_loss_with_ignored_points_and_gradients(name):
    config = BACKBONES[name]()
    config.num_labels = 4
    model = AutoModelForPointCloudSegmentation.from_config(config)
    inputs, shape = seg_inputs(name)
    labels = torch.randint(0, 4, shape, generator=torch.Generator().manual_seed(0))
    labels.view(-1)[::3] = -1  # unlabelled points: left out of the loss
    out = model(**inputs, labels=labels)
    assert out.logits.shape == (*shape, 4)
    keep = labels != -1
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits[keep], labels[keep]))
    out.loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not missing, missing


@pytest.mark.parametrize("name", sorted(SCENE_BACKBONES))
def test_scene_points_take_the_logits_of_their_voxel(name):
    config = BACKBONES[name]()
    config.num_labels = 3
    model = AutoModelForPointCloudSegmentation.from_config(config).eval()
    inputs, _ = seg_inputs(name)
    with torch.no_grad():
        logits = model(**inputs).logits
        backbone_out = model.backbone(inputs["coords"], inputs["features"], inputs["offsets"])
        voxel_logits = model.segmenter(backbone_out.last_hidden_state)
    torch.testing.assert_close(logits, voxel_logits[backbone_out.point_to_token])
    # points passed positionally (`points` is a synonym of `coords` for the scene models)
    with torch.no_grad():
        torch.testing.assert_close(model(inputs["coords"], inputs["features"], inputs["offsets"]).logits, logits)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_a_saved_backbone_loads_into_the_task_models(name, tmp_path):
    backbone = backbone_model(name)
    backbone.save_pretrained(tmp_path / "backbone")
    auto_classes = [AutoModelForPointCloudSegmentation]
    if name in OBJECT_BACKBONES:
        auto_classes.append(AutoModelForPointCloudClassification)
    for auto_class in auto_classes:
        model = auto_class.from_pretrained(tmp_path / "backbone", num_labels=7)
        assert model.config.num_labels == 7 and len(model.config.id2label) == 7
        expected = backbone.state_dict()
        loaded = model.backbone.state_dict()
        assert loaded.keys() == expected.keys()
        assert all(torch.equal(loaded[k], expected[k]) for k in expected), auto_class.__name__
        # the head is new, and initialised (not left empty)
        head = model.classifier if hasattr(model, "classifier") else model.segmenter
        assert all(torch.isfinite(p).all() for p in head.parameters())
        assert any(p.abs().sum() > 0 for p in head.parameters())


@pytest.mark.parametrize("name", ["pointmlp", "point_transformer", "ptv3"])
def test_task_models_save_and_load_with_auto_classes(name, tmp_path):
    config = BACKBONES[name]()
    config.num_labels, config.id2label = 3, {0: "wall", 1: "floor", 2: "chair"}
    config.label2id = {v: k for k, v in config.id2label.items()}
    auto_class = AutoModelForPointCloudSegmentation
    model = auto_class.from_config(config).eval()
    model.save_pretrained(tmp_path)
    loaded = auto_class.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model) and loaded.config.id2label == {0: "wall", 1: "floor", 2: "chair"}
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    inputs, _ = seg_inputs(name)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits)
    # AutoModel on a task checkpoint gives its backbone alone (transformers drops the prefix and the head)
    from transformers import AutoModel

    backbone = AutoModel.from_pretrained(tmp_path)
    assert type(backbone) is type(model.backbone)
    assert all(torch.equal(v, model.backbone.state_dict()[k]) for k, v in backbone.state_dict().items())


def test_every_task_model_is_registered_with_its_auto_class():
    for model_cls in CLASSIFICATION_MODELS:
        assert AutoModelForPointCloudClassification._model_mapping[model_cls.config_class] is model_cls
    for model_cls in SEGMENTATION_MODELS:
        assert AutoModelForPointCloudSegmentation._model_mapping[model_cls.config_class] is model_cls
    assert len(SEGMENTATION_MODELS) == 6 and len(CLASSIFICATION_MODELS) == 4
    with pytest.raises(ValueError, match="Unrecognized configuration class"):
        AutoModelForPointCloudClassification.from_config(SCENE_BACKBONES["ptv3"]())  # no scene classification


def test_head_settings_come_from_the_config():
    config = OBJECT_BACKBONES["point_transformer"]()
    model = AutoModelForPointCloudClassification.from_config(config)  # CLS models: [CLS, max] -> 256 -> 256
    linears = [m for m in model.classifier.modules() if isinstance(m, torch.nn.Linear)]
    assert [m.in_features for m in linears] == [2 * config.hidden_size, 256, 256]
    config = OBJECT_BACKBONES["pointmlp"]()
    config.classifier_hidden_sizes, config.classifier_dropout, config.num_labels = [32], 0.1, 6
    model = AutoModelForPointCloudClassification.from_config(config)
    linears = [m for m in model.classifier.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(config.hidden_size, 32), (32, 6)]
    assert [m.p for m in model.classifier.modules() if isinstance(m, torch.nn.Dropout)] == [0.1]
    config.classifier_dropout = 1.0
    with pytest.raises(ValueError, match="classifier_dropout"):
        AutoModelForPointCloudClassification.from_config(config)


def test_bad_labels_and_inputs_raise_clear_errors():
    config = OBJECT_BACKBONES["pointmlp"]()
    config.num_labels = 3
    classifier = AutoModelForPointCloudClassification.from_config(config)
    points = make_points(2, NUM_POINTS)
    with pytest.raises(ValueError, match=r"`labels` must be integer class indices of shape \[2\]"):
        classifier(points, labels=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"`labels` must be integer class indices"):
        classifier(points, labels=torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):
        classifier(points, labels=torch.tensor([0, 3]))
    segmenter = AutoModelForPointCloudSegmentation.from_config(config)
    with pytest.raises(ValueError, match=r"of shape \[2, 128\]"):
        segmenter(points, labels=torch.zeros(2, 64, dtype=torch.long))
    with pytest.raises(ValueError, match=r"or be -1 \(ignored\)"):
        segmenter(points, labels=torch.full((2, NUM_POINTS), -2))
    scene = SCENE_BACKBONES["sparse_unet"]()
    scene.num_labels = 3
    with pytest.raises(ValueError, match="`offsets`"):
        AutoModelForPointCloudSegmentation.from_config(scene)(coords=torch.rand(10, 3), features=torch.rand(10, 6))


def test_problem_types_pick_the_loss_as_transformers_does():
    points = make_points(3, NUM_POINTS, seed=4)
    config = OBJECT_BACKBONES["pointmlp"]()
    config.num_labels = 4
    model = AutoModelForPointCloudClassification.from_config(config)
    targets = torch.tensor([[1, 0, 0, 1], [0, 1, 0, 0], [0, 0, 0, 0]])
    out = model(points, labels=targets)  # integer [B, num_labels] labels: multi label (as transformers infers)
    assert model.config.problem_type == "multi_label_classification"
    torch.testing.assert_close(out.loss, F.binary_cross_entropy_with_logits(out.logits, targets.float()))
    out.loss.backward()
    with pytest.raises(ValueError, match=r"multi-label `labels` must have shape \[3, 4\]"):
        model(points, labels=torch.tensor([0, 1, 2]))

    config = OBJECT_BACKBONES["pointmlp"]()
    config.num_labels = 1
    model = AutoModelForPointCloudClassification.from_config(config)
    values = torch.tensor([0.5, -1.0, 2.0])
    out = model(points, labels=values)
    assert model.config.problem_type == "regression" and out.logits.shape == (3, 1)
    torch.testing.assert_close(out.loss, F.mse_loss(out.logits[:, 0], values))

    config = OBJECT_BACKBONES["pointmlp"]()
    config.num_labels, config.problem_type = 2, "regression"
    model = AutoModelForPointCloudClassification.from_config(config)
    with pytest.raises(ValueError, match=r"regression `labels` must have shape \[3, 2\]"):
        model(points, labels=values)
    model.config.problem_type = "ordinal"
    with pytest.raises(ValueError, match="`problem_type` must be one of"):
        model(points, labels=values)


@pytest.mark.parametrize("name", ["pointmlp", "sparse_unet"])
def test_segmentation_loss_is_zero_without_gradient_when_every_label_is_ignored(name):
    config = BACKBONES[name]()
    config.num_labels = 3
    model = AutoModelForPointCloudSegmentation.from_config(config)
    inputs, shape = seg_inputs(name)
    out = model(**inputs, labels=torch.full(shape, -1))
    assert out.loss.item() == 0.0 and torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(not g.any() for g in grads)


@pytest.mark.parametrize("model_class", SEGMENTATION_MODELS + CLASSIFICATION_MODELS)
def test_main_input_name_is_the_first_argument_of_forward(model_class):
    import inspect

    first = list(inspect.signature(model_class.forward).parameters)[1]
    assert model_class.main_input_name == first


# ------------------------------------------------------------------------------------------ losses on real data
@pytest.fixture(scope="module")
def objects_mini(tmp_path_factory):
    pytest.importorskip("pybullet")
    from unipre3d_hf.data import build_objects_mini, load_pretraining_dataset

    path = tmp_path_factory.mktemp("objects")
    build_objects_mini(str(path), num_objects=4, poses=3, views=4, image_size=16, num_points=256, seed=0,
                       show_progress=False)  # fmt: skip
    rows = [
        *load_pretraining_dataset(str(path), split="train"),
        *load_pretraining_dataset(str(path), split="validation"),
    ]
    return rows


def test_classification_loss_falls_on_objects_mini(objects_mini):
    categories = sorted({row["category"] for row in objects_mini})
    assert len(categories) == 4
    from unipre3d_hf.data import ObjectPretrainingCollator

    # the pre-training collator gives centred clouds of NUM_POINTS (small meshes repeat points to fill up)
    collate = ObjectPretrainingCollator(num_points=NUM_POINTS, point_sampling="first", augment=False, seed=0)
    points = collate(objects_mini)["points"]
    labels = torch.tensor([categories.index(row["category"]) for row in objects_mini])
    config = OBJECT_BACKBONES["pointmlp"]()
    config.num_labels, config.classifier_dropout = len(categories), 0.0
    torch.manual_seed(0)
    model = AutoModelForPointCloudClassification.from_config(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = model(points, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses
    with torch.no_grad():  # (train mode: after 25 steps BatchNorm's running statistics have not settled yet)
        assert accuracy(model(points).logits, labels) == 1.0


def test_segmentation_loss_falls_on_scenes_mini(tmp_path):
    pytest.importorskip("pybullet")
    from unipre3d_hf.data import ScenePretrainingCollator, SceneViewSampler, build_scenes_mini, load_pretraining_dataset
    from unipre3d_hf.training import confusion_matrix, iou_per_class

    build_scenes_mini(str(tmp_path), num_scenes=2, frames=12, width=64, height=48, voxel_size=0.05, seed=0,
                      show_progress=False)  # fmt: skip
    rows = list(load_pretraining_dataset(str(tmp_path), split="train")) + list(
        load_pretraining_dataset(str(tmp_path), split="validation")
    )
    batch = ScenePretrainingCollator(SceneViewSampler(num_reference=2, mode="eval"), seed=0)(rows)
    labels = batch["segment"]
    num_labels = int(labels.max()) + 1
    majority = torch.bincount(labels[labels >= 0]).max().item() / (labels >= 0).sum().item()
    assert num_labels >= 3 and majority < 0.8
    config = SCENE_BACKBONES["sparse_unet"]()
    config.num_labels, config.grid_size = num_labels, 0.05
    torch.manual_seed(0)
    model = AutoModelForPointCloudSegmentation.from_config(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    inputs = {k: batch[k] for k in ("coords", "features", "offsets")}
    losses = []
    for _ in range(30):
        loss = model(**inputs, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses
    with torch.no_grad():
        logits = model(**inputs).logits
    assert accuracy(logits, labels, ignore_index=-1) > majority + 0.15  # well above "everything is floor"
    iou = iou_per_class(confusion_matrix(logits.argmax(-1), labels, num_labels))
    assert (iou > 0.5).sum() >= 2 and mean_iou(logits.argmax(-1), labels, num_labels) > 0
