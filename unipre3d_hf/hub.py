"""The Hugging Face Hub release path: a saved model folder -> a folder ready for ``huggingface_hub.upload_folder``.

    >>> from unipre3d_hf.hub import export_for_hub
    >>> export_for_hub("outputs/demo_objects", "outputs/hub/demo", card="hub_cards/pointmlp.md")

The exported folder holds ``model.safetensors``, ``config.json`` with an ``auto_map`` that points transformers' Auto
classes at a small module saved beside it (``unipre3d_remote.py``), that module, and a ``README.md`` rendered from a
card of ``hub_cards/`` with the model's own numbers. So on a machine where ``pip install unipre3d_hf`` was run::

    AutoModel.from_pretrained("<repo>")                          # after `import unipre3d_hf`
    AutoModel.from_pretrained("<repo>", trust_remote_code=True)  # no import needed: the module imports the package

and without the package, the module raises an ImportError naming ``pip install unipre3d_hf``. The module holds no
model code: it subclasses the installed package's classes (one line each), so what runs is the package's code, and
a model loaded through it saves back with the same module (transformers copies the file of a remote class).

Without an ``auto_map`` (a plain ``save_pretrained`` folder) nothing in transformers 5.17 .. 5.24 consults this
package before it is imported: ``AutoConfig.from_pretrained`` looks the ``model_type`` up in ``CONFIG_MAPPING`` and
answers a miss with its fixed "does not recognize this architecture" message (``models/auto/configuration_auto.py``),
and transformers discovers no plugins through entry points. The ``auto_map`` written here is the fix.

``add_to_hf_cache`` lays an exported folder into a Hugging Face cache (``models--<org>--<name>/snapshots/<rev>``,
``refs/main``), so that ``from_pretrained("<org>/<name>")`` works offline (``HF_HUB_OFFLINE=1``) on a machine without
access to the Hub.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil

import yaml

REMOTE_MODULE = "unipre3d_remote"
# where a card's "this upload" section goes; a card without the marker gets it after its first heading
CARD_MARKER = "<!-- unipre3d_hf:this-upload -->"

# model_type -> the Hub name of its released model (DESIGN.md, "Names"); the card is hub_cards/<name>.md
HUB_NAMES = {
    "unipre3d_pointmlp": "pointmlp",
    "unipre3d_point_transformer": "point-transformer",
    "unipre3d_mamba3d": "mamba3d",
    "unipre3d_pcm": "pcm",
    "unipre3d_sparse_unet": "sparse-unet",
    "unipre3d_ptv3": "ptv3",
}


def model_classes(model_type: str) -> dict[str, type]:
    """The package classes of a backbone ``model_type``: ``{"AutoConfig": config class, "AutoModel": backbone,
    "AutoModelForPointCloudClassification": ... (object backbones), "AutoModelForPointCloudSegmentation": ...}``."""
    import unipre3d_hf
    from unipre3d_hf.modeling.heads import CLASSIFICATION_MODELS, SEGMENTATION_MODELS

    for _, config_name, _, model_name in unipre3d_hf._AUTO_MODELS:
        config_class = getattr(unipre3d_hf, config_name)
        if config_class.model_type != model_type:
            continue
        classes = {"AutoConfig": config_class, "AutoModel": getattr(unipre3d_hf, model_name)}
        for auto_name, task_models in (
            ("AutoModelForPointCloudClassification", CLASSIFICATION_MODELS),
            ("AutoModelForPointCloudSegmentation", SEGMENTATION_MODELS),
        ):
            for task_model in task_models:
                if task_model.config_class is config_class:
                    classes[auto_name] = task_model
        return classes
    raise ValueError(f"`model_type` must be one of {sorted(HUB_NAMES)} (a unipre3d_hf backbone), got {model_type!r}")


def remote_module_text(model_type: str) -> str:
    """The text of ``unipre3d_remote.py`` for a ``model_type``: a subclass of each package class the ``auto_map``
    names, plus the package's task Auto classes (reachable without importing the package, see the module docstring
    it writes)."""
    from unipre3d_hf import __version__

    classes = model_classes(model_type)
    config_name = classes["AutoConfig"].__name__
    lines = [
        f'"""Hub remote code for a unipre3d_hf `{model_type}` model (written by unipre3d_hf {__version__}).',
        "",
        "It holds no model code: each class below is the installed unipre3d_hf package's class under the name that",
        "config.json's `auto_map` gives, so that `AutoModel.from_pretrained(<repo>, trust_remote_code=True)` works",
        "without `import unipre3d_hf`. The task models' Auto classes, without importing the package:",
        "",
        "    from transformers.dynamic_module_utils import get_class_from_dynamic_module",
        f'    auto = get_class_from_dynamic_module("{REMOTE_MODULE}.AutoModelForPointCloudSegmentation", "<repo>")',
        '    model = auto.from_pretrained("<repo>", trust_remote_code=True)',
        '"""',
        "",
        "try:  # transformers skips imports inside try blocks when it checks a remote module's requirements",
        "    import unipre3d_hf",
        "except ImportError as error:",
        "    raise ImportError(",
        f'        "This model is a unipre3d_hf `{model_type}` model and needs the unipre3d_hf package: "',
        '        "`pip install unipre3d_hf` (install the PyTorch build for your machine first), "',
        '        "then load it again (with `import unipre3d_hf`, or with trust_remote_code=True as now)."',
        "    ) from error",
        "",
        "from transformers import AutoConfig, AutoModel  # noqa: E402",
        "",
        "AutoModelForPointCloudClassification = unipre3d_hf.AutoModelForPointCloudClassification",
        "AutoModelForPointCloudSegmentation = unipre3d_hf.AutoModelForPointCloudSegmentation",
        "",
        "",
        f"class {config_name}(unipre3d_hf.{config_name}):",
        '    _auto_class = "AutoConfig"',
    ]
    registrations = [f"AutoConfig.register({config_name}.model_type, {config_name}, exist_ok=True)"]
    for auto_name, cls in classes.items():
        if auto_name == "AutoConfig":
            continue
        lines += [
            "",
            "",
            f"class {cls.__name__}(unipre3d_hf.{cls.__name__}):",
            f"    config_class = {config_name}",
            f'    _auto_class = "{auto_name}"',
        ]
        registrations.append(f"{auto_name}.register({config_name}, {cls.__name__}, exist_ok=True)")
    lines += [
        "",
        "",
        "# From here on this process builds the classes above for this model type (the package's own classes",
        "# registered at `import unipre3d_hf` would win otherwise), so that a model loaded through this module saves",
        "# back with this module and its `auto_map` (`_auto_class`: transformers copies the file of such a class).",
        *registrations,
    ]
    return "\n".join(lines) + "\n"


def auto_map(model_type: str) -> dict[str, str]:
    """``config.json``'s ``auto_map``: every Auto class of the model type -> its class in ``unipre3d_remote.py``."""
    return {auto_name: f"{REMOTE_MODULE}.{cls.__name__}" for auto_name, cls in model_classes(model_type).items()}


def resolve_model_dir(model_dir: str) -> tuple[str, str | None]:
    """``(folder with config.json and the weights, run folder or None)``: a pre-training run's output directory (it
    has ``backbone/`` and ``final.json``) or its ``backbone/`` gives that backbone and the run; any other folder is
    taken as it is (a converted checkpoint, a fine-tuned model, a saved backbone)."""
    if os.path.isfile(os.path.join(model_dir, "backbone", "config.json")):
        return os.path.join(model_dir, "backbone"), model_dir
    parent, name = os.path.split(os.path.abspath(model_dir))
    if name == "backbone" and os.path.isfile(os.path.join(parent, "final.json")):
        return model_dir, parent  # a run's backbone/ given directly: its run's numbers still go into the card
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise FileNotFoundError(
            f"`model_dir` {model_dir} has no config.json (nor backbone/config.json): give a pre-training run's "
            "output directory, a converted checkpoint folder or a saved model folder"
        )
    return model_dir, None


def load_for_export(weights_dir: str):
    """The model of a saved folder, as its ``architectures`` entry names it (a backbone or a task model)."""
    with open(os.path.join(weights_dir, "config.json")) as f:
        config = json.load(f)
    model_type = config.get("model_type")
    classes = model_classes(model_type)  # raises for a model type that is not a unipre3d_hf backbone
    names = config.get("architectures") or [classes["AutoModel"].__name__]
    allowed = {cls.__name__: cls for cls in classes.values() if cls is not classes["AutoConfig"]}
    if len(names) != 1 or names[0] not in allowed:
        raise ValueError(f"`architectures` in {weights_dir}/config.json must be one of {sorted(allowed)}, got {names}")
    model, info = allowed[names[0]].from_pretrained(weights_dir, output_loading_info=True)
    if info["missing_keys"] or info["mismatched_keys"]:  # never export freshly initialised weights as trained ones
        raise ValueError(
            f"the weights in {weights_dir} do not fill {names[0]}: missing {sorted(info['missing_keys'])[:8]}, "
            f"mismatched {[k[0] if isinstance(k, tuple) else k for k in info['mismatched_keys']][:8]}"
        )
    return model.eval()


def run_results(run_dir: str) -> dict:
    """What a pre-training run measured: ``{"final": {...}, "initial": {...}, "step": int, "args": {...}}`` from its
    ``final.json`` and ``pretrain_args.json`` (missing files give empty entries)."""
    results: dict = {"final": {}, "initial": {}, "step": None, "args": {}}
    final_path = os.path.join(run_dir, "final.json")
    if os.path.isfile(final_path):
        with open(final_path) as f:
            history = json.load(f)
        results.update(final=history.get("final") or {}, initial=history.get("initial") or {}, step=history.get("step"))
    args_path = os.path.join(run_dir, "pretrain_args.json")
    if os.path.isfile(args_path):
        with open(args_path) as f:
            results["args"] = json.load(f)
    return results


def _finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# validation metrics of scripts/pretrain.py shown in a card: key -> (model-index metric type, label)
_RUN_METRICS = {
    "val/psnr_novel": ("psnr", "PSNR, novel views (dB)"),
    "val/ssim_novel": ("ssim", "SSIM, novel views"),
    "val/lpips_novel": ("lpips", "LPIPS, novel views"),
    "val/psnr_reference": ("psnr", "PSNR, reference view (dB)"),
    "val/ssim_reference": ("ssim", "SSIM, reference view"),
    "val/lpips_reference": ("lpips", "LPIPS, reference view"),
}


def render_model_card(
    template: str,
    model,
    repo_id: str | None = None,
    run: dict | None = None,
    paper_checkpoint: bool = False,
    license: str = "other",
) -> str:
    """A ``README.md`` for an exported model from a card template (YAML front matter + Markdown body).

    - The template's ``model-index`` holds the paper's reported results for the paper's own checkpoints; it is kept
      only with ``paper_checkpoint=True`` (weights converted from the paper's release). For any other weights it is
      dropped from the metadata (the body's table of the paper's figures stays, labelled as the paper's), and the
      results this package measured for these weights (a pre-training run's validation metrics) are listed instead,
      with the command that produced them. The template's licence (the paper's checkpoints') is replaced by
      ``license``, and its ``datasets`` by the run's data set when the run is known.
    - A "This upload" section (architecture, parameter count, key config values, the run's numbers) replaces
      ``CARD_MARKER`` (or follows the first heading).
    - ``repo_id`` replaces the card's default Hub id (``unipre3d/<name>``) in the body's snippets.

    The result is checked with ``huggingface_hub.ModelCard`` (metadata and ``model-index`` parse) before it is
    returned.
    """
    from huggingface_hub import ModelCard

    import unipre3d_hf

    card = ModelCard(template)  # parses and validates the template's metadata
    metadata = yaml.safe_load(template.split("---", 2)[1]) or {}
    body = card.text
    config = model.config
    default_id = f"unipre3d/{HUB_NAMES[config.model_type]}"
    if repo_id:
        body = body.replace(default_id, repo_id)
    run = run or {}
    final = {k: v for k, v in (run.get("final") or {}).items() if k in _RUN_METRICS and _finite_number(v)}
    initial = run.get("initial") or {}
    args = run.get("args") or {}
    # the run's arguments (pretrain_args.json, copied into the export) say how it was made; the preset names the setup
    command = "scripts/pretrain.py" + (f" (preset `{args['preset']}`, arguments in pretrain_args.json)" if args else "")

    if not paper_checkpoint:
        for key in ("model-index", "metrics", "license_name", "license_link"):
            metadata.pop(key, None)
        metadata["license"] = license
        dataset = os.path.basename(str(args.get("dataset") or "unknown").rstrip("/"))  # a mini set, folder or Hub id
        if args.get("dataset"):
            metadata["datasets"] = [f"unipre3d/{dataset}" if dataset in ("objects-mini", "scenes-mini") else dataset]
        if final:
            metadata["metrics"] = sorted({_RUN_METRICS[k][0] for k in final})
            metrics = [
                {
                    "type": _RUN_METRICS[k][0],
                    "value": round(float(v), 4),
                    "name": f"{_RUN_METRICS[k][1]}, measured with unipre3d_hf for this upload",
                }
                for k, v in final.items()
            ]
            result = {  # no `source`: the Hub wants a URL with it; the body names the command
                "task": {"type": "novel-view-synthesis", "name": "UniPre3D pre-training (Gaussian renders)"},
                "dataset": {"type": dataset, "name": dataset, "split": args.get("val_split", "validation")},
                "metrics": metrics,
            }
            metadata["model-index"] = [{"name": repo_id or type(model).__name__, "results": [result]}]

    num_params = sum(p.numel() for p in model.parameters())
    lines = [
        "## This upload",
        "",
        f"- Architecture: `{type(model).__name__}` (`model_type` `{config.model_type}`), "
        f"{num_params:,} parameters, exported with unipre3d_hf {unipre3d_hf.__version__}.",
    ]
    hidden = getattr(config, "hidden_size", None)
    if hidden is not None:
        lines.append(f"- Output feature width (`hidden_size`): {hidden}.")
    if getattr(config, "num_labels", None) and type(model).__name__.endswith(("Classification", "Segmentation")):
        lines.append(f"- Task head with {config.num_labels} labels.")
    if paper_checkpoint:
        lines.append(
            "- Weights converted from the paper's released checkpoint; the results in the metadata are the paper's."
        )
    else:
        lines.append(
            "- These weights are not the paper's checkpoint: the paper's figures below describe the paper's weights "
            "only, and are left out of this card's metadata."
        )
    if run:
        lines.append(
            f"- Pre-trained with {command}"
            + (f" for {run['step']} steps" if run.get("step") is not None else "")
            + (f" on `{args['dataset']}`" if args.get("dataset") else "")
            + ("; the exported weights are the run's EMA backbone." if args.get("use_ema", True) else ".")
        )
    if final:
        lines += ["", "| validation metric (measured for this upload) | at step 0 | at the end |", "|---|---:|---:|"]
        for k, v in final.items():
            start = initial.get(k)
            start = f"{start:.3f}" if _finite_number(start) else "—"
            lines.append(f"| {_RUN_METRICS[k][1]} | {start} | {v:.3f} |")
    section = "\n".join(lines) + "\n"
    if CARD_MARKER in body:
        body = body.replace(CARD_MARKER, section)
    else:
        head, sep, rest = body.partition("\n\n")
        body = f"{head}{sep}{section}\n{rest}" if sep else f"{body}\n\n{section}"
    text = "---\n" + yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True) + "---\n" + body
    ModelCard(text)  # the rendered metadata parses and its model-index validates
    return text


def export_for_hub(
    model_dir: str,
    output_dir: str,
    card: str | None = None,
    repo_id: str | None = None,
    paper_checkpoint: bool = False,
    license: str = "other",
    overwrite: bool = False,
) -> str:
    """Write a Hub-ready folder for the model in ``model_dir`` (see the module docstring); returns ``output_dir``.

    Args:
        model_dir: a pre-training run's output directory (its ``backbone/`` and ``final.json`` are used), a converted
            checkpoint folder or a fine-tuned / saved model folder (``config.json`` + weights).
        output_dir: the folder to write; a non-empty one is refused unless ``overwrite``. The export is written into a
            temporary sibling folder and moved into place when complete, so a failed export leaves an old one intact.
        card: a card template (``hub_cards/<name>.md``); None writes no ``README.md``.
        repo_id: the Hub id the folder will be uploaded to (used in the card's snippets).
        paper_checkpoint: the weights are converted from the paper's release (keeps the paper's ``model-index``).
        license: the card's licence for other weights (see ``render_model_card``).
    """
    from .data.schemas import dataset_output

    output_dir = os.path.abspath(output_dir)
    if os.path.exists(output_dir) and (not os.path.isdir(output_dir) or os.listdir(output_dir)) and not overwrite:
        raise FileExistsError(f"`output_dir` {output_dir} exists and is not empty; pass --overwrite to replace it")
    weights_dir, run_dir = resolve_model_dir(model_dir)
    model = load_for_export(weights_dir)
    template = None
    if card is not None:
        with open(card, encoding="utf-8") as f:
            template = f.read()
    run = run_results(run_dir) if run_dir is not None else None
    readme = None if template is None else render_model_card(template, model, repo_id, run, paper_checkpoint, license)
    with dataset_output(output_dir, overwrite=overwrite) as build_dir:
        model.save_pretrained(build_dir)  # config.json + model.safetensors
        config_path = os.path.join(build_dir, "config.json")
        with open(config_path) as f:
            config = json.load(f)
        config["auto_map"] = auto_map(model.config.model_type)
        with open(config_path, "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
            f.write("\n")
        with open(os.path.join(build_dir, f"{REMOTE_MODULE}.py"), "w") as f:
            f.write(remote_module_text(model.config.model_type))
        if run_dir is not None and os.path.isfile(os.path.join(run_dir, "pretrain_args.json")):
            shutil.copyfile(os.path.join(run_dir, "pretrain_args.json"), os.path.join(build_dir, "pretrain_args.json"))
        if readme is not None:
            with open(os.path.join(build_dir, "README.md"), "w", encoding="utf-8") as f:
                f.write(readme)
    return output_dir


def push_to_hub(folder: str, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Create ``repo_id`` (if needed) and upload an exported folder with ``huggingface_hub.upload_folder``; returns the
    commit URL. Nothing is uploaded anywhere else, and nothing at import time."""
    from huggingface_hub import create_repo, upload_folder

    create_repo(repo_id, private=private, exist_ok=True, token=token)
    info = upload_folder(repo_id=repo_id, folder_path=folder, token=token, commit_message="Upload with unipre3d_hf")
    return str(getattr(info, "commit_url", info))


def add_to_hf_cache(folder: str, repo_id: str, cache_dir: str, revision: str | None = None) -> str:
    """Lay the files of ``folder`` into a Hugging Face cache as the snapshot ``revision`` of model ``repo_id`` and
    point ``refs/main`` at it, as a download would (files copied into the snapshot, as the cache does without
    symlinks). ``revision`` defaults to a hash of the files. Returns the snapshot folder."""
    files = sorted(
        os.path.relpath(os.path.join(root, name), folder) for root, _, names in os.walk(folder) for name in names
    )
    if not files:
        raise ValueError(f"`folder` {folder} holds no files")
    if revision is None:
        digest = hashlib.sha1()
        for name in files:
            digest.update(name.encode())
            with open(os.path.join(folder, name), "rb") as f:
                digest.update(f.read())
        revision = digest.hexdigest()
    if len(revision) != 40 or any(c not in "0123456789abcdef" for c in revision):
        raise ValueError(f"`revision` must be a 40-character lowercase hex commit hash, got {revision!r}")
    repo_folder = os.path.join(cache_dir, "models--" + repo_id.replace("/", "--"))
    snapshot = os.path.join(repo_folder, "snapshots", revision)
    for name in files:
        os.makedirs(os.path.dirname(os.path.join(snapshot, name)), exist_ok=True)
        shutil.copyfile(os.path.join(folder, name), os.path.join(snapshot, name))
    os.makedirs(os.path.join(repo_folder, "refs"), exist_ok=True)
    with open(os.path.join(repo_folder, "refs", "main"), "w") as f:
        f.write(revision)
    return snapshot


__all__ = [
    "CARD_MARKER",
    "HUB_NAMES",
    "REMOTE_MODULE",
    "add_to_hf_cache",
    "auto_map",
    "export_for_hub",
    "load_for_export",
    "model_classes",
    "push_to_hub",
    "remote_module_text",
    "render_model_card",
    "resolve_model_dir",
    "run_results",
]
