"""The shared training loop on a tiny regression task: exact resume, fallback past a damaged checkpoint, output-folder
rules and lock, SIGTERM / SIGINT in a real subprocess, and the mixed-precision default."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from unipre3d_hf.training import TrainingArguments, TrainingTask, lock_output_dir, run_training

ROOT = Path(__file__).resolve().parents[2]


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.2), nn.Linear(8, 1))  # dropout: the RNG matters
        self.autocast_seen = []

    def forward(self, x):
        self.autocast_seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return self.layers(x)


class Regression(TrainingTask):
    """y = sum(x) with an MLP; ``hook(step, output_dir)`` runs at the start of every training step."""

    best_metric = "mse"
    best_mode = "min"

    def __init__(self, hook=None, sleep: float = 0.0):
        self.hook, self.sleep = hook, sleep
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(24, 3, generator=g)
        self.net = None

    def build_model(self):
        torch.manual_seed(0)
        self.net = _Net()
        return self.net

    def train_dataset(self):
        return [{"x": self.x[i], "y": self.x[i].sum(0, keepdim=True)} for i in range(16)]

    def train_collator(self):
        return lambda rows: {"x": torch.stack([r["x"] for r in rows]), "y": torch.stack([r["y"] for r in rows])}

    def training_step(self, model, batch, step):
        if self.hook is not None:
            self.hook(step, self.args.output_dir)
        time.sleep(self.sleep)
        loss = (model(batch["x"]).float() - batch["y"]).pow(2).mean()
        return loss, {"mse": loss.detach()}

    def batch_size_of(self, batch):
        return len(batch["x"])

    @torch.no_grad()
    def evaluate(self, model, accelerator, step, output_dir):
        x = self.x[16:]
        return {"mse": (model(x).float() - x.sum(1, keepdim=True)).pow(2).mean().item()}

    def export(self, model, output_dir):
        save_file(
            {k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(output_dir, "final.safetensors")
        )


def tiny_args(out, **overrides) -> TrainingArguments:
    values = dict(
        output_dir=str(out), run_name="tiny", max_steps=6, batch_size=4, learning_rate=1e-2, save_every=2,
        eval_every=3, log_every=1, eval_at_start=False, min_batches_per_epoch=1, use_ema=True, ema_update_every=1,
        ema_update_after_step=1, seed=5,
    )  # fmt: skip
    values.update(overrides)
    return TrainingArguments(**values)


def _weights(folder):
    return load_file(Path(folder) / "model.safetensors"), load_file(Path(folder) / "ema.safetensors")


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_is_bit_identical_across_an_epoch_end(tmp_path):
    # 16 rows / batch 4 = 4 steps per epoch: the resumed run starts mid-epoch-1 (step 4 of 6 is saved at 4)
    full = run_training(tiny_args(tmp_path / "full"), Regression())
    assert full["step"] == 6 and full["skipped_steps"] == 0 and full["final"]["val/mse"] > 0
    names = ("checkpoint-6/COMPLETE", "best/best.json", "final.json", "final.safetensors", "logs/tiny/metrics.jsonl",
             "training_args.json")  # fmt: skip
    for name in names:
        assert (tmp_path / "full" / name).exists(), name
    lines = [json.loads(x) for x in (tmp_path / "full/logs/tiny/metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "train/mse" in x] == [1, 2, 3, 4, 5, 6]
    assert sum("val/mse" in x for x in lines) == 2
    run_training(tiny_args(tmp_path / "part", max_steps=3), Regression())  # saves 2 and 3
    resumed = run_training(tiny_args(tmp_path / "part", resume="latest"), Regression())
    assert resumed["step"] == 6
    for a, b in zip(_weights(tmp_path / "full/checkpoint-6"), _weights(tmp_path / "part/checkpoint-6")):
        assert _same(a, b)


def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    run_training(tiny_args(tmp_path / "full"), Regression())
    run_training(tiny_args(tmp_path / "run", max_steps=4), Regression())  # checkpoints 2 and 4
    rng = tmp_path / "run/checkpoint-4/rng-0.json"
    rng.write_bytes(rng.read_bytes()[:50])  # truncated
    with caplog.at_level(logging.WARNING, logger="unipre3d_hf.training"):
        result = run_training(tiny_args(tmp_path / "run", resume="latest"), Regression())
    assert "checkpoint-4/rng-0.json: 50 bytes" in caplog.text and "falling back to the previous" in caplog.text
    assert result["step"] == 6  # from step 2, and still the same weights as the uninterrupted run
    for a, b in zip(_weights(tmp_path / "full/checkpoint-6"), _weights(tmp_path / "run/checkpoint-6")):
        assert _same(a, b)
    # every checkpoint damaged: an error, not a fresh start
    for folder in (tmp_path / "run").glob("checkpoint-*"):
        (folder / "model.safetensors").write_bytes(bytes((folder / "model.safetensors").stat().st_size))
    with pytest.raises(ValueError, match="no usable checkpoint"):
        run_training(tiny_args(tmp_path / "run", resume="latest", max_steps=8), Regression())
    # an explicit checkpoint folder is that one only, and the error names the bad file
    with pytest.raises(ValueError, match="checkpoint-6/model.safetensors: its SHA-256 differs|no usable checkpoint"):
        run_training(tiny_args(tmp_path / "run", resume=str(tmp_path / "run/checkpoint-6"), max_steps=8), Regression())
    assert "checkpoint-6/model.safetensors: its SHA-256 differs" in caplog.text


class _RunsCode:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):  # unpickling this creates the file: the proof that a pickle ran code
        return (open, (self.path, "w"))


def test_resume_never_unpickles_a_planted_pickle(tmp_path):
    import hashlib
    import pickle

    run_training(tiny_args(tmp_path / "run", max_steps=2), Regression())
    folder, marker = tmp_path / "run/checkpoint-2", tmp_path / "code-ran"
    planted = pickle.dumps(_RunsCode(marker))
    (folder / "custom_checkpoint_0.pkl").write_bytes(planted)  # as Accelerate's pickled EMA state was named
    info = json.loads((folder / "COMPLETE").read_text())
    info["files"]["custom_checkpoint_0.pkl"] = {"size": len(planted), "sha256": hashlib.sha256(planted).hexdigest()}
    (folder / "COMPLETE").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="no usable checkpoint"):
        run_training(tiny_args(tmp_path / "run", resume=str(folder), max_steps=4), Regression())
    (folder / "custom_checkpoint_0.pkl").unlink()
    torch.save({"state": {}, "param_groups": [_RunsCode(marker)]}, folder / "optimizer.pt")
    data = (folder / "optimizer.pt").read_bytes()
    info["files"].pop("custom_checkpoint_0.pkl")
    info["files"]["optimizer.pt"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / "COMPLETE").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="no usable checkpoint"):
        run_training(tiny_args(tmp_path / "run", resume="latest", max_steps=4), Regression())
    assert not marker.exists()


def test_a_used_output_dir_is_refused_and_overwrite_keeps_the_old_run_until_replaced(tmp_path):
    out = tmp_path / "out"
    run_training(tiny_args(out, max_steps=2), Regression())
    old_final = (out / "final.json").read_text()
    with pytest.raises(ValueError, match="already holds a run .*--resume latest.*--overwrite_output_dir"):
        run_training(tiny_args(out, max_steps=2), Regression())

    def crash(step, output_dir):  # dies before its first checkpoint
        raise RuntimeError("crash")

    with pytest.raises(RuntimeError, match="crash"):
        run_training(tiny_args(out, max_steps=2, overwrite_output_dir=True), Regression(hook=crash))
    kept = list((out / ".previous-run").glob("*/final.json"))
    assert len(kept) == 1 and kept[0].read_text() == old_final  # the old run survives the failed replacement

    seen = []

    def check(step, output_dir):
        seen.append((step, len(list(Path(output_dir, ".previous-run").glob("*/final.json")))))

    result = run_training(tiny_args(out, max_steps=4, overwrite_output_dir=True), Regression(hook=check))
    # the old files were kept through the first two steps, until checkpoint-2 was complete
    assert seen == [(0, 1), (1, 1), (2, 0), (3, 0)]
    assert result["step"] == 4 and not (out / ".previous-run").exists()
    assert json.loads((out / "final.json").read_text())["step"] == 4
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]


def test_a_second_run_is_refused_while_the_lock_is_held(tmp_path):
    out = tmp_path / "out"
    holder = lock_output_dir(out, "the-other-run")
    try:
        with pytest.raises(ValueError, match=f'in use by another run .*"pid": {os.getpid()}.*the-other-run'):
            run_training(tiny_args(out, max_steps=2), Regression())
    finally:
        holder.close()
    assert run_training(tiny_args(out, max_steps=2), Regression())["step"] == 2  # free again


def test_bad_arguments_fail_before_anything_runs(tmp_path):
    for field, value, message in [("max_steps", -5, "`max_steps` must be an int >= 1"),
                                  ("save_every", 0, "`save_every` must be an int >= 1"),
                                  ("lr_scheduler", "linear", "`lr_scheduler` must be one of"),
                                  ("mixed_precision", "fp32", "`mixed_precision` must be null")]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            run_training(tiny_args(tmp_path / "out", **{field: value}), Regression())
    with pytest.raises(ValueError, match="exclude each other"):
        run_training(tiny_args(tmp_path / "out", resume="latest", overwrite_output_dir=True), Regression())
    assert not (tmp_path / "out").exists()


def test_sigterm_in_a_real_subprocess_saves_a_checkpoint_and_resume_completes(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from tests.training.test_loop import _cli; _cli(sys.argv[1])", str(out)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    metrics = out / "logs/tiny/metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-2000:]
    checkpoints = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    assert len(checkpoints) == 1 and 3 <= checkpoints[0] < 10_000  # save_every is 10000: the signal's checkpoint
    assert f"stopped by SIGTERM at step {checkpoints[0]}" in stderr and "--resume latest" in stderr
    result = run_training(
        tiny_args(out, resume="latest", max_steps=checkpoints[0] + 2, save_every=10_000, eval_every=10_000),
        Regression(),
    )
    assert result["step"] == checkpoints[0] + 2


def test_sigint_stops_at_the_step_boundary_with_130_and_resume_is_exact(tmp_path):
    def interrupt(step, output_dir):
        if step == 2:  # a real SIGINT (Ctrl-C) in the middle of step 3
            os.kill(os.getpid(), signal.SIGINT)

    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN in a job started in the background
    with pytest.raises(SystemExit) as stopped:
        run_training(tiny_args(tmp_path / "run", save_every=100, eval_every=100), Regression(hook=interrupt))
    assert stopped.value.code == 130
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-3"]
    assert not (tmp_path / "run/final.json").exists()
    assert signal.getsignal(signal.SIGINT) is before  # the handlers are given back
    run_training(tiny_args(tmp_path / "run", resume="latest", save_every=100, eval_every=100), Regression())
    run_training(tiny_args(tmp_path / "full", save_every=100, eval_every=100), Regression())
    for a, b in zip(_weights(tmp_path / "full/checkpoint-6"), _weights(tmp_path / "run/checkpoint-6")):
        assert _same(a, b)


def _cli(out: str) -> None:
    """The run the signal test interrupts: 10000 slow steps, no checkpoint of its own before the signal."""
    run_training(tiny_args(out, max_steps=10_000, save_every=10_000, eval_every=10_000), Regression(sleep=0.02))


@pytest.fixture
def fresh_accelerate_state():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_mixed_precision_none_follows_accelerate_launch(tmp_path, monkeypatch, fresh_accelerate_state):
    # `accelerate launch --mixed_precision bf16` sets ACCELERATE_MIXED_PRECISION for the script
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    task = Regression()
    result = run_training(tiny_args(tmp_path / "bf16", max_steps=2), task)
    assert result["step"] == 2 and task.net.autocast_seen[0] == (True, torch.bfloat16)
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    task = Regression()
    run_training(tiny_args(tmp_path / "fp32", max_steps=2, mixed_precision="no"), task)  # an explicit value wins
    assert not task.net.autocast_seen[0][0]


def test_fused_optimizer_skips_a_non_finite_step_on_the_device_like_the_host_check(tmp_path, caplog):
    # fused AdamW (CPU has the kernel too) skips the NaN step through found_inf, without reading the flag per step;
    # foreach AdamW skips it on the host: the same step is skipped, reported, and the weights agree
    runs = {}
    for fused in (True, False):
        out = tmp_path / str(fused)
        with caplog.at_level(logging.WARNING, logger="unipre3d_hf.training"):
            caplog.clear()
            history = run_training(
                tiny_args(out, fused_optimizer=fused, nan_grad_step=3, save_every=2, max_steps=4, log_every=4),
                Regression(),
            )
        assert history["skipped_steps"] == 1
        assert "step 3: non-finite gradient, step skipped" in caplog.text
        runs[fused] = _weights(out / "checkpoint-4")[0], _weights(out / "checkpoint-2")[0]
        step2, step4 = runs[fused][1], runs[fused][0]
        assert all(torch.isfinite(v).all() for v in step4.values())
        assert not _same(step2, step4)  # step 4 trained
    for k in runs[True][0]:
        torch.testing.assert_close(runs[True][0][k], runs[False][0][k], rtol=1e-5, atol=1e-6)


def test_torch_compile_trains_the_compiled_model_to_the_same_weights(tmp_path):
    # torch_compile goes through TrainingTask.compile_model (Module.compile in place: same parameters and state-dict
    # names); the "eager" backend runs dynamo's captured graphs with eager kernels, so the weights agree exactly
    class Tracked(Regression):
        def compile_model(self, model, mode, backend):
            self.compiled_with = (mode, backend)
            return super().compile_model(model, mode, backend)

    task = Tracked()
    run_training(tiny_args(tmp_path / "c", max_steps=2, torch_compile=True, torch_compile_backend="eager"), task)
    run_training(tiny_args(tmp_path / "e", max_steps=2), Regression())
    assert task.compiled_with == (None, "eager") and task.net._compiled_call_impl is not None
    for a, b in zip(_weights(tmp_path / "c/checkpoint-2"), _weights(tmp_path / "e/checkpoint-2")):
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="torch_compile_mode"):
        run_training(tiny_args(tmp_path / "bad", torch_compile_mode="fastest"), Regression())
