import json
import subprocess
import sys

import numpy as np
import torch
from accelerate import Accelerator

from unipre3d_hf.training import JSONLinesTracker, build_trackers


def test_jsonl_tracker_through_accelerator(tmp_path):
    trackers = build_trackers(tmp_path / "logs", run_name="run1")
    assert isinstance(trackers[0], JSONLinesTracker) and trackers[0].name == "jsonl"
    accelerator = Accelerator(cpu=True, log_with=trackers[:1], project_dir=tmp_path)  # tensorboard (if any) aside
    accelerator.init_trackers("run1", config={"lr": 1e-4, "out": tmp_path, "iters": 10})
    accelerator.log({"loss": torch.tensor(0.25), "psnr": np.float32(21.5), "lr": 1e-4, "note": "x"}, step=3)
    accelerator.log({"loss": float("nan"), "hist": torch.tensor([1.0, 2.0])}, step=4)
    tracker = accelerator.get_tracker("jsonl", unwrap=False)
    path = tracker.metrics_path
    assert path == tmp_path / "logs" / "run1" / "metrics.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]  # readable before end_training: flushed
    assert len(lines) == 2
    assert {k: lines[0][k] for k in ("step", "loss", "psnr", "lr", "note")} == {
        "step": 3,
        "loss": 0.25,
        "psnr": 21.5,
        "lr": 1e-4,
        "note": "x",
    }
    assert lines[1]["loss"] == "nan" and lines[1]["hist"] == [1.0, 2.0] and lines[1]["step"] == 4
    config = json.loads((tmp_path / "logs" / "run1" / "config.json").read_text())
    assert config == {"lr": 1e-4, "out": str(tmp_path), "iters": 10}
    accelerator.end_training()
    assert tracker.tracker is None


def test_build_trackers_adds_tensorboard_only_when_installed(tmp_path, monkeypatch):
    import accelerate.utils

    monkeypatch.setattr(accelerate.utils, "is_tensorboard_available", lambda: False)
    assert [getattr(t, "name", t) for t in build_trackers(tmp_path)] == ["jsonl"]
    monkeypatch.setattr(accelerate.utils, "is_tensorboard_available", lambda: True)
    assert [getattr(t, "name", t) for t in build_trackers(tmp_path)] == ["jsonl", "tensorboard"]


def test_importing_training_never_tries_optional_packages():
    # pretend the optional packages are installed (availability probes may look), and record any real import
    code = """
import importlib.machinery, sys
executed = []
class Loader:
    def create_module(self, spec):
        return None
    def exec_module(self, module):
        executed.append(module.__name__)
        raise ImportError("blocked")
class Finder:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorboard", "tensorboardX", "lpips"):
            return importlib.machinery.ModuleSpec(name, Loader())
        return None
sys.meta_path.insert(0, Finder())
import unipre3d_hf.training
print(executed)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
