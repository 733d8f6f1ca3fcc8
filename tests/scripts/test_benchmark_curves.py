"""`scripts/benchmark.py curves` on CPU at tiny sizes: the bf16 / fp32 pair of one object preset as two concurrent
`scripts/pretrain.py` processes, the row's keys, finite PSNRs before and after, the difference it reports, and that the
two runs differ only in their precision (no timing is asserted); the rows of a scene pair, a diverged (NaN) run and a
failed run from the files pretrain leaves, and their Markdown table."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("pybullet")

from unipre3d_hf.data import build_objects_mini  # noqa: E402
from unipre3d_hf.testing_utils import load_script  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
benchmark = load_script("benchmark")

TINY_POINTMLP = [
    "--model.image_encoder", "conv", "--model.image_encoder_channels", "8", "--model.lambda_lpips", "0",
    "--backbone.embed_dim", "8", "--backbone.dim_expansion", "[2]", "--backbone.reducers", "[2]",
    "--backbone.k_neighbors", "[8]", "--backbone.pre_blocks", "[1]", "--backbone.pos_blocks", "[1]",
    "--backbone.decoder_dims", "[16]", "--backbone.decoder_blocks", "[1]", "--model.initial_scale", "0.05",
    "--num_points", "64", "--image_size", "16", "--batch_size", "2", "--val_samples", "1", "--val_views", "2",
]  # fmt: skip


def test_curves_runs_the_pair_and_reports_the_difference(tmp_path):
    data = tmp_path / "objects"
    build_objects_mini(str(data), num_objects=2, poses=2, views=5, image_size=32, num_points=128, seed=1,
                       show_progress=False)  # fmt: skip
    out, runs = tmp_path / "curves.json", tmp_path / "runs"
    benchmark.main([
        "curves", "--preset", "pointmlp", "--steps", "2", "--dataset", str(data), "--concurrent", "2",
        "--num-workers", "0", "--output-dir", str(runs), "--json", str(out), *TINY_POINTMLP,
    ])  # fmt: skip
    (row,) = json.loads(out.read_text())["results"]
    assert "error" not in row, row
    assert (row["benchmark"], row["preset"], row["config"], row["steps"]) == ("curves", "pointmlp", "pointmlp_mini", 2)
    for precision in ("fp32", "bf16"):
        run = row[precision]
        assert (run["steps"], run["skipped_steps"]) == (2, 0)
        for metric in ("psnr_novel", "psnr_reference"):
            before, after = run[metric]
            assert math.isfinite(before) and math.isfinite(after) and before > 0 and after > 0, run
        assert (Path(run["output_dir"]) / "final.json").is_file() and Path(run["log"]).is_file()
    # the same untrained model, data and views: the step-0 scores differ only by bf16 rounding
    assert row["bf16"]["psnr_novel"][0] == pytest.approx(row["fp32"]["psnr_novel"][0], abs=0.5)
    for metric in ("psnr_novel", "psnr_reference"):
        assert row["difference_db"][metric] == pytest.approx(row["bf16"][metric][1] - row["fp32"][metric][1])
    assert row["within_tolerance"] == all(abs(d) <= 0.3 for d in row["difference_db"].values())
    # the two runs' arguments differ in their precision and output folder only
    fp32, bf16 = (json.loads((runs / f"pointmlp-{p}" / "training_args.json").read_text()) for p in ("fp32", "bf16"))
    assert (fp32.pop("mixed_precision"), bf16.pop("mixed_precision")) == ("no", "bf16")
    assert fp32.pop("output_dir") != bf16.pop("output_dir") and fp32 == bf16
    assert fp32["max_steps"] == fp32["eval_every"] == 2 and fp32["eval_at_start"] and fp32["dataset"] == str(data)


def test_curves_checks_every_run_argument_before_running(tmp_path):
    runs = tmp_path / "runs"
    with pytest.raises(SystemExit, match="not_a_key"):
        benchmark.main(["curves", "--preset", "pointmlp", "--output-dir", str(runs), "--model.not_a_key", "1"])
    with pytest.raises(SystemExit, match="--preset"):
        benchmark.main(["curves", "--preset", "pointmlp,no_such_preset", "--output-dir", str(runs)])
    assert not runs.exists()


def _fake_run(tmp_path, name: str, initial: dict, final: dict) -> dict:
    """A finished run as pretrain leaves it: its final.json (strict JSON: a NaN metric is "nan") and its log."""
    out = tmp_path / name
    out.mkdir()
    history = {"initial": initial, "final": final, "step": 200, "skipped_steps": 0}
    (out / "final.json").write_text(json.dumps(history))
    (tmp_path / f"{name}.log").write_text("line 1\nTraceback\nRuntimeError: CUDA out of memory | really\n")
    return {"returncode": 0, "seconds": 1.0, "output_dir": str(out), "log": str(tmp_path / f"{name}.log")}


def test_curve_rows_of_a_scene_pair_a_nan_run_and_a_failed_run(tmp_path):
    args = SimpleNamespace(steps=200, seed=0, tolerance=0.3)
    scene = {
        "fp32": _fake_run(tmp_path, "s32", {"val/psnr_novel": 7.95, "val/psnr_reference": "nan"},
                          {"val/psnr_novel": 9.40, "val/psnr_reference": "nan"}),
        "bf16": _fake_run(tmp_path, "s16", {"val/psnr_novel": 7.95}, {"val/psnr_novel": 9.30}),
    }  # fmt: skip
    row = benchmark._curve_row("sparse_unet", args, scene)
    # a scene's validation frames are all novel: no reference PSNR in the row
    assert row["fp32"]["psnr_novel"] == [7.95, 9.40] and "psnr_reference" not in row["fp32"]
    assert row["difference_db"] == {"psnr_novel": pytest.approx(-0.10)} and row["within_tolerance"] is True
    objects = {
        "fp32": _fake_run(tmp_path, "o32", {"val/psnr_novel": 14.6, "val/psnr_reference": 14.7},
                          {"val/psnr_novel": 20.6, "val/psnr_reference": 21.5}),
        "bf16": _fake_run(tmp_path, "o16", {"val/psnr_novel": 14.6, "val/psnr_reference": 14.7},
                          {"val/psnr_novel": "nan", "val/psnr_reference": 21.4}),
    }  # fmt: skip
    diverged = benchmark._curve_row("pcm", args, objects)
    assert math.isnan(diverged["difference_db"]["psnr_novel"]) and diverged["within_tolerance"] is False
    assert diverged["difference_db"]["psnr_reference"] == pytest.approx(-0.1)
    failed = benchmark._curve_row("ptv3", args, {**scene, "bf16": {**scene["bf16"], "returncode": 1}})
    assert "bf16 run exited with 1" in failed["error"] and "CUDA out of memory" in failed["error"]
    table = benchmark._curves_markdown([row, diverged, failed]).splitlines()
    assert len(table) == 5 and all(line.count(" | ") == 5 for line in table[2:4])
    assert table[2] == (
        "| `sparse_unet_mini.yaml` | 200 | novel 7.95 -> 9.40 | novel 7.95 -> 9.30 | -0.10 | yes (0.3 dB) |"
    )
    assert "| no (0.3 dB) |" in table[3] and "failed:" in table[4] and "out of memory \\| really" in table[4]
