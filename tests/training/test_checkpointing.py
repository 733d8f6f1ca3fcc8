import hashlib
import json
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from unipre3d_hf.training import (
    EMA,
    CheckpointError,
    apply_checkpoint,
    build_optimizer,
    build_scheduler,
    checkpoint_info,
    latest_checkpoint,
    list_checkpoints,
    read_best,
    read_checkpoint,
    resolve_resume,
    resume_candidates,
    save_best,
    save_checkpoint,
    verify_checkpoint,
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
    return accelerator, model, opt, sched, ema


def _save(accelerator, model, opt, sched, ema, root, step, **kwargs):
    return save_checkpoint(accelerator, root, step, model=model, optimizer=opt, scheduler=sched, ema=ema, **kwargs)


def _load(accelerator, model, opt, sched, ema, path):
    loaded = read_checkpoint(path)
    return apply_checkpoint(loaded, accelerator, model=model, optimizer=opt, scheduler=sched, ema=ema)


def test_save_then_load_state_restores_everything(tmp_path):
    accelerator, model, opt, sched, ema = _setup()
    for _ in range(3):
        _train_step(accelerator, model, opt, sched, ema)
    path = _save(accelerator, model, opt, sched, ema, tmp_path, 3, trainer_state={"skipped_steps": 1}, run_id="a")
    assert path == str(tmp_path / "checkpoint-3") and checkpoint_info(path)["step"] == 3
    assert not any(p.name.startswith(".tmp") for p in tmp_path.iterdir())
    names = sorted(os.listdir(path))
    assert names == ["COMPLETE", "ema.safetensors", "model.safetensors", "optimizer.pt", "rng-0.json",
                     "scheduler.json", "trainer_state.json"]  # fmt: skip
    info = checkpoint_info(path)
    assert info["run_id"] == "a" and set(info["files"]) == set(names) - {"COMPLETE"}
    assert info["files"]["model.safetensors"]["size"] == (tmp_path / "checkpoint-3/model.safetensors").stat().st_size
    saved_weight = model.weight.detach().clone()
    saved_exp_avg = opt.state_dict()["state"][0]["exp_avg"].clone()
    saved_lr, saved_ema = opt.param_groups[0]["lr"], ema.model.weight.detach().clone()
    assert saved_lr == pytest.approx(1e-2 * 0.5)
    draws = (torch.rand(3), np.random.rand(3), random.random())  # the generators as saved
    for _ in range(3):
        _train_step(accelerator, model, opt, sched, ema)
    assert not torch.equal(model.weight, saved_weight) and ema.step == 6

    state = _load(accelerator, model, opt, sched, ema, resolve_resume(tmp_path, "latest"))
    assert state["step"] == 3 and state["skipped_steps"] == 1 and state["ema"]["step"] == 3
    assert torch.equal(model.weight, saved_weight)
    assert torch.equal(opt.state_dict()["state"][0]["exp_avg"], saved_exp_avg)
    assert opt.param_groups[0]["lr"] == pytest.approx(saved_lr) and sched.scheduler.last_epoch == 3
    assert ema.step == 3 and torch.equal(ema.model.weight, saved_ema)
    assert torch.equal(torch.rand(3), draws[0]) and np.array_equal(np.random.rand(3), draws[1])
    assert random.random() == draws[2]


def test_keep_last_prunes_by_numeric_step_and_only_this_run(tmp_path):
    accelerator, *objects = _setup()
    _save(accelerator, *objects, tmp_path, 0, run_id="other")  # another run's checkpoint is never deleted
    for step in (1, 2, 3, 10):
        _save(accelerator, *objects, tmp_path, step, keep_last=2, run_id="mine")
    assert [s for s, _ in list_checkpoints(tmp_path)] == [0, 3, 10]  # lexicographic order would keep 2 and 3
    assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-0", "checkpoint-10", "checkpoint-3"]
    _save(accelerator, *objects, tmp_path, 10, keep_last=2, run_id="mine")  # saving the same step again replaces it
    assert [s for s, _ in list_checkpoints(tmp_path)] == [0, 3, 10]
    assert resume_candidates(tmp_path, "latest") == [str(tmp_path / f"checkpoint-{s}") for s in (10, 3, 0)]


def test_interrupted_writes_are_ignored_and_cleaned(tmp_path):
    accelerator, *objects = _setup()
    _save(accelerator, *objects, tmp_path, 8)
    (tmp_path / ".tmp-checkpoint-9").mkdir()  # died while writing
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
    _save(accelerator, *objects, tmp_path, 11)
    assert not (tmp_path / ".tmp-checkpoint-9").exists()
    assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint-11")


def test_save_checkpoint_argument_checks(tmp_path):
    accelerator, *objects = _setup()
    with pytest.raises(ValueError, match="`keep_last` must be >= 1"):
        _save(accelerator, *objects, tmp_path, 1, keep_last=0)
    with pytest.raises(ValueError, match="`step` must be a non-negative int"):
        _save(accelerator, *objects, tmp_path, -1)


class _RunsCode:
    """Unpickling this creates the file at ``path``: the proof that a pickle ran code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _relist(folder, name):
    """Rewrites the COMPLETE marker so that it vouches for ``name`` as it is now (what an attacker would do)."""
    info = json.loads((folder / "COMPLETE").read_text())
    data = (folder / name).read_bytes()
    info["files"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / "COMPLETE").write_text(json.dumps(info))


def test_a_pickle_in_a_checkpoint_is_never_unpickled(tmp_path):
    accelerator, *objects = _setup()
    folder = Path(_save(accelerator, *objects, tmp_path, 1))
    marker = tmp_path / "code-ran"
    # an extra pickle, even one the marker vouches for (Accelerate's old custom_checkpoint_0.pkl), is refused unread
    (folder / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps(_RunsCode(marker)))
    with pytest.raises(CheckpointError, match="custom_checkpoint_0.pkl: unexpected file"):
        read_checkpoint(folder)
    _relist(folder, "custom_checkpoint_0.pkl")
    with pytest.raises(CheckpointError, match="custom_checkpoint_0.pkl: unexpected file"):
        read_checkpoint(folder)
    (folder / "custom_checkpoint_0.pkl").unlink()
    with pytest.raises(CheckpointError, match="lists an unexpected file .custom_checkpoint_0.pkl."):
        read_checkpoint(folder)
    info = json.loads((folder / "COMPLETE").read_text())
    del info["files"]["custom_checkpoint_0.pkl"]
    (folder / "COMPLETE").write_text(json.dumps(info))
    # the optimizer file replaced by a code-running pickle (and vouched for): torch.load(weights_only=True) refuses it
    torch.save({"state": {}, "param_groups": [_RunsCode(marker)]}, folder / "optimizer.pt")
    with pytest.raises(CheckpointError, match="optimizer.pt: .* bytes, but .* were written"):
        read_checkpoint(folder)
    _relist(folder, "optimizer.pt")
    with pytest.raises(CheckpointError, match="optimizer.pt: not loadable with weights_only=True"):
        read_checkpoint(folder)
    assert not marker.exists()
    # an Accelerate-era checkpoint (a marker without the file list) is refused as a whole
    (folder / "COMPLETE").write_text(json.dumps({"step": 1, "time": 0.0}))
    with pytest.raises(CheckpointError, match="older version of the package"):
        verify_checkpoint(folder)


@pytest.mark.parametrize(
    "name, damage, message",
    [
        ("rng-0.json", lambda b: b[: len(b) // 2], "rng-0.json: .* bytes, but .* were written"),
        ("optimizer.pt", lambda b: b[:100] + bytes(len(b) - 100), "optimizer.pt: its SHA-256 differs"),
        ("model.safetensors", lambda b: bytes(len(b)), "model.safetensors: its SHA-256 differs"),
        ("ema.safetensors", lambda b: b"", "ema.safetensors: 0 bytes"),
        ("scheduler.json", None, "scheduler.json: missing"),
    ],
)
def test_a_damaged_file_is_named(tmp_path, name, damage, message):
    accelerator, *objects = _setup()
    folder = Path(_save(accelerator, *objects, tmp_path, 1))
    if damage is None:
        (folder / name).unlink()
    else:
        (folder / name).write_bytes(damage((folder / name).read_bytes()))
    with pytest.raises(CheckpointError, match=message):
        read_checkpoint(folder)
    if damage is not None:  # even when the marker vouches for the damaged file, reading it fails with its name
        _relist(folder, name)
        with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
            _load(accelerator, *objects, folder)


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
