"""scripts/pretrain.py (the shared loop of unipre3d_hf.training.loop with the pre-training task) end to end on tiny
data: a run, exact resume, a corrupt sample, the scene level, and two processes (gloo) ending with identical weights."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("pybullet")

from unipre3d_hf.data import build_objects_mini, build_scenes_mini, load_pretraining_dataset  # noqa: E402
from unipre3d_hf.testing_utils import load_script  # noqa: E402
from unipre3d_hf.training.pretrain import parse_pretrain_arguments, per_view_render  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "pretrain.py"
pretrain = load_script("pretrain")

TINY_POINTMLP = (
    "--backbone.embed_dim 8 --backbone.dim_expansion [2] --backbone.reducers [2] --backbone.k_neighbors [8] "
    "--backbone.pre_blocks [1] --backbone.pos_blocks [1] --backbone.decoder_dims [16] --backbone.decoder_blocks [1]"
).split()


@pytest.fixture(scope="module")
def objects(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "objects"
    build_objects_mini(str(path), num_objects=2, poses=2, views=5, image_size=32, num_points=128, seed=1,
                       show_progress=False)  # fmt: skip
    return str(path)


def object_args(dataset: str, out: Path, *extra: str) -> list[str]:
    return [
        "--preset", "pointmlp_shapenet", *TINY_POINTMLP,
        "--model.image_encoder", "conv", "--model.image_encoder_channels", "8", "--model.initial_scale", "0.05",
        "--model.lambda_lpips", "0", "--dataset", dataset, "--num_points", "64", "--point_sampling", "first",
        "--image_size", "16", "--batch_size", "2", "--learning_rate", "1e-3", "--output_dir", str(out),
        "--log_every", "1", "--eval_every", "100", "--eval_at_start", "false", "--val_samples", "1", "--val_views", "2",
        "--ema_update_every", "1", "--ema_update_after_step", "1", "--seed", "3", *extra,
    ]  # fmt: skip


def test_run_writes_everything_and_resume_is_exact(objects, tmp_path):
    full = pretrain.main(object_args(objects, tmp_path / "full", "--max_steps", "4", "--save_every", "2"))
    assert full["step"] == 4 and full["skipped_steps"] == 0 and full["final"]["val/psnr_novel"] > 0
    assert "val/lpips_novel" not in full["final"]  # no LPIPS term (lambda_lpips 0), so no validation LPIPS either
    for name in ("backbone/config.json", "best/best.json", "checkpoint-4/COMPLETE", "final.json",
                 "logs/pretrain/metrics.jsonl", "renders/step-0000004.png"):  # fmt: skip
        assert (tmp_path / "full" / name).exists(), name
    lines = (tmp_path / "full/logs/pretrain/metrics.jsonl").read_text().splitlines()
    assert sum('"train/loss"' in line for line in lines) == 4
    first = next(json.loads(line) for line in lines if '"train/loss"' in line)
    assert first["train/gaussian_scale"] > 0 and 0 < first["train/gaussian_opacity"] < 1
    assert 0 <= first["train/data_time"] < first["train/step_time"]
    # stop at step 2, then resume from the latest checkpoint: the same weights, optimizer and EMA as the full run
    pretrain.main(object_args(objects, tmp_path / "part", "--max_steps", "2", "--save_every", "2"))
    resumed = pretrain.main(
        object_args(objects, tmp_path / "part", "--max_steps", "4", "--save_every", "2", "--resume", "latest")
    )
    assert resumed["step"] == 4
    a = load_file(tmp_path / "full/checkpoint-4/model.safetensors")
    b = load_file(tmp_path / "part/checkpoint-4/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ema_a = load_file(tmp_path / "full/checkpoint-4/ema.safetensors")
    ema_b = load_file(tmp_path / "part/checkpoint-4/ema.safetensors")
    state_a, state_b = (
        json.loads((tmp_path / f"{r}/checkpoint-4/trainer_state.json").read_text()) for r in ("full", "part")
    )
    assert state_a["ema"]["step"] == state_b["ema"]["step"] == 4 and state_a["step"] == state_b["step"] == 4
    assert ema_a.keys() == ema_b.keys() and all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    opt_a = torch.load(tmp_path / "full/checkpoint-4/optimizer.pt", weights_only=True)
    opt_b = torch.load(tmp_path / "part/checkpoint-4/optimizer.pt", weights_only=True)
    assert all(torch.equal(opt_a["state"][i]["exp_avg_sq"], opt_b["state"][i]["exp_avg_sq"]) for i in opt_a["state"])
    # the exported backbone is the EMA backbone and loads with AutoModel
    from transformers import AutoModel

    backbone = AutoModel.from_pretrained(tmp_path / "full" / "backbone")
    ema_backbone = {k[len("backbone.") :]: v for k, v in ema_a.items() if k.startswith("backbone.")}
    assert all(torch.equal(v, ema_backbone[k]) for k, v in backbone.state_dict().items())


def test_gradient_accumulation_steps_once_per_accumulated_batch(objects, tmp_path, monkeypatch):
    from unipre3d_hf import UniPre3DForGaussianPretraining

    micro_batches, steps = [], []
    forward, step = UniPre3DForGaussianPretraining.forward, torch.optim.AdamW.step

    def counting_forward(self, *args, **kwargs):
        if self.training:
            micro_batches.append(kwargs["points"].shape[0])
        return forward(self, *args, **kwargs)

    def counting_step(self, *args, **kwargs):
        steps.append([p.grad.clone() for group in self.param_groups for p in group["params"] if p.grad is not None])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(UniPre3DForGaussianPretraining, "forward", counting_forward)
    monkeypatch.setattr(torch.optim.AdamW, "step", counting_step)
    args = object_args(objects, tmp_path / "out", "--max_steps", "3", "--gradient_accumulation_steps", "2")
    result = pretrain.main([*args, "--lr_step_size", "2", "--lr_gamma", "0.5"])
    # batch_size (2) is global: 2 micro-batches of 1 per optimizer step; the schedule counts optimizer steps
    assert result["step"] == 3 and micro_batches == [1] * 6 and len(steps) == 3
    assert all(g and all(torch.isfinite(t).all() for t in g) for g in steps)
    lines = [json.loads(x) for x in (tmp_path / "out/logs/pretrain/metrics.jsonl").read_text().splitlines()]
    assert [line["train/lr"] for line in lines if "train/lr" in line] == [1e-3, 5e-4, 5e-4]


class _LPIPSStandIn(torch.nn.Module):
    """Stands in for ``lpips.LPIPS`` (whose VGG weights need a download): the mean absolute difference per image of
    the [-1, 1] inputs, shaped ``[N, 1, 1, 1]`` like the real one."""

    def __init__(self, net, verbose):
        super().__init__()
        self.net = net

    def forward(self, a, b):
        assert a.min() >= -1 - 1e-6  # images in [0, 1] mapped to [-1, 1] (renders have no upper clamp)
        return (a - b).abs().mean(dim=(1, 2, 3), keepdim=True)


def test_validation_scores_lpips_when_asked(objects, tmp_path, monkeypatch):
    import types

    fake = types.ModuleType("lpips")
    fake.LPIPS = _LPIPSStandIn
    monkeypatch.setitem(sys.modules, "lpips", fake)
    monkeypatch.setattr("unipre3d_hf.utils.import_utils._is_package_available", lambda name: True)
    args = object_args(objects, tmp_path / "out", "--max_steps", "2", "--val_lpips", "true", "--eval_at_start", "true")
    result = pretrain.main(args)
    for when in ("initial", "final"):
        for kind in ("reference", "novel"):
            assert 0 < result[when][f"val/lpips_{kind}"] < 2, (when, kind)
    lines = [json.loads(x) for x in (tmp_path / "out/logs/pretrain/metrics.jsonl").read_text().splitlines()]
    assert sum("val/lpips_novel" in line for line in lines) == 2


def test_validation_lpips_fails_at_the_start_without_lpips(objects, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "lpips", None)
    monkeypatch.setattr("unipre3d_hf.utils.import_utils._is_package_available", lambda name: name != "lpips")
    with pytest.raises(ImportError, match="pip install lpips"):
        pretrain.main(object_args(objects, tmp_path / "out", "--max_steps", "2", "--val_lpips", "true"))
    assert not (tmp_path / "out/logs/pretrain/metrics.jsonl").exists()


def test_corrupt_sample_is_reported_and_skipped(objects, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(objects, broken)
    shard = sorted((broken / "data").glob("train-*.parquet"))[0]
    rows = pq.read_table(shard).to_pylist()
    rows[0]["images"][0]["bytes"] = b"not a png"
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(shard)), shard)
    # (no repeats within an epoch: with 4 rows, both rows of a batch could be the corrupt one, which stops the run)
    result = pretrain.main(
        object_args(
            str(broken), tmp_path / "out", "--max_steps", "4", "--save_every", "4", "--min_batches_per_epoch", "1"
        )
    )
    assert result["step"] == 4
    assert result["skipped_samples"] and all(sid == rows[0]["id"] for sid, _ in result["skipped_samples"])


def test_scene_level_runs_end_to_end(tmp_path):
    scenes = tmp_path / "scenes"
    build_scenes_mini(str(scenes), num_scenes=3, frames=8, width=32, height=24, voxel_size=0.05, seed=1,
                      show_progress=False)  # fmt: skip
    result = pretrain.main([
        "--preset", "sparse_unet_scannet", "--backbone.base_channels", "8",
        "--backbone.channels", "[8, 16, 16, 16, 16, 16, 8, 8]", "--backbone.layers", "[1, 1, 1, 1, 1, 1, 1, 1]",
        "--model.image_encoder", "conv", "--model.image_encoder_channels", "8", "--model.initial_scale", "0.02",
        "--model.lambda_lpips", "0", "--dataset", str(scenes), "--val_split", "train", "--num_reference", "2",
        "--batch_size", "2", "--max_steps", "3", "--output_dir", str(tmp_path / "out"), "--log_every", "1",
        "--eval_every", "3", "--save_every", "3", "--val_samples", "1",
    ])  # fmt: skip
    assert result["step"] == 3 and result["final"]["val/psnr_novel"] > 0
    assert (tmp_path / "out/backbone/config.json").exists()
    # strict JSON: scenes score no reference views, and their NaN averages are written as "nan"
    final = json.loads((tmp_path / "out/final.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert final["final"]["val/psnr_reference"] == "nan" and final["final"]["val/psnr_novel"] > 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_two_processes(script_args: list[str]) -> None:
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    if accelerate is None:
        pytest.skip("the accelerate command line is not installed next to this Python")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()), str(SCRIPT),
           *script_args]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_two_processes_end_with_identical_weights_and_skip_a_bad_step_together(objects, tmp_path):
    # gloo on CPU; at step 2 only the main process sees a NaN gradient: both must skip that step, and not hang
    _launch_two_processes(
        object_args(objects, tmp_path / "ddp", "--max_steps", "3", "--save_every", "3", "--nan_grad_step", "2")
    )
    final = json.loads((tmp_path / "ddp" / "final.json").read_text())
    assert final["step"] == 3 and final["skipped_steps"] == 1 and len(final["weight_checksums"]) == 2
    assert final["weight_checksums"][0] == final["weight_checksums"][1]


def test_two_processes_on_scenes_of_uneven_sizes(tmp_path):
    scenes = tmp_path / "scenes"
    build_scenes_mini(str(scenes), num_scenes=5, frames=8, width=32, height=24, voxel_size=0.05, seed=2,
                      show_progress=False)  # fmt: skip
    sizes = [len(r["coords"]) for r in load_pretraining_dataset(str(scenes), split="train")]
    assert len(set(sizes)) > 1  # the scenes differ in size
    _launch_two_processes([
        "--preset", "sparse_unet_scannet", "--backbone.base_channels", "8",
        "--backbone.channels", "[8, 16, 16, 16, 16, 16, 8, 8]", "--backbone.layers", "[1, 1, 1, 1, 1, 1, 1, 1]",
        "--model.image_encoder", "conv", "--model.image_encoder_channels", "8", "--model.initial_scale", "0.02",
        "--model.lambda_lpips", "0", "--dataset", str(scenes), "--num_reference", "2", "--batch_size", "2",
        "--max_steps", "3", "--output_dir", str(tmp_path / "out"), "--eval_every", "3", "--save_every", "3",
        "--val_samples", "2",
    ])  # fmt: skip
    final = json.loads((tmp_path / "out" / "final.json").read_text())
    assert final["step"] == 3 and final["weight_checksums"][0] == final["weight_checksums"][1]


@pytest.mark.parametrize("preset", sorted(p.stem for p in (ROOT / "configs" / "pretrain").glob("*.yaml")))
def test_presets_parse_into_valid_configs(preset):
    from unipre3d_hf import UniPre3DConfig

    args = parse_pretrain_arguments(["--config", str(ROOT / "configs" / "pretrain" / f"{preset}.yaml")])
    config = UniPre3DConfig.from_preset(args.preset, backbone_kwargs=args.backbone, **args.model)
    assert config.level == ("object" if args.preset.endswith("shapenet") else "scene")
    assert args.batch_size >= 1 and args.max_steps >= 1
    if preset.endswith(("_shapenet", "_scannet")):  # the paper's setups and schedules (method reference 7.6)
        assert config.image_encoder == "sd-vae" and args.learning_rate == 1e-4 and args.adam_epsilon == 1e-15
        assert (args.lr_step_size, args.lr_gamma, args.max_steps) in ((20_000, 0.8, 100_000), (10_000, 0.9, 60_000))


def test_per_view_render_loop_matches_batched_rendering():
    from tests.models.test_pretraining import object_batch
    from unipre3d_hf.rendering import Cameras, Gaussians, render

    batch = object_batch(batch=2, num_points=32, size=12, targets=3)
    g = torch.Generator().manual_seed(0)
    gaussians = Gaussians(
        batch["points"], torch.randn(2, 32, 4, generator=g), torch.full((2, 32, 3), 0.05),
        torch.rand(2, 32, generator=g), torch.randn(2, 32, 4, 3, generator=g) * 0.3,
    )  # fmt: skip
    cameras = Cameras.from_camera_to_world(batch["target_c2w"], batch["target_intrinsics"], 12, 12)
    background = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    batched = render(gaussians, cameras, background, backend="torch")
    looped = per_view_render(gaussians, cameras, background, backend="torch")
    assert looped.colors.shape == batched.colors.shape == (2, 3, 12, 12, 3)
    assert torch.allclose(looped.colors, batched.colors, atol=1e-5)
    assert torch.allclose(looped.alphas, batched.alphas, atol=1e-5)
