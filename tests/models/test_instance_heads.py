"""PointGroup instance segmentation on the scene backbones: the three losses against hand-computed values, gradients
reaching the backbone, an all-ignore batch, inference on hand-set voxel predictions (thresholds, classes, scores,
masks per scene, both coordinate spaces), the Auto class, loading a backbone, and a loss that falls."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch.nn import functional as F

import unipre3d_hf  # noqa: F401
from tests.models.scene_backbone_checks import two_scenes
from tests.models.test_pretraining import OBJECT_BACKBONES, SCENE_BACKBONES
from unipre3d_hf import AutoModelForPointCloudInstanceSegmentation
from unipre3d_hf.modeling.heads import INSTANCE_DEFAULTS, INSTANCE_SEGMENTATION_MODELS, instance_centroids
from unipre3d_hf.testing_utils import require_cuda

NUM_LABELS = 4  # 0 wall, 1 floor (stuff), 2 chair, 3 table


def instance_model(name: str = "sparse_unet", **fields):
    config = SCENE_BACKBONES[name]()
    config.num_labels = NUM_LABELS
    for key, value in fields.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    return AutoModelForPointCloudInstanceSegmentation.from_config(config)


def scene_labels(coords: torch.Tensor, offsets: torch.Tensor):
    """Semantic labels and per-scene instance ids from the position: a 2 x 2 grid of boxes per scene, the lowest
    10 cm are floor (stuff, instance id kept to check it is ignored), a few points unlabelled."""
    labels = torch.where(coords[:, 0] > coords[:, 0].median(), 2, 3)
    cell = (coords[:, 0] > coords[:, 0].median()).long() * 2 + (coords[:, 1] > coords[:, 1].median()).long()
    floor = coords[:, 2] < coords[:, 2].min() + 0.1
    labels = torch.where(floor, 1, labels)
    instance = cell.clone()
    labels[::17], instance[::13] = -1, -1
    return labels, instance


def reference_losses(coords, offsets, logits, offset_vectors, labels, instance):
    """Pointcept's three terms written point by point."""
    keep = labels != -1
    ce = F.cross_entropy(logits[keep], labels[keep]) if keep.any() else torch.tensor(0.0)
    scene = torch.repeat_interleave(torch.arange(offsets.numel()), torch.diff(offsets, prepend=torch.tensor([0])))
    l1 = cos = torch.tensor(0.0)
    count = 0
    for i in range(coords.shape[0]):
        if instance[i] == -1 or labels[i] in (-1, 0, 1):
            continue
        same = (scene == scene[i]) & (instance == instance[i]) & ~torch.isin(labels, torch.tensor([-1, 0, 1]))
        target = coords[same].mean(0) - coords[i]
        l1 = l1 + (offset_vectors[i] - target).abs().sum()
        p, t = offset_vectors[i], target
        cos = cos - (p / (p.norm() + 1e-8) * (t / (t.norm() + 1e-8))).sum()
        count += 1
    return ce, l1 / (count + 1e-8), cos / (count + 1e-8)


@pytest.mark.parametrize("name", sorted(SCENE_BACKBONES))
def test_losses_match_pointcept_terms_and_gradients_reach_the_backbone(name):
    model = instance_model(name)
    coords, feats, offsets = two_scenes(300, 400)
    labels, instance = scene_labels(coords, offsets)
    out = model(coords, feats, offsets, labels=labels, instance_labels=instance)
    assert out.logits.shape == (700, NUM_LABELS) and out.offset_vectors.shape == (700, 3)
    assert out.pred_masks is None  # training mode: no clustering
    ce, l1, cos = reference_losses(coords, offsets, out.logits.detach(), out.offset_vectors.detach(), labels, instance)
    torch.testing.assert_close(out.semantic_loss, ce)
    torch.testing.assert_close(out.offset_l1_loss, l1)
    torch.testing.assert_close(out.offset_cosine_loss, cos)
    torch.testing.assert_close(out.loss, ce + l1 + cos)
    out.loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not missing, missing


def test_offset_losses_on_a_hand_built_batch():
    model = instance_model()
    # scene 0: instance 0 = points 0, 1 (centroid (1, 0, 0)); instance 1 = point 2 alone (target shift 0);
    # point 3 has no instance; point 4 is a wall (stuff) with an instance id: both left out. scene 1: point 5 with
    # instance id 0 (ids are per scene: not merged with scene 0's instance 0), centroid itself.
    coords = torch.tensor([[0.0, 0, 0], [2, 0, 0], [5, 5, 5], [1, 1, 1], [3, 3, 3], [9, 9, 9]])
    offsets = torch.tensor([5, 6])
    labels = torch.tensor([2, 2, 3, 2, 0, 2])
    instance = torch.tensor([0, 0, 1, -1, 0, 0])
    pred = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 3], [7, 7, 7], [7, 7, 7], [0, 0, 1]])
    logits = torch.zeros(6, NUM_LABELS, requires_grad=True)
    ce, l1, cos = model.instance_losses(coords, offsets, logits, pred, labels, instance)
    # targets (1,0,0), (-1,0,0), 0, 0 on the four counted points: L1 0 + 2 + 3 + 1 = 6, cosines -1, 0, 0, 0
    assert l1.item() == pytest.approx(6 / 4) and cos.item() == pytest.approx(-1 / 4)
    assert ce.item() == pytest.approx(torch.log(torch.tensor(4.0)).item())
    centres = instance_centroids(coords, instance, offsets, (instance >= 0) & (labels != 0))
    assert centres[1].tolist() == [1.0, 0.0, 0.0] and centres[5].tolist() == [9.0, 9.0, 9.0]
    assert centres[3].tolist() == [0.0, 0.0, 0.0]  # not valid: no centroid
    # with the wall point counted, scene 0's instance 0 takes it in (points 0, 1, 4)
    with_wall = instance_centroids(coords, instance, offsets, instance >= 0)
    torch.testing.assert_close(with_wall[0], torch.tensor([5 / 3, 1.0, 1.0]))


def test_an_all_ignore_batch_gives_zero_loss_without_nan():
    model = instance_model()
    coords, feats, offsets = two_scenes(200, 300)
    labels, instance = torch.full((500,), -1), torch.full((500,), -1)
    out = model(coords, feats, offsets, labels=labels, instance_labels=instance)
    assert out.loss.item() == 0.0 and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    # only stuff labelled: semantic loss, no offset loss
    out = model(
        coords, feats, offsets, labels=torch.ones(500, dtype=torch.long), instance_labels=torch.zeros(500).long()
    )
    assert out.offset_l1_loss.item() == 0.0 and out.offset_cosine_loss.item() == 0.0 and out.semantic_loss > 0


def blobs_case():
    """Hand-set voxel predictions of two scenes. Scene 0: chair blob A (150 voxels), table blob B (120), chair blob C
    (80: a cluster, >= 50, but not a proposal, <= 100), 200 wall voxels; scene 1: chair blob D (130). Voxels of a
    blob sit on a 10 cm lattice (no neighbours in the original space) and are shifted onto their blob's centre."""
    g = torch.Generator().manual_seed(0)
    anchors, target, classes, scene = [], [], [], []
    for size, cls, b, centre in [(150, 2, 0, (0.0, 0, 0)), (120, 3, 0, (3.0, 0, 0)), (80, 2, 0, (0.0, 3, 0)),
                                 (200, 0, 0, (6.0, 6, 0)), (130, 2, 1, (0.0, 0, 0))]:  # fmt: skip
        lattice = torch.stack(torch.meshgrid(*(torch.arange(6.0),) * 3, indexing="ij"), -1).reshape(-1, 3)[:size]
        a = torch.tensor(centre) + lattice * 0.1
        anchors.append(a)
        target.append(torch.tensor(centre) + 0.25 + torch.rand(size, 3, generator=g) * 0.005 - a)
        classes += [cls] * size
        scene += [b] * size
    anchors, shifts = torch.cat(anchors), torch.cat(target)
    classes, scene = torch.tensor(classes), torch.tensor(scene)
    logits = F.one_hot(classes, NUM_LABELS).float() * 3 + torch.rand(len(classes), NUM_LABELS, generator=g)
    counts = torch.bincount(scene)
    offsets = torch.cumsum(counts * 2, 0)  # two points per voxel
    out = SimpleNamespace(
        batch_index=scene, anchor_points=anchors, point_to_token=torch.arange(len(classes)).repeat_interleave(2)
    )
    return out, logits, shifts, offsets


def test_inference_keeps_the_proposals_pointcept_keeps_and_scores_them():
    model = instance_model().eval()
    out, logits, shifts, offsets = blobs_case()
    (masks0, scores0, classes0), (masks1, scores1, classes1) = model.cluster_instances(out, logits, shifts, offsets)
    # scene 0: blob A (voxels 0-149) and blob B (150-269); C is too small, the wall is stuff
    assert classes0.tolist() == [2, 3] and masks0.shape == (2, 2 * 550)
    assert masks0[0].sum() == 300 and masks0[0, :300].all() and masks0[1, 300:540].all() and masks0[1].sum() == 240
    probs = logits.softmax(-1)
    torch.testing.assert_close(scores0, torch.stack([probs[:150, 2].mean(), probs[150:270, 3].mean()]))
    assert classes1.tolist() == [2] and masks1.shape == (1, 260) and masks1.all()
    torch.testing.assert_close(scores1, probs[550:, 2].mean()[None])
    # Pointcept's thresholds: with cluster_propose_points 70, blob C (80 voxels) becomes a proposal too
    model.instance_config["cluster_propose_points"] = 70
    (masks0, _, classes0), _ = model.cluster_instances(out, logits, shifts, offsets)
    assert classes0.tolist() == [2, 3, 2] and masks0[2].sum() == 160
    # the original space: the lattice spacing (10 cm) is beyond 1.5 voxels (3 cm): nothing; both spaces: the shifted
    # proposals, after the (empty) original ones
    model.instance_config["cluster_spaces"] = ["original"]
    assert model.cluster_instances(out, logits, shifts, offsets)[0][0].shape == (0, 1100)
    model.instance_config["cluster_spaces"] = ["original", "shifted"]
    assert model.cluster_instances(out, logits, shifts, offsets)[0][2].tolist() == [2, 3, 2]


@pytest.mark.parametrize("name", sorted(SCENE_BACKBONES))
def test_eval_forward_returns_instances_per_scene(name):
    model = instance_model(name, cluster_min_points=1, cluster_propose_points=0, cluster_thresh=20.0).eval()
    coords, feats, offsets = two_scenes(300, 400)
    with torch.no_grad():
        out = model(coords, feats, offsets)
        again = model(coords, feats, offsets, return_instances=False)
    assert len(out.pred_masks) == len(out.pred_scores) == len(out.pred_classes) == 2 and again.pred_masks is None
    for b, n in enumerate((300, 400)):
        k = out.pred_scores[b].shape[0]
        assert out.pred_masks[b].shape == (k, n) and out.pred_masks[b].dtype == torch.bool
        assert ((out.pred_scores[b] > 0) & (out.pred_scores[b] <= 1)).all()
        assert not torch.isin(out.pred_classes[b], torch.tensor([0, 1])).any()
    # with no size threshold every "thing" point is in exactly one instance (classes from the softmax, as Pointcept)
    thing = ~torch.isin(out.logits.softmax(-1).argmax(-1), torch.tensor([0, 1]))
    covered = torch.cat([m.sum(0) for m in out.pred_masks])
    assert torch.equal(covered, thing.long())
    assert torch.equal(out.logits, again.logits)


def test_auto_class_defaults_backbone_loading_and_errors(tmp_path):
    assert [m.__name__ for m in INSTANCE_SEGMENTATION_MODELS] == [
        "SparseUNetForPointCloudInstanceSegmentation", "PTv3ForPointCloudInstanceSegmentation",
    ]  # fmt: skip
    for model_cls in INSTANCE_SEGMENTATION_MODELS:
        assert AutoModelForPointCloudInstanceSegmentation._model_mapping[model_cls.config_class] is model_cls
    model = instance_model()
    assert model.instance_config == INSTANCE_DEFAULTS
    assert INSTANCE_DEFAULTS["cluster_thresh"] * INSTANCE_DEFAULTS["voxel_size"] == pytest.approx(0.03)
    # a saved backbone loads bit-exactly; the heads are new
    from transformers import AutoModel

    torch.manual_seed(1)
    backbone = AutoModel.from_config(SCENE_BACKBONES["sparse_unet"]())
    backbone.save_pretrained(tmp_path / "backbone")
    loaded = AutoModelForPointCloudInstanceSegmentation.from_pretrained(tmp_path / "backbone", num_labels=NUM_LABELS)
    assert all(torch.equal(v, backbone.state_dict()[k]) for k, v in loaded.backbone.state_dict().items())
    norm = loaded.bias_head[1]  # new BatchNorm: fresh statistics, not uninitialised memory
    assert torch.equal(norm.running_mean, torch.zeros(norm.num_features)) and torch.equal(
        norm.running_var, torch.ones(norm.num_features)
    )
    assert norm.num_batches_tracked.item() == 0
    # the clustering fields travel with the config
    loaded.config.cluster_min_points = 7
    loaded.save_pretrained(tmp_path / "task")
    again = AutoModelForPointCloudInstanceSegmentation.from_pretrained(tmp_path / "task")
    assert again.instance_config["cluster_min_points"] == 7
    differ = [k for k, v in again.state_dict().items() if not torch.equal(v, loaded.state_dict()[k])]
    assert not differ, differ
    with pytest.raises(ValueError, match="Unrecognized configuration class"):
        AutoModelForPointCloudInstanceSegmentation.from_config(OBJECT_BACKBONES["pointmlp"]())
    with pytest.raises(ValueError, match="`cluster_spaces` must be a non-empty list"):
        instance_model(cluster_spaces=["shifted", "warped"])
    with pytest.raises(ValueError, match="`cluster_thresh` must be > 0"):
        instance_model(cluster_thresh=0)
    coords, feats, offsets = two_scenes(100, 100)
    with pytest.raises(ValueError, match="both `labels` \\[P\\] and `instance_labels`"):
        model(coords, feats, offsets, labels=torch.zeros(200, dtype=torch.long))
    with pytest.raises(ValueError, match="`instance_labels` must be integer instance ids of shape \\[200\\]"):
        model(coords, feats, offsets, labels=torch.zeros(200, dtype=torch.long), instance_labels=torch.zeros(200))


def test_the_loss_falls():
    model = instance_model()
    coords, feats, offsets = two_scenes(150, 200)
    labels, instance = scene_labels(coords, offsets)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(12):
        out = model(coords, feats, offsets, labels=labels, instance_labels=instance)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append([out.loss.item(), out.offset_l1_loss.item()])
    assert losses[-1][0] < 0.7 * losses[0][0] and losses[-1][1] < losses[0][1]


@pytest.mark.gpu
@require_cuda
def test_cuda_inference_equals_cpu():
    from unipre3d_hf.testing_utils import write_report

    model = instance_model().eval()
    out, logits, shifts, offsets = blobs_case()
    expected = model.cluster_instances(out, logits, shifts, offsets)
    cuda_out = SimpleNamespace(**{k: v.cuda() for k, v in vars(out).items()})
    got = model.cuda().cluster_instances(cuda_out, logits.cuda(), shifts.cuda(), offsets.cuda())
    for (m, s, c), (em, es, ec) in zip(got, expected):
        assert torch.equal(m.cpu(), em) and torch.equal(c.cpu(), ec)
        torch.testing.assert_close(s.cpu(), es)
    write_report({"test": "instance_inference_cuda_vs_cpu", "instances": [len(e[1]) for e in expected], "equal": True})
