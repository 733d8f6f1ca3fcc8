import json
import os

import pytest
import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration
from safetensors.torch import load_file
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from unipre3d_hf.training import (
    EMA,
    build_optimizer,
    build_scheduler,
    checkpoint_info,
    latest_checkpoint,
    list_checkpoints,
    read_best,
    resolve_resume,
    save_best,
    save_checkpoint,
)


def _train_step(accelerator, model, opt, sched, ema):
    loss = model(torch.randn(8, 4)).pow(2).mean()
    accelerator.backward(loss)
    opt.step()
    sched.step()
    opt.zero_grad()
    ema.update(accelerator.unwrap_model(model))


def _setup():
    torch.manual_seed(0)
    accelerator = Accelerator(cpu=True)
    model = nn.Linear(4, 3)
    opt = build_optimizer({"all": model.parameters()}, lr=1e-2)
    sched = build_scheduler(opt, step_size=2, gamma=0.5)
    model, opt, sched = accelerator.prepare(model, opt, sched)
    ema = EMA(accelerator.unwrap_model(model), update_every=1, update_after_step=0)
    accelerator.register_for_checkpointing(ema)
    return accelerator, model, opt, sched, ema


def test_save_then_load_state_restores_everything(tmp_path):
    accelerator, model, opt, sched, ema = _setup()
    for _ in range(3):
        _train_step(accelerator, model, opt, sched, ema)
    path = save_checkpoint(accelerator, tmp_path, step=3)
    assert path == str(tmp_path / "checkpoint-3") and checkpoint_info(path)["step"] == 3
    assert not any(p.name.startswith(".tmp") for p in tmp_path.iterdir())
    saved_weight = model.weight.detach().clone()
    saved_exp_avg = opt.state_dict()["state"][0]["exp_avg"].clone()
    saved_lr, saved_ema = opt.param_groups[0]["lr"], ema.model.weight.detach().clone()
    assert saved_lr == pytest.approx(1e-2 * 0.5)
    for _ in range(3):
        _train_step(accelerator, model, opt, sched, ema)
    assert not torch.equal(model.weight, saved_weight) and ema.step == 6

    accelerator.load_state(resolve_resume(tmp_path, "latest"))
    assert torch.equal(model.weight, saved_weight)
    assert torch.equal(opt.state_dict()["state"][0]["exp_avg"], saved_exp_avg)
    assert opt.param_groups[0]["lr"] == pytest.approx(saved_lr) and sched.scheduler.last_epoch == 3
    assert ema.step == 3 and torch.equal(ema.model.weight, saved_ema)


def test_keep_last_prunes_by_numeric_step(tmp_path):
    accelerator, *_ = _setup()
    for step in (1, 2, 3, 10):
        save_checkpoint(accelerator, tmp_path, step=step, keep_last=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [3, 10]  # lexicographic order would keep 2 and 3
    assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-10", "checkpoint-3"]
    save_checkpoint(accelerator, tmp_path, step=10, keep_last=2)  # saving the same step again replaces it
    assert [s for s, _ in list_checkpoints(tmp_path)] == [3, 10]


def test_interrupted_writes_are_ignored_and_cleaned(tmp_path):
    accelerator, *_ = _setup()
    save_checkpoint(accelerator, tmp_path, step=8)
    (tmp_path / ".tmp-checkpoint-9").mkdir()  # died while accelerate was writing
    (tmp_path / ".tmp-checkpoint-9" / "model.safetensors").write_bytes(b"truncated")
    (tmp_path / "checkpoint-10").mkdir()  # a folder without the COMPLETE marker
    (tmp_path / "checkpoint-not-a-step").mkdir()
    assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint-8")
    assert resolve_resume(tmp_path, "latest") == str(tmp_path / "checkpoint-8")
    assert resolve_resume(tmp_path, None) is None
    assert resolve_resume(tmp_path / "empty", "latest") is None
    with pytest.raises(ValueError, match="has no COMPLETE marker"):
        resolve_resume(tmp_path, tmp_path / "checkpoint-10")
    with pytest.raises(FileNotFoundError, match="`resume`: no checkpoint folder"):
        resolve_resume(tmp_path, tmp_path / "checkpoint-99")
    save_checkpoint(accelerator, tmp_path, step=11)
    assert not (tmp_path / ".tmp-checkpoint-9").exists()
    assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint-11")


def test_save_checkpoint_argument_checks(tmp_path):
    accelerator, *_ = _setup()
    with pytest.raises(ValueError, match="`keep_last` must be >= 1"):
        save_checkpoint(accelerator, tmp_path, step=1, keep_last=0)
    with pytest.raises(ValueError, match="`step` must be a non-negative int"):
        save_checkpoint(accelerator, tmp_path, step=-1)
    auto = Accelerator(cpu=True, project_config=ProjectConfiguration(tmp_path, automatic_checkpoint_naming=True))
    with pytest.raises(ValueError, match="automatic_checkpoint_naming"):
        save_checkpoint(auto, tmp_path, step=1)


def test_save_best_keeps_only_improvements(tmp_path):
    accelerator, model, *_ = _setup()
    assert read_best(tmp_path) is None
    assert save_best(accelerator, model, tmp_path, "psnr_novel", 20.0, step=100)
    with torch.no_grad():
        model.weight.add_(1.0)
    assert not save_best(accelerator, model, tmp_path, "psnr_novel", 19.0, step=200)
    best = read_best(tmp_path)
    assert (best["metric"], best["value"], best["step"]) == ("psnr_novel", 20.0, 100)
    assert not torch.equal(load_file(tmp_path / "best" / "model.safetensors")["weight"], model.weight)
    assert save_best(accelerator, {"w": torch.ones(2)}, tmp_path, "psnr_novel", 21.5, step=300)
    assert json.loads((tmp_path / "best" / "best.json").read_text())["step"] == 300
    assert torch.equal(load_file(tmp_path / "best" / "model.safetensors")["w"], torch.ones(2))
    assert sorted(os.listdir(tmp_path)) == ["best"]
    with pytest.raises(ValueError, match="holds 'psnr_novel'"):
        save_best(accelerator, model, tmp_path, "loss", 0.1, step=400, mode="min")
    assert save_best(accelerator, model, tmp_path / "min", "loss", 0.5, step=1, mode="min")
    assert not save_best(accelerator, model, tmp_path / "min", "loss", 0.6, step=2, mode="min")


class _TinyConfig(PretrainedConfig):
    model_type = "unipre3d_test_tiny"

    def __init__(self, width: int = 3, **kwargs):
        self.width = width
        super().__init__(**kwargs)


class _TinyModel(PreTrainedModel):
    config_class = _TinyConfig

    def __init__(self, config):
        super().__init__(config)
        self.proj = nn.Linear(config.width, config.width)
        self.post_init()


def test_save_best_uses_save_pretrained_for_transformers_models(tmp_path):
    accelerator = Accelerator(cpu=True)
    model = _TinyModel(_TinyConfig(width=3))
    assert save_best(accelerator, model, tmp_path, "psnr_novel", 30.0, step=5)
    reloaded = _TinyModel.from_pretrained(tmp_path / "best")
    assert torch.equal(reloaded.proj.weight, model.proj.weight)
    assert read_best(tmp_path)["value"] == 30.0
