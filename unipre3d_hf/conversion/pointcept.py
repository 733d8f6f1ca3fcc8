"""Pointcept interop: our Sparse UNet / PTv3 weights <-> Pointcept's ``SpUNet-v1m1`` / ``PT-v3m1`` / ``PT-v3m2``
(Sonata).

Pointcept (https://github.com/Pointcept/Pointcept) names the modules of ``SpUNet-v1m1`` (``conv_input``, ``down``,
``enc.<s>.block<i>``, ``up``, ``dec``, ``final``) and of Point Transformer V3 (``embedding.stem``,
``enc.enc<s>.block<i>`` with ``cpe.0/1/2``, ``norm1.0``, ``attn``, ``mlp.0.fc1``, ``down``, ``dec.dec<s>.up``) as
UniPre3D, which vendors them, does; the renaming rules are those of ``conversion.original``. Its checkpoints
(``{"state_dict": ...}``) carry the backbone under ``module.backbone.`` (DDP) or ``backbone.`` next to the
segmentor's other parts (``seg_head``, criteria), which are not part of a backbone and are dropped by name.

PT-v3m1 checkpoints import with ``PTv3Config.legacy_unpooling_cpe=True`` (PT-v3m1's unpooling leaves the sparse
tensor of each decoder stage's first CPE un-refreshed).

PT-v3m2 (Pointcept ``point_transformer_v3m2_sonata.py``; the standalone ``facebookresearch/sonata`` ``model.py``)
imports with the fields of its differences (see ``unipre3d_hf.modeling.ptv3``): ``stem_type="linear"``
(``embedding.stem.linear``), ``norm_type="layer"`` (LayerNorm in the stem, ``down.norm.0``, ``up.proj.1`` /
``up.proj_skip.1``: weight and bias, no running statistics), ``pooling_type="grid"``, ``serialization_depth=None``,
``layer_scale`` when the blocks carry ``ls1.0.gamma`` / ``ls2.0.gamma``, ``enc_mode`` when there is no ``dec.`` key
(Sonata's released weights are encoder-only) and ``mask_token`` when ``embedding.mask_token`` is there. Sonata's
released files are ``{"config": PointTransformerV3 kwargs, "state_dict": backbone keys}``; Pointcept's training
checkpoints are ``{"state_dict": ...}`` with the keys under ``module.`` and ``backbone.`` (a segmentor) or
``student.backbone.`` (a Sonata pre-training run: the student is what Pointcept's probing and fine-tuning configs load,
``CheckpointLoader(keywords="module.student.backbone")``; the EMA teacher and the pre-training heads are dropped).

Head counts, patch sizes and orders are not in a state dict: they come from the checkpoint's ``config`` when it has
one (Sonata's files), otherwise from Pointcept's defaults (heads = channels / 16, as every Pointcept PTv3 config; patch
1024; for PT-v3m2 the four orders of every Sonata config, with a warning), unless ``config_kwargs`` say otherwise.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch

from .original import (
    PTV3_RULES,
    SPARSE_UNET_RULES,
    CheckpointConversionError,
    load_tensors_only,
    map_state_dict,
    rename,
    strip_prefix,
)

try:
    from transformers.initialization import no_init_weights
except ImportError:  # pragma: no cover - older transformers
    from transformers.modeling_utils import no_init_weights

ARCHS = {"SpUNet-v1m1": "sparse_unet", "PT-v3m1": "ptv3", "PT-v3m2": "ptv3"}

# Pointcept PT-v3m2 -> ours: PT-v3m1's names plus the Linear stem, the mask token and LayerScale (``lsN.0.gamma``)
PTV3M2_RULES = PTV3_RULES + (
    (r"^embedding\.stem\.linear\.", "stem_linear."),
    (r"^embedding\.mask_token$", "mask_token"),
    (r"\.ls([12])\.0\.", r".ls\1."),
)
# PT-v3m2's behaviour fields (their defaults are PT-v3m1's); set by every PT-v3m2 import
PTV3M2_BEHAVIOUR = {
    "stem_type": "linear",
    "norm_type": "layer",
    "pooling_type": "grid",
    "serialization_depth": None,
    "legacy_unpooling_cpe": False,
}
SONATA_ORDERS = ["z", "z-trans", "hilbert", "hilbert-trans"]
# PointTransformerV3 (PT-v3m2) constructor arguments: the ones that become PTv3Config fields ...
_CONFIG_FIELDS = (
    "in_channels", "order", "stride", "enc_depths", "enc_channels", "enc_num_head", "enc_patch_size", "dec_depths",
    "dec_channels", "dec_num_head", "dec_patch_size", "mlp_ratio", "qkv_bias", "qk_scale", "proj_drop", "drop_path",
    "layer_scale", "pre_norm", "shuffle_orders", "enc_mode", "mask_token",
)  # fmt: skip
# ... and the ones that do not change what the weights compute in eval, with the reason they are not kept
_CONFIG_IGNORED = {
    "type": "the registry name",
    "attn_drop": "attention dropout acts in training only (PTv3Model has none)",
    "enable_flash": "an attention kernel choice (PTv3Config.attention_backend picks ours)",
    "upcast_attention": "a precision choice of the non-flash path (off with flash attention)",
    "upcast_softmax": "a precision choice of the non-flash path (off with flash attention)",
    "traceable": "only keeps references for the caller's upcasting (PTv3Model always keeps the clusters)",
    "freeze_encoder": "sets requires_grad for training",
    "pdnorm_bn": "must be False: PTv3Model has no Point Prompt Training norms",
    "pdnorm_ln": "must be False: PTv3Model has no Point Prompt Training norms",
    "enable_rpe": "must be False: PTv3Model has no relative position encoding",
}
_MUST_BE_FALSE = ("enable_rpe", "pdnorm_bn", "pdnorm_ln")

# ours -> Pointcept (the inverse of SPARSE_UNET_RULES / PTV3_RULES; the round trip is tested key by key)
_SPARSE_UNET_EXPORT = (
    (r"^stem_conv\.", "conv_input.0."),
    (r"^stem_norm\.", "conv_input.1."),
    (r"^(down|up)\.(\d+)\.conv\.", r"\1.\2.0."),
    (r"^(down|up)\.(\d+)\.norm\.", r"\1.\2.1."),
    (r"^(enc|dec)\.(\d+)\.blocks\.(\d+)\.proj_conv\.", r"\1.\2.block\3.proj.0."),
    (r"^(enc|dec)\.(\d+)\.blocks\.(\d+)\.proj_norm\.", r"\1.\2.block\3.proj.1."),
    (r"^(enc|dec)\.(\d+)\.blocks\.(\d+)\.", r"\1.\2.block\3."),
)
_PTV3_EXPORT = (
    (r"^stem_conv\.", "embedding.stem.conv."),
    (r"^stem_norm\.", "embedding.stem.norm."),
    (r"^enc\.(\d+)\.pooling\.proj\.", r"enc.enc\1.down.proj."),
    (r"^enc\.(\d+)\.pooling\.norm\.", r"enc.enc\1.down.norm.0."),
    (r"^dec\.(\d+)\.unpooling\.", r"dec.dec\1.up."),
    (r"^(enc|dec)\.(\d+)\.blocks\.(\d+)\.", r"\1.\g<1>\2.block\3."),
    (r"\.cpe_conv\.", ".cpe.0."),
    (r"\.cpe_linear\.", ".cpe.1."),
    (r"\.cpe_norm\.", ".cpe.2."),
    (r"\.(norm[12])\.", r".\1.0."),
    (r"\.mlp\.(fc[12])\.", r".mlp.0.\1."),
    (r"^stem_linear\.", "embedding.stem.linear."),
    (r"^mask_token$", "embedding.mask_token"),
    (r"\.(ls[12])\.", r".\1.0."),
)


def export_pointcept_state_dict(model, prefix: str = "") -> dict[str, torch.Tensor]:
    """Our ``SparseUNetModel`` / ``PTv3Model`` (or its ``state_dict()``'s model) as a state dict that Pointcept's
    ``SpUNet-v1m1`` / ``PT-v3m1`` loads strictly (``PT-v3m2`` for a PTv3 with PT-v3m2's fields set: Linear stem,
    LayerNorm, ...).

    Args:
        model: a ``SparseUNetModel`` or ``PTv3Model``.
        prefix: put before every key: ``""`` for the backbone itself, ``"backbone."`` for a Pointcept segmentor,
            ``"module.backbone."`` for a segmentor wrapped in DDP.
    Returns:
        ``{pointcept key: tensor}`` (the tensors are detached clones: spconv's weight layout [out, kD, kH, kW, in]
        is ours too).
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    rules = {"unipre3d_sparse_unet": _SPARSE_UNET_EXPORT, "unipre3d_ptv3": _PTV3_EXPORT}.get(model_type)
    if rules is None:
        raise ValueError(f"`model` must be a SparseUNetModel or a PTv3Model, got {type(model).__name__}")
    return {prefix + rename(k, rules): v.detach().clone() for k, v in model.state_dict().items()}


def _blocks(state_dict: dict, stage_pattern: str) -> dict[int, int]:
    """``{stage: number of blocks}`` for keys matching ``stage_pattern`` (groups: stage, block)."""
    counts: dict[int, set] = {}
    for key in state_dict:
        m = re.match(stage_pattern, key)
        if m:
            counts.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    return {s: len(b) for s, b in sorted(counts.items())}


def detect_pointcept_arch(state_dict: dict[str, torch.Tensor]) -> str:
    """``"SpUNet-v1m1"``, ``"PT-v3m1"`` or ``"PT-v3m2"`` from the stem's key (any prefix), or raise
    `CheckpointConversionError`."""
    for suffix, arch in (
        ("embedding.stem.linear.weight", "PT-v3m2"),
        ("embedding.stem.conv.weight", "PT-v3m1"),
        ("conv_input.0.weight", "SpUNet-v1m1"),
    ):
        if any(k == suffix or k.endswith("." + suffix) for k in state_dict):
            return arch
    raise CheckpointConversionError(
        "no Pointcept backbone stem in the state dict (embedding.stem.linear.weight for PT-v3m2, "
        "embedding.stem.conv.weight for PT-v3m1, conv_input.0.weight for SpUNet-v1m1): not a backbone checkpoint?"
    )


def infer_config_kwargs(state_dict: dict[str, torch.Tensor], backbone: str, arch: str | None = None) -> dict:
    """Architecture fields that a Pointcept backbone state dict determines (depths, widths, input channels, stem
    kernel; for PT-v3m2 also ``enc_mode``, ``mask_token``, ``layer_scale``); heads = channels / 16 (Pointcept's
    configs). Raises `CheckpointConversionError` when keys are absent."""
    try:
        if backbone == "sparse_unet":
            stem = state_dict["conv_input.0.weight"]
            enc = _blocks(state_dict, r"^enc\.(\d+)\.block(\d+)\.conv1\.weight$")
            dec = _blocks(state_dict, r"^dec\.(\d+)\.block(\d+)\.conv1\.weight$")
            # Pointcept's dec.0 is the shallowest decoder stage; our `channels` / `layers` list the deepest first
            dec = dict(reversed(dec.items()))
            channels = [state_dict[f"enc.{s}.block0.conv1.weight"].shape[0] for s in enc]
            channels += [state_dict[f"dec.{s}.block0.conv1.weight"].shape[0] for s in dec]
            return dict(
                in_channels=stem.shape[-1],
                base_channels=stem.shape[0],
                stem_kernel_size=stem.shape[1],
                out_channels=state_dict["final.weight"].shape[0],
                channels=channels,
                layers=list(enc.values()) + list(dec.values()),
            )
        m2 = arch == "PT-v3m2"
        stem = state_dict["embedding.stem.linear.weight" if m2 else "embedding.stem.conv.weight"]
        enc = _blocks(state_dict, r"^enc\.enc(\d+)\.block(\d+)\.cpe\.0\.weight$")
        dec = _blocks(state_dict, r"^dec\.dec(\d+)\.block(\d+)\.cpe\.0\.weight$")
        if not enc:
            raise KeyError("enc.enc0.block0.cpe.0.weight")
        enc_channels = [state_dict[f"enc.enc{s}.block0.cpe.0.weight"].shape[0] for s in enc]
        dec_channels = [state_dict[f"dec.dec{s}.block0.cpe.0.weight"].shape[0] for s in dec]
        kwargs = dict(
            enc_depths=list(enc.values()),
            enc_channels=enc_channels,
            enc_num_head=[max(1, c // 16) for c in enc_channels],
            enc_patch_size=[1024] * len(enc),
            dec_depths=list(dec.values()),
            dec_channels=dec_channels,
            dec_num_head=[max(1, c // 16) for c in dec_channels],
            dec_patch_size=[1024] * len(dec),
            stride=[2] * (len(enc) - 1),
        )
        if not m2:
            return dict(in_channels=stem.shape[-1], stem_kernel_size=stem.shape[1], **kwargs)
        return dict(
            in_channels=stem.shape[1],
            enc_mode=not dec,
            mask_token="embedding.mask_token" in state_dict,
            # the trained gamma is loaded; the value is only LayerScale's init (Sonata's default 1e-5)
            layer_scale=1e-5 if "enc.enc0.block0.ls1.0.gamma" in state_dict else None,
            order=list(SONATA_ORDERS),
            **kwargs,
        )
    except KeyError as err:
        what = arch or backbone
        raise CheckpointConversionError(
            f"the state dict lacks {err.args[0]!r}, which a Pointcept {what} backbone has (an encoder-only "
            "checkpoint, or not a backbone?)"
        ) from None


def _kwargs_from_checkpoint_config(config: dict, inferred: dict) -> dict:
    """PTv3Config fields from a Sonata checkpoint's ``config`` (PointTransformerV3 constructor kwargs), checked
    against what the state dict says; unknown or unsupported entries fail by name."""
    if not isinstance(config, dict):
        raise CheckpointConversionError(f"the checkpoint's `config` must be a dict, got {type(config).__name__}")
    unknown = sorted(set(config) - set(_CONFIG_FIELDS) - set(_CONFIG_IGNORED))
    if unknown:
        raise CheckpointConversionError(f"unknown PointTransformerV3 config entries: {unknown}")
    for key in _MUST_BE_FALSE:
        if config.get(key):
            raise CheckpointConversionError(f"config `{key}={config[key]!r}`: {_CONFIG_IGNORED[key]}")
    if config.get("attn_drop"):
        warnings.warn(
            f"config `attn_drop={config['attn_drop']}` is not kept: {_CONFIG_IGNORED['attn_drop']}", stacklevel=3
        )
    out = {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in config.items() if k in _CONFIG_FIELDS}
    # an absent entry takes PointTransformerV3's default (its `load` builds `PointTransformerV3(**config)`); the
    # architecture ones are checked against the state dict below, the order is PointTransformerV3's ("z", "z-trans")
    order = out.get("order", ["z", "z-trans"])
    out["order"] = [order] if isinstance(order, str) else list(order)
    if out.get("enc_mode"):  # the decoder arguments of an encoder-only model build nothing
        for key in ("dec_depths", "dec_channels", "dec_num_head", "dec_patch_size"):
            out[key] = []
    for key in ("in_channels", "enc_depths", "enc_channels", "dec_depths", "dec_channels", "enc_mode", "mask_token"):
        if key in out and key in inferred and out[key] != inferred[key]:
            raise CheckpointConversionError(
                f"the checkpoint's config says {key}={out[key]!r} but its state dict has {key}={inferred[key]!r}"
            )
    if "layer_scale" in out and (out["layer_scale"] is None) != (inferred.get("layer_scale") is None):
        raise CheckpointConversionError(
            f"the checkpoint's config says layer_scale={out['layer_scale']!r} but its state dict "
            + ("has" if inferred.get("layer_scale") is not None else "has no")
            + " LayerScale gammas (ls1.0.gamma)"
        )
    return out


def _select_backbone(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Strip ``module.``; keep the keys under ``student.backbone.`` (a Sonata pre-training run: Pointcept's probing
    and fine-tuning configs load the student) or ``backbone.`` (a segmentor), prefix removed; the rest (the EMA
    teacher, the pre-training heads, ``seg_head``, criteria) is returned as dropped."""
    state_dict = strip_prefix(state_dict, "module.")
    for prefix in ("student.backbone.", "backbone."):
        if any(k.startswith(prefix) for k in state_dict):
            dropped = sorted(k for k in state_dict if not k.startswith(prefix))
            return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}, dropped
    return state_dict, []


def load_pointcept_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Read a Pointcept / Sonata ``.pth`` with ``torch.load(weights_only=True)``: ``(state_dict, config)``.

    Accepts Sonata's released layout ``{"config": {...}, "state_dict": {...}}``, Pointcept's training checkpoints
    ``{"state_dict": ..., "epoch": ..., ...}`` (``config`` is then ``None``) and a bare state dict."""
    obj = load_tensors_only(path, "re-save `{'state_dict': ..., 'config': ...}` alone")
    config = None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        config = obj.get("config")
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointConversionError(
            f"{path} is neither a Pointcept checkpoint (a dict with 'state_dict') nor a state dict of tensors"
        )
    return obj, config


def import_pointcept_state_dict(
    state_dict: dict[str, torch.Tensor],
    arch: str,
    config_kwargs: dict | None = None,
    checkpoint_config: dict | None = None,
):
    """A Pointcept backbone state dict -> our model (eval mode), loaded strictly.

    Args:
        state_dict: the checkpoint's ``state_dict`` (``module.`` is stripped; with ``student.backbone.`` or
            ``backbone.`` keys, those are kept and the rest is dropped).
        arch: ``"SpUNet-v1m1"``, ``"PT-v3m1"``, ``"PT-v3m2"`` (Sonata) or ``"auto"`` (from the stem's key).
        config_kwargs: config fields to override (e.g. ``enc_num_head``, ``enc_patch_size``, ``grid_size``,
            ``enc_upcast_stages``).
        checkpoint_config: PT-v3m2: the checkpoint's ``config`` (Sonata's files: PointTransformerV3 kwargs); heads,
            patch sizes, orders and the rest are taken from it, and checked against the state dict.
    Returns:
        ``(model, dropped keys)``.
    """
    from ..configuration.ptv3 import PTv3Config
    from ..configuration.sparse_unet import SparseUNetConfig
    from ..modeling.ptv3 import PTv3Model
    from ..modeling.sparse_unet import SparseUNetModel

    if arch == "auto":
        arch = detected = detect_pointcept_arch(state_dict)
    else:
        if arch not in ARCHS:
            raise ValueError(f"`arch` must be one of {sorted(ARCHS)} or 'auto', got {arch!r}")
        try:
            detected = detect_pointcept_arch(state_dict)
        except CheckpointConversionError:
            detected = None  # the key check below names what is missing
    if detected is not None and detected != arch and ARCHS[detected] == ARCHS[arch]:
        raise CheckpointConversionError(
            f"this is a {'Sonata ' if detected == 'PT-v3m2' else ''}{detected} state dict "
            f"({'embedding.stem.linear' if detected == 'PT-v3m2' else 'embedding.stem.conv'}), not {arch}: import it "
            f"with arch={detected!r} (or 'auto')"
        )
    if checkpoint_config is not None and arch != "PT-v3m2":
        raise ValueError("`checkpoint_config` is read for PT-v3m2 (Sonata) checkpoints only")
    backbone = ARCHS[arch]
    state_dict, dropped = _select_backbone(state_dict)
    kwargs = infer_config_kwargs(state_dict, backbone, arch)
    if arch == "PT-v3m2":
        if checkpoint_config is None:
            warnings.warn(
                "no checkpoint config: heads = channels / 16, patch 1024 and the orders "
                f"{SONATA_ORDERS} (Sonata's configs) are assumed; pass config_kwargs if the run used others",
                stacklevel=2,
            )
        else:
            kwargs.update(_kwargs_from_checkpoint_config(checkpoint_config, kwargs))
        kwargs.update(PTV3M2_BEHAVIOUR)
    kwargs.update(config_kwargs or {})
    if arch == "PT-v3m1":
        kwargs.setdefault("legacy_unpooling_cpe", True)
    if backbone == "ptv3":
        config, model_cls = PTv3Config(**kwargs), PTv3Model
        rules = PTV3M2_RULES if arch == "PT-v3m2" else PTV3_RULES
    else:
        config, model_cls, rules = SparseUNetConfig(**kwargs), SparseUNetModel, SPARSE_UNET_RULES
    with no_init_weights():
        model = model_cls(config)
    mapped = map_state_dict(
        state_dict, {k: v.shape for k, v in model.state_dict().items()}, rules, what=f"Pointcept {arch} backbone"
    )
    model.load_state_dict(mapped, strict=True)
    return model.eval(), dropped


__all__ = [
    "ARCHS",
    "PTV3M2_BEHAVIOUR",
    "PTV3M2_RULES",
    "detect_pointcept_arch",
    "export_pointcept_state_dict",
    "import_pointcept_state_dict",
    "infer_config_kwargs",
    "load_pointcept_checkpoint",
]
