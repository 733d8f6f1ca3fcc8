"""Conversion of the original UniPre3D checkpoints (``wangzy22/UniPre3D``) into this package's models.

A released checkpoint is ``torch.save({"iteration", "optimizer_state_dict", "model_state_dict", "best_PSNR"})``;
``model_state_dict`` holds the ``GaussianSplatPredictor``'s keys (the EMA copy by default), every key prefixed with
``module.`` when the run used several GPUs (DDP). Its parts (``shared/reference/original_checkpoint_layout.json``):

  - ``point_network.encoder.*``: the backbone -> ``<Backbone>Model`` (renamed by the rules in ``BACKBONES``);
  - ``point_network.final.*``: the Gaussian head MLP -> ``gaussian_head.fc1`` / ``fc2``;
  - ``image_conv.*``: GroupNorm + 1x1 conv -> ``image_projection.norm`` / ``proj``;
  - ``fusion_mlps.*``: object fusion Linear -> ``fusion.proj``; scene fusion SubMConv3d + BN -> ``fusion.conv`` /
    ``fusion.norm``;
  - dropped, with the reason in ``DROPPED``: the frozen SD-VAE (``image_network.*``, loaded from the Hub by our model),
    the constant SH <-> view buffers, PCM's ``decoder.gmp_map_*`` (built, never used in forward).

Every key is mapped or dropped for a stated reason and every shape is checked against the target model; anything
else fails with the list of offending keys. The files are read with ``torch.load(weights_only=True)``.

The converted configs set the ``legacy_*`` flags that make our models compute what the original code computes with
these weights (``legacy_config_kwargs``), including the head's (``legacy_head_kwargs``) for full models.
"""

from __future__ import annotations

import json
import pickle
import re
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

try:  # transformers >= 5: skips the weight init of a model whose every weight is loaded next
    from transformers.initialization import no_init_weights
except ImportError:  # pragma: no cover - older transformers
    from transformers.modeling_utils import no_init_weights

BACKBONE_PREFIX = "point_network.encoder."

# Parts of a checkpoint that have no counterpart in our models, and why.
DROPPED = {
    "image_network.": "the frozen SD-VAE image encoder (stabilityai/sd-vae-ft-mse, 83,653,863 parameters); our model "
    "loads it from the Hub and never saves it",
    "sh_to_v_transform": "a constant buffer (the SH <-> view-space rotation), recomputed by our renderer",
    "v_to_sh_transform": "a constant buffer (the SH <-> view-space rotation), recomputed by our renderer",
}


@dataclass(frozen=True)
class BackboneSpec:
    """How one original backbone maps onto ours.

    Attributes:
        preset: the ``UniPre3DConfig`` preset of its pre-training setup.
        rules: ``(pattern, replacement)`` regexes applied in turn to each backbone key (without
            ``point_network.encoder.``); the result must be a key of our backbone.
        dropped: ``{key regex: reason}`` for backbone keys that are deliberately not converted.
        legacy: config fields that reproduce the original behaviour with the converted weights.
    """

    preset: str
    rules: tuple[tuple[str, str], ...]
    dropped: dict = field(default_factory=dict)
    legacy: dict = field(default_factory=dict)


_POINTMLP_RULES = (
    (r"^embedding\.net\.", "embedding."),
    (r"^local_grouper_list\.", "groupers."),
    (r"^pre_blocks_list\.(\d+)\.transfer\.net\.", r"pre_extractors.\1.transfer."),
    (r"^pre_blocks_list\.", "pre_extractors."),
    (r"^pos_blocks_list\.(\d+)\.operation\.", r"pos_extractors.\1."),
    (r"^decode_list\.(\d+)\.fuse\.net\.", r"decoder.\1.fuse."),
    (r"^decode_list\.(\d+)\.extraction\.operation\.", r"decoder.\1.extraction."),
)
_PATCH_RULES = ((r"^encoder\.", "patch_encoder."), (r"^blocks\.blocks\.", "blocks."))
_TRANSFORMER_RULES = _PATCH_RULES + ((r"\.mlp\.fc1\.", ".mlp.0."), (r"\.mlp\.fc2\.", ".mlp.2."))
_MAMBA3D_RULES = _PATCH_RULES + (
    (r"\.lfa\.lga\.affine_alpha_feat$", ".lnp.affine_alpha"),
    (r"\.lfa\.lga\.affine_beta_feat$", ".lnp.affine_beta"),
    (r"\.lfa\.mlp\.share_mlp\.", ".lnp.proj."),
    (r"\.lfa\.pre_norm_ft\.", ".lnp.norm."),
)
_PCM_RULES = (
    (r"^encoder\.embedding\.net\.", "embedding."),
    (r"^encoder\.local_grouper_list\.", "groupers."),
    (r"^encoder\.pre_blocks_list\.(\d+)\.transfer\.net\.", r"pre_extractors.\1.transfer."),
    (r"^encoder\.pre_blocks_list\.", "pre_extractors."),
    (r"^encoder\.mamba_blocks_list\.", "mamba_stages."),
    (r"^encoder\.residual_proj_blocks_list\.", "residual_projs."),
    (r"^encoder\.pos_proj\.", "pos_projs."),
    (r"^encoder\.order_prompt_proj\.", "prompt_projs."),
    (r"^encoder\.order_prompt\.", "order_prompt."),
    (r"^decoder\.decode_list\.(\d+)\.fuse\.net\.", r"decoder.\1.fuse."),
    (r"^decoder\.decode_list\.(\d+)\.extraction\.operation\.", r"decoder.\1.extraction."),
    (r"^head\.head\.0\.", "head.0."),
    (r"^head\.head\.(\d+)\.0\.", r"head.\1."),
)
# Pointcept's SpUNet-v1m1 names (UniPre3D vendors it unchanged); also used by ``conversion.pointcept``.
SPARSE_UNET_RULES = (
    (r"^conv_input\.0\.", "stem_conv."),
    (r"^conv_input\.1\.", "stem_norm."),
    (r"^(down|up)\.(\d+)\.0\.", r"\1.\2.conv."),
    (r"^(down|up)\.(\d+)\.1\.", r"\1.\2.norm."),
    (r"^(enc|dec)\.(\d+)\.block(\d+)\.proj\.0\.", r"\1.\2.blocks.\3.proj_conv."),
    (r"^(enc|dec)\.(\d+)\.block(\d+)\.proj\.1\.", r"\1.\2.blocks.\3.proj_norm."),
    (r"^(enc|dec)\.(\d+)\.block(\d+)\.", r"\1.\2.blocks.\3."),
)
# Pointcept's PT-v3m1 names (UniPre3D vendors it); also used by ``conversion.pointcept``.
PTV3_RULES = (
    (r"^embedding\.stem\.conv\.", "stem_conv."),
    (r"^embedding\.stem\.norm\.", "stem_norm."),
    (r"^enc\.enc(\d+)\.down\.proj\.", r"enc.\1.pooling.proj."),
    (r"^enc\.enc(\d+)\.down\.norm\.0\.", r"enc.\1.pooling.norm."),
    (r"^dec\.dec(\d+)\.up\.", r"dec.\1.unpooling."),
    (r"^(enc|dec)\.\1(\d+)\.block(\d+)\.", r"\1.\2.blocks.\3."),
    (r"\.cpe\.0\.", ".cpe_conv."),
    (r"\.cpe\.1\.", ".cpe_linear."),
    (r"\.cpe\.2\.", ".cpe_norm."),
    (r"\.norm([12])\.0\.", r".norm\1."),
    (r"\.mlp\.0\.", ".mlp."),
)

BACKBONES = {
    "pointmlp": BackboneSpec("pointmlp_shapenet", _POINTMLP_RULES, legacy={"legacy_sampling": True}),
    "point_transformer": BackboneSpec("point_transformer_shapenet", _TRANSFORMER_RULES),
    "mamba3d": BackboneSpec(
        "mamba3d_shapenet",
        _MAMBA3D_RULES,
        legacy={"lnp_std_over_batch": True, "legacy_cls_pos_anchors": True, "legacy_fps": True},
    ),
    "pcm": BackboneSpec(
        "pcm_shapenet",
        _PCM_RULES,
        dropped={r"^decoder\.gmp_map_(list|end)\.": "PCM's gmp_map layers are built but never used in forward"},
        legacy={"legacy_axis_orders": True},
    ),
    "sparse_unet": BackboneSpec("sparse_unet_scannet", SPARSE_UNET_RULES),
    "ptv3": BackboneSpec("ptv3_scannet", PTV3_RULES, legacy={"legacy_unpooling_cpe": True}),
}

# The pre-training parts outside the backbone (object: fusion is a Linear; scene: SubMConv3d + BatchNorm).
_HEAD_RULES = (
    (r"^point_network\.final\.0\.", "gaussian_head.fc1."),
    (r"^point_network\.final\.2\.", "gaussian_head.fc2."),
    (r"^image_conv\.0\.", "image_projection.norm."),
    (r"^image_conv\.1\.", "image_projection.proj."),
)
_OBJECT_FUSION_RULES = ((r"^fusion_mlps\.0\.", "fusion.proj."),)
_SCENE_FUSION_RULES = ((r"^fusion_mlps\.0\.", "fusion.conv."), (r"^fusion_mlps\.1\.", "fusion.norm."))

# The Sparse UNet input conv of one released checkpoint, as users report it: [kD, kH, kW, out, in] (kernel first, as
# spconv 1.x stored weights, but with out before in); permute(3, 0, 1, 2, 4) gives spconv 2.x's [out, kD, kH, kW, in].
_SWAPPED_INPUT_CONV = ("conv_input.0.weight", (5, 5, 5, 32, 6), (3, 0, 1, 2, 4))


class CheckpointConversionError(ValueError):
    """A checkpoint that does not match the original layout (unknown keys, missing keys, wrong shapes)."""


def load_tensors_only(path: str | Path, resave_hint: str):
    """``torch.load(path, weights_only=True)`` on the CPU: tensors, numbers, strings, lists and dicts only. A file that
    holds other Python objects is refused with a :class:`CheckpointConversionError` that ends with ``resave_hint``:
    this package never runs a checkpoint's pickled code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointConversionError(
            f"{path} holds Python objects that `torch.load(weights_only=True)` refuses to unpickle ({err}); this "
            f"converter never runs a checkpoint's pickled code: {resave_hint}"
        ) from None


def load_original_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read an original ``.pth`` with ``torch.load(weights_only=True)`` and return its model state dict, ``module.``
    prefixes stripped. Accepts the full training checkpoint (``model_state_dict`` inside) or a bare state dict."""
    obj = load_tensors_only(
        path, "re-save the weights alone, in a trusted environment, with "
        "`torch.save({'model_state_dict': ckpt['model_state_dict']}, 'weights.pth')`"
    )  # fmt: skip
    if isinstance(obj, dict) and "model_state_dict" in obj:
        obj = obj["model_state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointConversionError(
            f"{path} is neither a UniPre3D training checkpoint (a dict with 'model_state_dict') nor a state dict of "
            "tensors"
        )
    return strip_prefix(obj, "module.")


def strip_prefix(state_dict: dict, prefix: str) -> dict:
    """``state_dict`` with ``prefix`` removed from the keys that start with it (all or none may carry it)."""
    return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state_dict.items()}


def rename(key: str, rules) -> str:
    for pattern, replacement in rules:
        key = re.sub(pattern, replacement, key)
    return key


def map_state_dict(
    source: dict[str, torch.Tensor],
    target_shapes: dict[str, torch.Size],
    rules,
    dropped: dict[str, str] | None = None,
    what: str = "checkpoint",
    source_prefix: str = "",
) -> dict[str, torch.Tensor]:
    """Rename every key of ``source`` by ``rules`` and check the result against ``target_shapes``.

    Keys matching a regex of ``dropped`` are skipped; ``source_prefix`` is put before the source keys in messages.
    Raises `CheckpointConversionError` listing the keys that map to no target key (or to one already mapped), the
    shape mismatches, and the target keys nothing maps to.
    """
    dropped = dropped or {}
    out, unknown, wrong = {}, [], []
    for key, value in source.items():
        if any(re.search(p, key) for p in dropped):
            continue
        new = rename(key, rules)
        if new not in target_shapes or new in out:
            unknown.append(f"{source_prefix}{key} -> {new}" if new != key else source_prefix + key)
            continue
        if tuple(value.shape) != tuple(target_shapes[new]):
            wrong.append(f"{source_prefix}{key}: {list(value.shape)}, expected {list(target_shapes[new])} (for {new})")
            continue
        out[new] = value
    missing = sorted(set(target_shapes) - set(out))
    problems = [
        f"{len(items)} {label}: " + sep.join(items[:20]) + (" ..." if len(items) > 20 else "")
        for label, items, sep in (
            ("unmapped key(s)", unknown, ", "),
            ("shape mismatch(es)", wrong, "; "),
            ("missing key(s)", missing, ", "),
        )
        if items
    ]
    if problems:
        raise CheckpointConversionError(f"the {what} does not match the expected layout: " + " | ".join(problems))
    return out


def fix_sparse_unet_input_conv(backbone: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Recognise the reported ``[5, 5, 5, 32, 6]`` Sparse UNet input conv ([kD, kH, kW, out, in]) and permute it to
    spconv's ``[out, kD, kH, kW, in] = [32, 5, 5, 5, 6]``. Any other shape is left for the shape check to reject."""
    key, bad_shape, perm = _SWAPPED_INPUT_CONV
    w = backbone.get(key)
    if w is not None and tuple(w.shape) == bad_shape:
        warnings.warn(
            f"`{key}` has the reported layout {list(bad_shape)} ([kD, kH, kW, out, in]); permuting it to "
            "[out, kD, kH, kW, in] = [32, 5, 5, 5, 6]",
            stacklevel=2,
        )
        backbone = {**backbone, key: w.permute(*perm).contiguous()}
    return backbone


def python_set_order(items: list[str], pythonhashseed: int, python: str | None = None) -> list[str]:
    """``list(set(items))`` as a Python process started with ``PYTHONHASHSEED=pythonhashseed`` computes it.

    String hashes (and so a set's iteration order) depend on the seed and on the interpreter (SipHash-1-3 from
    CPython 3.11, SipHash-2-4 before): pass the training environment's interpreter as ``python`` when it differs.
    """
    code = "import json, sys; print(json.dumps(list(set(json.loads(sys.argv[1])))))"
    result = subprocess.run(
        [python or sys.executable, "-c", code, json.dumps(list(items))],
        env={"PYTHONHASHSEED": str(int(pythonhashseed))},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout)


def pcm_prompt_rows(
    order_prompt: torch.Tensor,
    orders: list[str],
    prompts_per_order: int,
    unique_order: list[str] | None,
) -> torch.Tensor:
    """Rearrange PCM's ``order_prompt`` rows from the original's assignment to ours.

    The original builds ``unique = list(set(orders))`` and gives layer ``k`` the rows of block
    ``unique.index(orders[k])`` (``openpoints/models/PCM/PCM.py``); ours gives layer ``k`` block ``k``. Without the
    training process's ``unique_order`` the rows are kept in place and a warning says that the prompts may sit on the
    wrong layers.
    """
    P = prompts_per_order
    if unique_order is None:
        warnings.warn(
            "PCM order prompts: the original assigns prompt rows to layers in `list(set(orders))` order, which depends "
            "on the training process's PYTHONHASHSEED; it is unknown here, so the rows are kept in place and may sit "
            "on the wrong layers. Pass `pcm_pythonhashseed` (or `pcm_unique_orders`) to place them exactly.",
            stacklevel=2,
        )
        return order_prompt
    if sorted(unique_order) != sorted(set(orders)):
        raise CheckpointConversionError(
            f"`pcm_unique_orders` {unique_order} must list each of the layers' orders {sorted(set(orders))} once"
        )
    if order_prompt.shape[0] != len(unique_order) * P:
        raise CheckpointConversionError(
            f"`order_prompt` has {order_prompt.shape[0]} rows; {len(unique_order)} distinct orders x {P} expected"
        )
    blocks = [order_prompt[unique_order.index(o) * P : (unique_order.index(o) + 1) * P] for o in orders]
    return torch.cat(blocks)


def legacy_config_kwargs(backbone: str) -> dict:
    """Backbone config fields that reproduce the original code's behaviour (see ``BACKBONES``)."""
    return dict(BACKBONES[backbone].legacy)


def legacy_head_kwargs(level: str) -> dict:
    """``UniPre3DConfig`` fields of the original head and fusion: the quaternion normalised across a sample's
    Gaussians and the transposed pixel lookup (object level), and the scale clamp at exp(-1)."""
    kwargs = {"scale_log_min": -1.0}
    if level == "object":
        kwargs.update(legacy_quaternion_normalization=True, legacy_transposed_lookup=True)
    return kwargs


def split_checkpoint(state_dict: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """``(backbone keys without the prefix, the other keys)``; keys of ``DROPPED`` go nowhere."""
    backbone, rest = {}, {}
    for key, value in state_dict.items():
        if key.startswith(BACKBONE_PREFIX):
            backbone[key[len(BACKBONE_PREFIX) :]] = value
        elif not any(key.startswith(d) for d in DROPPED):
            rest[key] = value
    return backbone, rest


def convert_original_state_dict(
    state_dict: dict[str, torch.Tensor],
    backbone: str,
    full_model: bool = False,
    pcm_unique_orders: list[str] | None = None,
    pcm_pythonhashseed: int | None = None,
):
    """Original state dict -> ``(our model, its config)`` with the weights loaded strictly.

    Args:
        state_dict: the original ``GaussianSplatPredictor`` keys (``module.`` already stripped), or the backbone's
            alone under ``point_network.encoder.``.
        backbone: one of ``BACKBONES``.
        full_model: build our ``UniPre3DForGaussianPretraining`` (backbone, image projection, fusion, Gaussian head);
            else the backbone ``PreTrainedModel`` alone.
        pcm_unique_orders / pcm_pythonhashseed: PCM only, the training process's ``list(set(orders))`` (given, or
            recomputed from its PYTHONHASHSEED).
    Returns:
        the model (eval mode) and its config, with the legacy flags set.
    """
    from transformers import AutoModel

    from ..configuration.unipre3d import UniPre3DConfig
    from ..modeling.pretraining import UniPre3DForGaussianPretraining

    if backbone not in BACKBONES:
        raise ValueError(f"`backbone` must be one of {sorted(BACKBONES)}, got {backbone!r}")
    spec = BACKBONES[backbone]
    state_dict = strip_prefix(state_dict, "module.")
    backbone_sd, rest = split_checkpoint(state_dict)
    if not backbone_sd:
        raise CheckpointConversionError(
            f"no key starts with {BACKBONE_PREFIX!r}: this is not a UniPre3D {backbone} checkpoint "
            f"(first keys: {list(state_dict)[:5]})"
        )
    if backbone == "sparse_unet":
        backbone_sd = fix_sparse_unet_input_conv(backbone_sd)
    config = UniPre3DConfig.from_preset(spec.preset, backbone_kwargs=legacy_config_kwargs(backbone))
    if backbone == "ptv3" and backbone_sd.get("embedding.stem.conv.weight", torch.empty(0)).shape[:1] == (48,):
        from ..configuration.ptv3 import PTV3_FIRST_RELEASE_KWARGS

        config = UniPre3DConfig.from_preset(
            spec.preset, backbone_kwargs={**PTV3_FIRST_RELEASE_KWARGS, **legacy_config_kwargs(backbone)}
        )
    if backbone == "pcm":
        bc = config.backbone_config
        if pcm_unique_orders is None and pcm_pythonhashseed is not None:
            pcm_unique_orders = python_set_order(bc.mamba_orders, pcm_pythonhashseed)
        key = "encoder.order_prompt.weight"
        if key in backbone_sd:
            backbone_sd[key] = pcm_prompt_rows(
                backbone_sd[key], bc.mamba_orders, bc.prompts_per_order, pcm_unique_orders
            )
    if full_model:
        config = UniPre3DConfig(**{**config.to_dict(), **legacy_head_kwargs(config.level)})
        with no_init_weights():
            model = UniPre3DForGaussianPretraining(config)
        target = {k: v.shape for k, v in model.state_dict().items()}
        fusion = _OBJECT_FUSION_RULES if config.level == "object" else _SCENE_FUSION_RULES
        mapped = map_state_dict(
            backbone_sd,
            {k[len("backbone.") :]: s for k, s in target.items() if k.startswith("backbone.")},
            spec.rules,
            spec.dropped,
            what=f"{backbone} backbone",
            source_prefix=BACKBONE_PREFIX,
        )
        mapped = {f"backbone.{k}": v for k, v in mapped.items()}
        mapped.update(
            map_state_dict(
                rest,
                {k: s for k, s in target.items() if not k.startswith("backbone.")},
                _HEAD_RULES + fusion,
                what=f"{backbone} pre-training head",
            )
        )
        model.load_state_dict(mapped, strict=True)
        return model.eval(), config
    with no_init_weights():
        model = AutoModel.from_config(config.backbone_config)
    mapped = map_state_dict(
        backbone_sd,
        {k: v.shape for k, v in model.state_dict().items()},
        spec.rules,
        spec.dropped,
        what=f"{backbone} backbone",
        source_prefix=BACKBONE_PREFIX,
    )
    model.load_state_dict(mapped, strict=True)
    return model.eval(), config.backbone_config


__all__ = [
    "BACKBONES",
    "DROPPED",
    "BackboneSpec",
    "CheckpointConversionError",
    "convert_original_state_dict",
    "fix_sparse_unet_input_conv",
    "legacy_config_kwargs",
    "legacy_head_kwargs",
    "load_original_checkpoint",
    "map_state_dict",
    "pcm_prompt_rows",
    "python_set_order",
]
