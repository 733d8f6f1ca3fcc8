import math

import pytest
import torch
from torch import nn

from unipre3d_hf.training import PAPER_LR_SCHEDULES, all_grads_finite, build_optimizer, build_scheduler


def _model():
    model = nn.ModuleDict({"backbone": nn.Linear(3, 4), "fusion": nn.Linear(4, 4), "vae": nn.Linear(4, 2)})
    model["vae"].requires_grad_(False)
    return model


def test_optimizer_named_groups_skip_frozen_and_empty():
    model = _model()
    opt = build_optimizer(
        {
            "point_network": model["backbone"].parameters(),
            "fusion_mlps": model["fusion"].parameters(),
            "frozen": model["vae"].parameters(),
        }
    )
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["name"] for g in opt.param_groups] == ["point_network", "fusion_mlps"]
    group = opt.param_groups[0]
    assert len(group["params"]) == 2
    assert (group["lr"], group["weight_decay"], group["betas"], group["eps"]) == (1e-4, 0.01, (0.9, 0.999), 1e-15)


def test_optimizer_errors():
    model = _model()
    with pytest.raises(ValueError, match="no trainable parameter"):
        build_optimizer({"vae": model["vae"].parameters(), "empty": []})
    with pytest.raises(ValueError, match=r"in both `param_groups\['a'\]` and \['b'\]"):
        build_optimizer({"a": list(model["backbone"].parameters()), "b": [model["backbone"].weight]})


def test_step_scheduler_per_iteration():
    model = _model()
    opt = build_optimizer({"all": model.parameters()}, lr=1.0)
    sched = build_scheduler(opt, step_size=3, gamma=0.5)
    lrs = []
    for _ in range(7):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25]
    assert PAPER_LR_SCHEDULES == {"object": (20_000, 0.8), "scene": (10_000, 0.9)}
    with pytest.raises(ValueError, match="`gamma` must be in"):
        build_scheduler(opt, 10, 1.5)


def test_all_grads_finite_flag():
    model = _model()
    flag = all_grads_finite(model)
    assert flag.dtype == torch.float32 and flag.shape == () and flag.item() == 1.0  # no gradients yet
    model["backbone"](torch.randn(2, 3)).sum().backward()
    assert all_grads_finite(model).item() == 1.0
    model["backbone"].bias.grad[1] = float("nan")
    assert all_grads_finite(model).item() == 0.0
    model["backbone"].bias.grad[1] = float("inf")
    assert all_grads_finite(model.parameters()).item() == 0.0
    assert torch.minimum(all_grads_finite(model), torch.tensor(1.0)).item() == 0.0  # what reduce(..., "min") does


def _lrs(sched, opt, steps):
    out = []
    for _ in range(steps):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return out


def test_cosine_and_constant_with_warmup_hand_computed():
    model = _model()
    params = list(model.parameters())
    opt = build_optimizer({"a": params[:1], "b": params[1:]}, lr=1.0)
    opt.param_groups[1]["lr"] = 0.5  # a group of its own lr: the floor is absolute, the same for both
    sched = build_scheduler(opt, schedule="cosine", warmup_steps=2, total_steps=6, min_lr=0.1)
    lrs = _lrs(sched, opt, 7)
    # warm-up 1/2, 2/2; then 0.1 + (lr - 0.1) * (1 + cos(pi * j / 4)) / 2 for j = 0..3; past the end the floor
    cos = [(1 + math.cos(math.pi * j / 4)) / 2 for j in range(4)]
    expected_a = [0.5, 1.0, *[0.1 + 0.9 * c for c in cos], 0.1]
    expected_b = [0.25, 0.5, *[0.1 + 0.4 * c for c in cos], 0.1]
    assert [lr[0] for lr in lrs] == pytest.approx(expected_a, abs=1e-12)
    assert [lr[1] for lr in lrs] == pytest.approx(expected_b, abs=1e-12)

    opt = build_optimizer({"all": model.parameters()}, lr=2.0)
    sched = build_scheduler(opt, schedule="constant", warmup_steps=4)
    assert [lr[0] for lr in _lrs(sched, opt, 6)] == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.0, 2.0])
    opt = build_optimizer({"all": model.parameters()}, lr=2.0)
    assert [lr[0] for lr in _lrs(build_scheduler(opt, schedule="constant"), opt, 3)] == [2.0, 2.0, 2.0]


def test_scheduler_errors_name_the_argument():
    opt = build_optimizer({"all": _model().parameters()}, lr=1.0)
    with pytest.raises(ValueError, match="`schedule` must be one of"):
        build_scheduler(opt, schedule="linear")
    with pytest.raises(ValueError, match="`total_steps` must be > warmup_steps"):
        build_scheduler(opt, schedule="cosine", warmup_steps=10, total_steps=10)
    with pytest.raises(ValueError, match="'step' has no warm-up"):
        build_scheduler(opt, schedule="step", warmup_steps=3)
