"""Pointcept interop: our Sparse UNet / PTv3 weights <-> Pointcept's ``SpUNet-v1m1`` / ``PT-v3m1``.

Pointcept (https://github.com/Pointcept/Pointcept) names the modules of ``SpUNet-v1m1`` (``conv_input``, ``down``,
``enc.<s>.block<i>``, ``up``, ``dec``, ``final``) and of Point Transformer V3 (``embedding.stem``,
``enc.enc<s>.block<i>`` with ``cpe.0/1/2``, ``norm1.0``, ``attn``, ``mlp.0.fc1``, ``down``, ``dec.dec<s>.up``) as
UniPre3D, which vendors them, does; the renaming rules are those of ``conversion.original``. Its checkpoints
(``{"state_dict": ...}``) carry the backbone under ``module.backbone.`` (DDP) or ``backbone.`` next to the
segmentor's other parts (``seg_head``, criteria), which are not part of a backbone and are dropped by name.

PT-v3m1 checkpoints import with ``PTv3Config.legacy_unpooling_cpe=True`` (PT-v3m1's unpooling leaves the sparse
tensor of each decoder stage's first CPE un-refreshed). Sonata's PT-v3m2 is not importable: besides refreshing that
tensor (our default), it embeds with a Linear stem (``embedding.stem.linear``), normalises pooling and unpooling with
LayerNorm and pools on the grid (``GridPooling``), none of which ``PTv3Model`` implements; such a state dict is
recognised and refused with that reason.

Head counts and patch sizes are not in a state dict: the imported config takes Pointcept's defaults (heads =
channels / 16, as every Pointcept PTv3 config; patch 1024) unless ``config_kwargs`` say otherwise.
"""

from __future__ import annotations

import re

import torch

from .original import PTV3_RULES, SPARSE_UNET_RULES, CheckpointConversionError, map_state_dict, rename, strip_prefix

try:
    from transformers.initialization import no_init_weights
except ImportError:  # pragma: no cover - older transformers
    from transformers.modeling_utils import no_init_weights

ARCHS = {"SpUNet-v1m1": "sparse_unet", "PT-v3m1": "ptv3"}

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
)


def export_pointcept_state_dict(model, prefix: str = "") -> dict[str, torch.Tensor]:
    """Our ``SparseUNetModel`` / ``PTv3Model`` (or its ``state_dict()``'s model) as a state dict that Pointcept's
    ``SpUNet-v1m1`` / ``PT-v3m1`` loads strictly.

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


def infer_config_kwargs(state_dict: dict[str, torch.Tensor], backbone: str) -> dict:
    """Architecture fields that a Pointcept backbone state dict determines (depths, widths, input channels, stem
    kernel); heads = channels / 16 (Pointcept's configs). Raises `CheckpointConversionError` when keys are absent."""
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
        stem = state_dict["embedding.stem.conv.weight"]
        enc = _blocks(state_dict, r"^enc\.enc(\d+)\.block(\d+)\.cpe\.0\.weight$")
        dec = _blocks(state_dict, r"^dec\.dec(\d+)\.block(\d+)\.cpe\.0\.weight$")
        enc_channels = [state_dict[f"enc.enc{s}.block0.cpe.0.weight"].shape[0] for s in enc]
        dec_channels = [state_dict[f"dec.dec{s}.block0.cpe.0.weight"].shape[0] for s in dec]
        return dict(
            in_channels=stem.shape[-1],
            stem_kernel_size=stem.shape[1],
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
    except KeyError as err:
        raise CheckpointConversionError(
            f"the state dict lacks {err.args[0]!r}, which a Pointcept {backbone} backbone has (an encoder-only "
            "checkpoint, or not a backbone?)"
        ) from None


def import_pointcept_state_dict(state_dict: dict[str, torch.Tensor], arch: str, config_kwargs: dict | None = None):
    """A Pointcept backbone state dict -> our model (eval mode), loaded strictly.

    Args:
        state_dict: the checkpoint's ``state_dict`` (``module.`` / ``backbone.`` prefixes are stripped; when the keys
            carry ``backbone.``, the segmentor's other keys are dropped).
        arch: ``"SpUNet-v1m1"`` or ``"PT-v3m1"``.
        config_kwargs: config fields to override (e.g. ``enc_num_head``, ``enc_patch_size``, ``grid_size``).
    Returns:
        ``(model, dropped keys)``.
    """
    from ..configuration.ptv3 import PTv3Config
    from ..configuration.sparse_unet import SparseUNetConfig
    from ..modeling.ptv3 import PTv3Model
    from ..modeling.sparse_unet import SparseUNetModel

    if arch == "PT-v3m2" or any(k.endswith("embedding.stem.linear.weight") for k in state_dict):
        raise CheckpointConversionError(
            "this is a Sonata PT-v3m2 state dict (embedding.stem.linear): its Linear stem, LayerNorm pooling / "
            "unpooling and grid pooling are not implemented by PTv3Model, so its weights have nowhere to go"
        )
    if arch not in ARCHS:
        raise ValueError(f"`arch` must be one of {sorted(ARCHS)}, got {arch!r}")
    backbone = ARCHS[arch]
    state_dict = strip_prefix(state_dict, "module.")
    dropped = []
    if any(k.startswith("backbone.") for k in state_dict):
        dropped = sorted(k for k in state_dict if not k.startswith("backbone."))
        state_dict = {k[len("backbone.") :]: v for k, v in state_dict.items() if k.startswith("backbone.")}
    kwargs = {**infer_config_kwargs(state_dict, backbone), **(config_kwargs or {})}
    if backbone == "ptv3":
        kwargs.setdefault("legacy_unpooling_cpe", True)
        config, model_cls, rules = PTv3Config(**kwargs), PTv3Model, PTV3_RULES
    else:
        config, model_cls, rules = SparseUNetConfig(**kwargs), SparseUNetModel, SPARSE_UNET_RULES
    with no_init_weights():
        model = model_cls(config)
    mapped = map_state_dict(
        state_dict, {k: v.shape for k, v in model.state_dict().items()}, rules, what=f"Pointcept {arch} backbone"
    )
    model.load_state_dict(mapped, strict=True)
    return model.eval(), dropped


__all__ = ["ARCHS", "export_pointcept_state_dict", "import_pointcept_state_dict", "infer_config_kwargs"]
