"""`scripts/benchmark.py step` on CPU at tiny sizes (issue 17): one object preset as baseline, levers and compiled rows
and one scene preset, through the training loop's own step: their JSON keys, the levers each row says it ran with,
positive times (no speed is asserted), and the variants the flags ask for."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

pytest.importorskip("pybullet")

from unipre3d_hf.data import build_objects_mini, build_scenes_mini  # noqa: E402
from unipre3d_hf.testing_utils import load_script  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
benchmark = load_script("benchmark")

QUICK = ["--device", "cpu", "--steps", "1", "--warmup", "0", "--profile-steps", "1"]
TINY_IMAGES = ["--model.image_encoder", "conv", "--model.image_encoder_channels", "8", "--model.lambda_lpips", "0"]
TIMES = ("step_ms", "backbone_ms", "render_ms", "image_encoder_ms", "optimizer_ms", "copy_ms")


def _rows(tmp_path, argv):
    out = tmp_path / "step.json"
    benchmark.main(["step", *argv, "--json", str(out)])
    written = json.loads(out.read_text())
    assert written["command"] and written["environment"]["torch"]
    return written["results"]


def test_object_step_compares_baseline_levers_and_compiled(tmp_path):
    data = tmp_path / "objects"
    build_objects_mini(str(data), num_objects=2, poses=2, views=5, image_size=32, num_points=128, seed=1,
                       show_progress=False)  # fmt: skip
    rows = _rows(tmp_path, [
        "--preset", "pointmlp", "--dataset", str(data), "--compare-baseline", "--compile", *QUICK, *TINY_IMAGES,
        "--backbone.embed_dim", "8", "--backbone.dim_expansion", "[2]", "--backbone.reducers", "[2]",
        "--backbone.k_neighbors", "[8]", "--backbone.pre_blocks", "[1]", "--backbone.pos_blocks", "[1]",
        "--backbone.decoder_dims", "[16]", "--backbone.decoder_blocks", "[1]", "--model.initial_scale", "0.05",
        "--num_points", "64", "--point_sampling", "first", "--image_size", "16", "--batch_size", "2",
        "--torch_compile_backend", "eager",  # dynamo's graph capture without inductor's code generation
    ])  # fmt: skip
    baseline, levers, compiled, *ratios = rows
    assert [r["variant"] for r in rows[:3]] == ["baseline", "levers", "levers+compile"]
    for row in (baseline, levers, compiled):
        assert row["config"] == "pointmlp_shapenet" and row["batch"] == 2 and row["points"] == 64
        assert (row["reference_views"], row["target_views"], row["image_size"]) == (1, 4, [16, 16])
        assert all(row[k] > 0 for k in TIMES), row
        assert row["aten_ops_per_step"] > 100 and row["host_syncs_per_step"] >= 0
        # CPU: the profiled steps split into time inside ATen ops and the host's time outside them
        assert row["aten_ms_per_step"] > 0 and row["host_ms_per_step"] >= 0
        # CPU: no fused AdamW (foreach), so the non-finite check reads the flag on the host; nothing is pinned
        assert row["levers"]["fused_adamw"] is False and row["levers"]["nonfinite_skip"] == "host"
        assert row["levers"]["pinned_copies"] is False and row["levers"]["image_encoder_dtype"] is None  # conv
    assert [r["levers"]["fused_sampling"] for r in (baseline, levers, compiled)] == [False, True, True]
    assert [r["levers"]["compile"] for r in (baseline, levers, compiled)] == [False, False, "default"]
    assert [(r["benchmark"], r["variant"]) for r in ratios] == [
        ("step-ratio", "levers"),
        ("step-ratio", "levers+compile"),
    ]
    for ratio, row in zip(ratios, (levers, compiled)):
        assert ratio["speedup"] == pytest.approx(baseline["step_ms"] / row["step_ms"])


@pytest.mark.parametrize(
    "flags, expected",
    [
        ([], [("levers", ["--torch_compile", "false"])]),
        (["--compile"], [("levers+compile", ["--torch_compile", "true"])]),
        (["--compare-baseline"], [("baseline", benchmark.BASELINE_ARGS), ("levers", ["--torch_compile", "false"])]),
        (
            ["--compare-baseline", "--compile", "--compile-mode", "reduce-overhead"],
            [
                ("baseline", benchmark.BASELINE_ARGS), ("levers", ["--torch_compile", "false"]),
                ("levers+compile", ["--torch_compile", "true", "--torch_compile_mode", "reduce-overhead"]),
            ],
        ),
    ],
)  # fmt: skip
def test_step_variants_say_which_levers_are_on(flags, expected):
    parser = argparse.ArgumentParser()
    parser.add_argument("--compare-baseline", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--compile-mode", default=None)
    variants = benchmark._step_variants(parser.parse_args(flags))
    assert variants == expected
    # the baseline turns every lever off, compile included
    assert all("--torch_compile" in tail for _, tail in variants)


def test_scene_step_runs_one_variant(tmp_path):
    data = tmp_path / "scenes"
    build_scenes_mini(str(data), num_scenes=1, frames=4, width=32, height=24, voxel_size=0.05, seed=1,
                      show_progress=False)  # fmt: skip
    (row,) = _rows(tmp_path, [
        "--preset", "sparse_unet", "--dataset", str(data), "--scenes", "1", *QUICK, *TINY_IMAGES,
        "--backbone.base_channels", "8", "--backbone.channels", "[8, 16, 16, 16, 16, 16, 8, 8]",
        "--backbone.layers", "[1, 1, 1, 1, 1, 1, 1, 1]", "--model.initial_scale", "0.02", "--num_reference", "2",
    ])  # fmt: skip
    assert row["variant"] == "levers" and row["config"] == "sparse_unet_scannet" and row["batch"] == 1
    assert row["reference_views"] == row["target_views"] == 2 and row["image_size"] == [24, 32]
    assert row["points"] > 100 and all(row[k] > 0 for k in TIMES), row


def test_step_refuses_unknown_options_of_other_benchmarks():
    with pytest.raises(SystemExit):
        benchmark.main(["render", "--not-an-option", "1"])
