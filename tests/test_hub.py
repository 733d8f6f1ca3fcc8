"""The Hub release path: every card of hub_cards/ parses and its model-index validates; export_for_hub writes a folder
whose card carries the model's own numbers; and an exported folder laid into a Hugging Face cache loads offline in a
fresh process, with `import unipre3d_hf` and with trust_remote_code=True alone, and fails with the pip line when the
package can't be imported."""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import DatasetCard, ModelCard, metadata_load
from huggingface_hub.repocard_data import model_index_to_eval_results
from safetensors.torch import load_file, save_file

import unipre3d_hf
from tests.models.object_backbone_common import make_points
from tests.models.scene_backbone_checks import two_scenes
from tests.models.test_pretraining import OBJECT_BACKBONES, SCENE_BACKBONES
from unipre3d_hf import AutoModelForPointCloudClassification, AutoModelForPointCloudSegmentation
from unipre3d_hf.hub import CARD_MARKER, HUB_NAMES, add_to_hf_cache, export_for_hub
from unipre3d_hf.testing_utils import load_script

ROOT = Path(__file__).resolve().parents[1]
CARDS = ROOT / "hub_cards"

# the paper's figures (UniPre3D README model zoo; method reference 12.1): card -> {(dataset type, metric type): value}
PAPER_RESULTS = {
    "pointmlp": {("scanobjectnn", "accuracy"): 89.5, ("shapenetpart", "mean_iou_class"): 85.5},
    "point-transformer": {("scanobjectnn", "accuracy"): 87.93},
    "mamba3d": {("scanobjectnn", "accuracy"): 93.4},
    "pcm": {("scanobjectnn", "accuracy"): 89.0},
    "sparse-unet": {
        ("scannet", "mean_iou"): 75.8,
        ("scannet200", "mean_iou"): 33.0,
        ("s3dis", "mean_iou"): 71.5,
        ("scannet", "map_25"): 75.9,
        ("scannet200", "map_25"): 37.1,
    },
    "ptv3": {("scannet", "mean_iou"): 76.6, ("scannet200", "mean_iou"): 36.0},
}


@pytest.mark.parametrize("name", sorted(PAPER_RESULTS))
def test_every_model_card_parses_and_holds_the_papers_figures(name):
    path = CARDS / f"{name}.md"
    card = ModelCard.load(path)  # parses the YAML and validates the model-index (raises otherwise)
    assert card.data.library_name == "unipre3d_hf" and card.data.license and "point-cloud" in card.data.tags
    assert card.data.datasets
    model_name, results = model_index_to_eval_results(metadata_load(path)["model-index"])
    assert model_name == f"unipre3d/{name}"
    found = {(r.dataset_type, r.metric_type): r.metric_value for r in results}
    assert found == PAPER_RESULTS[name]
    for r in results:  # labelled as the paper's figures, with the source
        assert "paper's figure" in r.metric_name and "github.com/wangzy22/UniPre3D" in r.source_url
    assert {(r.dataset_type, r.metric_type): r.metric_value for r in card.data.eval_results} == found
    text = card.text
    model_type = next(t for t, n in HUB_NAMES.items() if n == name)
    backbone = model_type.removeprefix("unipre3d_")
    preset = re.search(r"configs/pretrain/(\w+)\.yaml", text).group(1)
    assert (ROOT / "configs" / "pretrain" / f"{preset}.yaml").is_file()
    for snippet in (
        f'AutoModel.from_pretrained("unipre3d/{name}")',
        f'AutoModel.from_pretrained("unipre3d/{name}", trust_remote_code=True)',
        "AutoModelForPointCloudSegmentation.from_pretrained(",
        f"accelerate launch scripts/pretrain.py --config configs/pretrain/{preset}.yaml",
        f"python scripts/convert_checkpoint.py --checkpoint FILE.pth --backbone {backbone} --output_dir",
        "## Training data", "## Limitations", "@inproceedings{wang2025unipre3d", CARD_MARKER,
    ):  # fmt: skip
        assert snippet in text, snippet
    if model_type in ("unipre3d_sparse_unet", "unipre3d_ptv3"):
        assert "AutoModelForPointCloudClassification" not in text  # scene backbones have no classifier
    else:
        assert "AutoModelForPointCloudClassification.from_pretrained(" in text
    for value in found.values():  # the body's table repeats the metadata
        assert f"{value} %" in text


def test_every_released_backbone_has_a_card_and_dataset_cards_parse():
    assert {p.stem for p in CARDS.glob("*.md")} == set(HUB_NAMES.values())
    paths = sorted(glob.glob(str(CARDS / "datasets" / "*.md")))
    assert {Path(p).stem for p in paths} >= {"objects-mini", "scenes-mini", "sweethome3d-objects", "sweethome3d-cls",
                                              "sweethome3d-rooms"}  # fmt: skip
    for path in paths:
        card = DatasetCard.load(path)
        assert card.data.license and card.data.pretty_name == Path(path).stem and "unipre3d" in card.data.tags
        splits = [f["split"] for f in card.data.configs[0]["data_files"]]
        assert splits and all(f["path"] == f"data/{f['split']}-*.parquet" for f in card.data.configs[0]["data_files"])


def tiny_model(kind: str):
    torch.manual_seed(0)
    if kind == "pointmlp-cls":
        config = OBJECT_BACKBONES["pointmlp"]()
        config.num_labels = 4
        return AutoModelForPointCloudClassification.from_config(config).eval()
    config = SCENE_BACKBONES["ptv3"]()
    config.num_labels = 3
    return AutoModelForPointCloudSegmentation.from_config(config).eval()


def pretraining_run(tmp_path: Path) -> Path:
    """A pre-training run's output directory as scripts/pretrain.py leaves it (backbone/, final.json, arguments)."""
    run = tmp_path / "run"
    tiny_model("pointmlp-cls").backbone.save_pretrained(run / "backbone")
    final = {"val/psnr_novel": 22.6512, "val/psnr_reference": 23.5, "val/ssim_novel": 0.81, "val/lpips_novel": "nan"}
    history = {"initial": {"val/psnr_novel": 17.53}, "final": final, "step": 120}
    (run / "final.json").write_text(json.dumps(history))
    (run / "pretrain_args.json").write_text(json.dumps({"preset": "pointmlp_shapenet", "dataset": "objects-mini"}))
    return run


def test_export_of_a_pretraining_run_fills_the_card_with_its_own_numbers(tmp_path):
    script = load_script("export_hub")
    run = pretraining_run(tmp_path)
    # the run's backbone/ given directly (the Quick start's command): the run's numbers are found all the same
    argv = ["--model_dir", str(run / "backbone"), "--output_dir", str(tmp_path / "hub"), "--repo_id", "me/demo"]
    out = Path(script.main(argv))
    assert sorted(os.listdir(out)) == ["README.md", "config.json", "model.safetensors", "pretrain_args.json",
                                       "unipre3d_remote.py"]  # fmt: skip
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "unipre3d_remote.PointMLPConfig",
        "AutoModel": "unipre3d_remote.PointMLPModel",
        "AutoModelForPointCloudClassification": "unipre3d_remote.PointMLPForPointCloudClassification",
        "AutoModelForPointCloudSegmentation": "unipre3d_remote.PointMLPForPointCloudSegmentation",
    }
    saved, exported = load_file(run / "backbone" / "model.safetensors"), load_file(out / "model.safetensors")
    assert saved.keys() == exported.keys() and all(torch.equal(saved[k], exported[k]) for k in saved)
    card = ModelCard.load(out / "README.md")
    metadata = metadata_load(out / "README.md")
    name, results = model_index_to_eval_results(metadata["model-index"])
    assert name == "me/demo" and card.data.license == "other" and card.data.datasets == ["unipre3d/objects-mini"]
    # only this run's finite metrics, labelled as measured here; none of the paper's figures for these weights
    here = ", measured with unipre3d_hf for this upload"
    assert {(r.metric_name, r.metric_value) for r in results} == {
        ("PSNR, novel views (dB)" + here, 22.6512), ("PSNR, reference view (dB)" + here, 23.5),
        ("SSIM, novel views" + here, 0.81),
    }  # fmt: skip
    assert all(r.dataset_type == "objects-mini" and r.dataset_split == "validation" for r in results)
    num_params = sum(p.numel() for p in unipre3d_hf.PointMLPModel.from_pretrained(run / "backbone").parameters())
    assert f"{num_params:,} parameters" in card.text and "| PSNR, novel views (dB) | 17.530 | 22.651 |" in card.text
    assert 'AutoModel.from_pretrained("me/demo")' in card.text and CARD_MARKER not in card.text
    assert "89.5 %" in card.text  # the paper's table stays in the body, labelled as the paper's

    # converted paper weights keep the paper's model-index
    converted = tmp_path / "converted"
    unipre3d_hf.PointMLPModel.from_pretrained(run / "backbone").save_pretrained(converted)
    out = export_for_hub(converted, tmp_path / "hub-paper", card=str(CARDS / "pointmlp.md"), paper_checkpoint=True)
    _, results = model_index_to_eval_results(metadata_load(Path(out) / "README.md")["model-index"])
    assert {(r.dataset_type, r.metric_type): r.metric_value for r in results} == PAPER_RESULTS["pointmlp"]


def test_export_refuses_a_non_empty_output_and_keeps_it_when_an_overwrite_fails(tmp_path, monkeypatch):
    import unipre3d_hf.hub as hub

    model_dir = tmp_path / "model"
    tiny_model("pointmlp-cls").save_pretrained(model_dir)
    out = tmp_path / "hub"
    export_for_hub(model_dir, out)
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_for_hub(model_dir, out)

    def broken(model_type):
        raise RuntimeError("disk full")

    monkeypatch.setattr(hub, "remote_module_text", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        export_for_hub(model_dir, out, overwrite=True)
    assert (out / "model.safetensors").read_bytes() == before and (out / "unipre3d_remote.py").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []
    monkeypatch.undo()
    export_for_hub(model_dir, out, overwrite=True)
    assert json.loads((out / "config.json").read_text())["architectures"] == ["PointMLPForPointCloudClassification"]
    # a folder whose weights don't fill its architecture (a backbone relabelled as a classifier) is refused
    (tmp_path / "partial").mkdir()
    tiny_model("pointmlp-cls").backbone.save_pretrained(tmp_path / "partial")
    config = json.loads((tmp_path / "partial" / "config.json").read_text())
    config["architectures"] = ["PointMLPForPointCloudClassification"]
    (tmp_path / "partial" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="do not fill PointMLPForPointCloudClassification: missing"):
        export_for_hub(tmp_path / "partial", tmp_path / "hub-partial")
    with pytest.raises(ValueError, match="`model_type` must be one of"):
        (tmp_path / "bad").mkdir()
        (tmp_path / "bad" / "config.json").write_text(json.dumps({"model_type": "bert"}))
        export_for_hub(tmp_path / "bad", tmp_path / "hub-bad")


# a fresh process: loads the cached repos offline and saves every output for the parent to compare
CHILD = r"""
import json, sys
mode, inputs_path, outputs_path, resave_dir = sys.argv[1:]
imported_first = "unipre3d_hf" in sys.modules
if mode == "import":
    import unipre3d_hf
    from unipre3d_hf import AutoModelForPointCloudClassification as Cls, AutoModelForPointCloudSegmentation as Seg
kw = {"trust_remote_code": True} if mode == "remote" else {}
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel

config = AutoConfig.from_pretrained("unipre3d/ptv3", **kw)
backbone = AutoModel.from_pretrained("unipre3d/ptv3", **kw)
if mode == "remote":
    from transformers.dynamic_module_utils import get_class_from_dynamic_module
    Seg = get_class_from_dynamic_module("unipre3d_remote.AutoModelForPointCloudSegmentation", "unipre3d/ptv3")
    Cls = get_class_from_dynamic_module("unipre3d_remote.AutoModelForPointCloudClassification", "unipre3d/pointmlp")
segmenter = Seg.from_pretrained("unipre3d/ptv3", **kw)
classifier = Cls.from_pretrained("unipre3d/pointmlp", **kw)
x = load_file(inputs_path)
out = {
    "backbone": backbone(x["coords"], x["features"], x["offsets"]).last_hidden_state,
    "segmentation": segmenter(x["coords"], x["features"], x["offsets"]).logits,
    "classification": classifier(x["points"]).logits,
}
save_file({k: v.detach().contiguous() for k, v in out.items()}, outputs_path)
segmenter.save_pretrained(resave_dir)
classes = [type(m).__module__ + "." + type(m).__name__ for m in (config, backbone, segmenter, classifier)]
print(json.dumps({"imported_first": imported_first, "classes": classes}))
"""

BLOCKED = r"""
import sys
sys.modules["unipre3d_hf"] = None  # the package can't be imported in this process
from transformers import AutoConfig
for kw in ({"trust_remote_code": True}, {}):
    try:
        AutoConfig.from_pretrained("unipre3d/ptv3", **kw)
    except (ImportError, ValueError) as error:
        print("\nRESULT", type(error).__name__, "|", str(error).replace("\n", " "))
"""


def test_exported_folders_load_offline_from_the_hf_cache_in_fresh_processes(tmp_path):
    cache = tmp_path / "cache"
    segmenter, classifier = tiny_model("ptv3-seg"), tiny_model("pointmlp-cls")
    for repo, model in (("unipre3d/ptv3", segmenter), ("unipre3d/pointmlp", classifier)):
        model.save_pretrained(tmp_path / repo)
        export_for_hub(tmp_path / repo, tmp_path / "hub" / repo, card=str(CARDS / f"{repo.split('/')[1]}.md"))
        snapshot = add_to_hf_cache(str(tmp_path / "hub" / repo), repo, str(cache))
        ref = (cache / f"models--{repo.replace('/', '--')}" / "refs" / "main").read_text()
        assert Path(snapshot).name == ref and len(ref) == 40 and (Path(snapshot) / "unipre3d_remote.py").is_file()
    coords, features, offsets = two_scenes(300, 500)
    inputs = {"coords": coords, "features": features, "offsets": offsets, "points": make_points(2, 128, seed=1)}
    save_file(inputs, tmp_path / "inputs.safetensors")
    with torch.no_grad():
        expected = {
            "backbone": segmenter.backbone(coords, features, offsets).last_hidden_state,
            "segmentation": segmenter(coords, features, offsets).logits,
            "classification": classifier(inputs["points"]).logits,
        }
    env = {
        **os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "home"), "HF_HUB_CACHE": str(cache),
        "HF_MODULES_CACHE": str(tmp_path / "modules"), "PYTHONPATH": str(ROOT), "TRANSFORMERS_VERBOSITY": "error",
    }  # fmt: skip
    runs = {}
    for mode in ("import", "remote"):
        args = [sys.executable, "-c", CHILD, mode, str(tmp_path / "inputs.safetensors"),
                str(tmp_path / f"{mode}.safetensors"), str(tmp_path / f"resaved-{mode}")]  # fmt: skip
        runs[mode] = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    runs["blocked"] = subprocess.Popen(
        [sys.executable, "-c", BLOCKED], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    done = {mode: proc.communicate(timeout=300) for mode, proc in runs.items()}
    for mode, proc in runs.items():
        assert proc.returncode == 0, f"{mode}: {done[mode][1][-3000:]}"

    for mode in ("import", "remote"):
        report = json.loads(done[mode][0].strip().splitlines()[-1])
        assert report["imported_first"] is False  # nothing imported the package before the child's own code
        prefix = "unipre3d_hf." if mode == "import" else "transformers_modules."
        assert all(c.startswith(prefix) for c in report["classes"]), report["classes"]
        assert [c.rsplit(".", 1)[1] for c in report["classes"]] == [
            "PTv3Config", "PTv3Model", "PTv3ForPointCloudSegmentation", "PointMLPForPointCloudClassification"
        ]  # fmt: skip
        got = load_file(tmp_path / f"{mode}.safetensors")
        for key, value in expected.items():
            torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-6, msg=f"{mode} {key}")
    # a model loaded through the remote module saves back with the module and its auto_map
    resaved = tmp_path / "resaved-remote"
    assert (resaved / "unipre3d_remote.py").is_file()
    auto = json.loads((resaved / "config.json").read_text())["auto_map"]
    assert auto["AutoModelForPointCloudSegmentation"] == "unipre3d_remote.PTv3ForPointCloudSegmentation"

    # trust_remote_code=True: the module's ImportError; without it (no stdin to answer the prompt): transformers' ask
    trusted, untrusted = [line for line in done["blocked"][0].splitlines() if line.startswith("RESULT ")]
    assert trusted.startswith("RESULT ImportError |") and "`pip install unipre3d_hf`" in trusted
    assert untrusted.startswith("RESULT ValueError |") and "trust_remote_code=True" in untrusted
