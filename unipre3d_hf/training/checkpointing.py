"""Crash-safe training checkpoints with Accelerate.

Layout under ``output_dir``::

    checkpoint-<step>/          accelerator.save_state(...) output + a ``COMPLETE`` marker (JSON: step, time)
    .tmp-checkpoint-<step>/     a checkpoint being written; garbage if the run died (cleaned at the next save)
    best/                       the best weights so far + best.json {"metric", "value", "step"}

A checkpoint is written into a temporary folder, marked ``COMPLETE`` and only then renamed into place, so a crash at any
moment leaves the latest complete checkpoint intact; :func:`latest_checkpoint` only ever returns marked folders.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

__all__ = [
    "COMPLETE_MARKER",
    "checkpoint_info",
    "latest_checkpoint",
    "list_checkpoints",
    "read_best",
    "resolve_resume",
    "save_best",
    "save_checkpoint",
]

COMPLETE_MARKER = "COMPLETE"
BEST_DIR = "best"
BEST_JSON = "best.json"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
_TMP_PREFIX = ".tmp-"


def _fsync_dir(path: Path) -> None:
    """Makes a rename inside ``path`` durable (best effort: not every platform can open a directory)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_json(path: Path, payload: Mapping[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _publish(tmp_dir: Path, final_dir: Path) -> None:
    """Renames the finished ``tmp_dir`` to ``final_dir``, replacing an older ``final_dir`` if there is one.

    A directory cannot be renamed onto a non-empty one, so an existing ``final_dir`` is first moved aside to a
    ``.tmp-`` name (which the next save cleans up if the process dies before deleting it)."""
    trash = None
    if final_dir.exists():
        trash = final_dir.with_name(f"{_TMP_PREFIX}old-{final_dir.name}-{time.time_ns()}")
        os.replace(final_dir, trash)
    os.replace(tmp_dir, final_dir)
    _fsync_dir(final_dir.parent)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def _clean_tmp(output_dir: Path, prefix: str) -> None:
    for child in output_dir.iterdir():
        if child.name.startswith(prefix) and child.is_dir():
            shutil.rmtree(child, ignore_errors=True)


def checkpoint_info(path: str | os.PathLike) -> dict[str, Any] | None:
    """The ``COMPLETE`` marker of a checkpoint folder (``{"step": int, "time": float, ...}``), or None if the folder
    has none (it is missing or was never finished)."""
    marker = Path(path) / COMPLETE_MARKER
    if not marker.is_file():
        return None
    try:
        return json.loads(marker.read_text())
    except (OSError, ValueError):
        return None


def list_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, str]]:
    """Complete ``checkpoint-<step>`` folders of ``output_dir`` as ``(step, path)``, oldest first (numeric order)."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _CHECKPOINT_RE.match(child.name)
        if match and child.is_dir() and checkpoint_info(child) is not None:
            found.append((int(match.group(1)), str(child)))
    return sorted(found)


def latest_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """Path of the newest complete ``checkpoint-<step>`` folder of ``output_dir`` (numeric step order), or None."""
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1][1] if checkpoints else None


def resolve_resume(output_dir: str | os.PathLike, resume: str | os.PathLike | None) -> str | None:
    """Which checkpoint to resume from.

    Args:
        output_dir: the run's checkpoint folder.
        resume: None (start fresh), ``"latest"`` (the newest complete checkpoint of ``output_dir``, or None if there is
            none yet, so that a restarted job starts fresh the first time) or the path of a checkpoint folder.

    Returns:
        The checkpoint folder to pass to ``accelerator.load_state``, or None.

    Raises:
        FileNotFoundError: ``resume`` is a path that does not exist.
        ValueError: ``resume`` is a folder without the ``COMPLETE`` marker (an interrupted or foreign save).
    """
    if resume is None:
        return None
    if str(resume) == "latest":
        return latest_checkpoint(output_dir)
    path = Path(resume)
    if not path.is_dir():
        raise FileNotFoundError(f"`resume`: no checkpoint folder at {str(path)!r}")
    if checkpoint_info(path) is None:
        raise ValueError(
            f"`resume`: {str(path)!r} has no {COMPLETE_MARKER} marker, so it was not completely written; "
            f"pass an earlier checkpoint or 'latest'"
        )
    return str(path)


def save_checkpoint(
    accelerator: Any,
    output_dir: str | os.PathLike,
    step: int,
    keep_last: int | None = 3,
    **save_state_kwargs: Any,
) -> str:
    """Saves the full training state (``accelerator.save_state``) as ``output_dir/checkpoint-<step>``, atomically.

    Every process must call it (Accelerate saves per-process RNG states, and sharded models need all ranks). The main
    process removes stale temporary folders, everyone writes into ``.tmp-checkpoint-<step>``, then the main process
    writes the ``COMPLETE`` marker, renames the folder into place and deletes complete checkpoints older than the
    newest ``keep_last``.

    Args:
        accelerator: an ``accelerate.Accelerator`` without automatic checkpoint naming.
        output_dir: folder holding the checkpoints.
        step: the global optimisation step, >= 0.
        keep_last: how many complete checkpoints to keep (>= 1), or None to keep all.
        **save_state_kwargs: passed to ``accelerator.save_state`` (e.g. ``safe_serialization``).

    Returns:
        The path of the new checkpoint folder.
    """
    if not isinstance(step, int) or step < 0:
        raise ValueError(f"`step` must be a non-negative int, got {step!r}")
    if keep_last is not None and keep_last < 1:
        raise ValueError(f"`keep_last` must be >= 1 or None, got {keep_last}")
    if accelerator.project_configuration.automatic_checkpoint_naming:
        raise ValueError(
            "`accelerator` uses automatic_checkpoint_naming, which ignores the output folder; "
            "build it with ProjectConfiguration(automatic_checkpoint_naming=False)"
        )
    root = Path(output_dir)
    tmp_dir = root / f"{_TMP_PREFIX}checkpoint-{step}"
    final_dir = root / f"checkpoint-{step}"

    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        _clean_tmp(root, _TMP_PREFIX + "checkpoint-")
        _clean_tmp(root, _TMP_PREFIX + "old-checkpoint-")
    accelerator.wait_for_everyone()

    accelerator.save_state(str(tmp_dir), **save_state_kwargs)
    accelerator.wait_for_everyone()

    if accelerator.is_main_process:
        _write_json(tmp_dir / COMPLETE_MARKER, {"step": step, "time": time.time()})
        _fsync_dir(tmp_dir)
        _publish(tmp_dir, final_dir)
        if keep_last is not None:
            for _, old in list_checkpoints(root)[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return str(final_dir)


def _tensors_to_save(obj: nn.Module | Mapping[str, torch.Tensor], accelerator: Any) -> dict[str, torch.Tensor]:
    state = accelerator.get_state_dict(obj) if isinstance(obj, nn.Module) else obj
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"`model_or_state` must map names to tensors; {key!r} is a {type(value).__name__}")
    # clone: safetensors refuses tensors that share storage (tied weights)
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def read_best(output_dir: str | os.PathLike) -> dict[str, Any] | None:
    """``{"metric": str, "value": float, "step": int, "time": float}`` of ``output_dir/best``, or None if none."""
    path = Path(output_dir) / BEST_DIR / BEST_JSON
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def save_best(
    accelerator: Any,
    model_or_state: nn.Module | Mapping[str, torch.Tensor],
    output_dir: str | os.PathLike,
    metric_name: str,
    value: float,
    step: int,
    mode: Literal["max", "min"] = "max",
) -> bool:
    """Saves the weights as ``output_dir/best`` if ``value`` beats the best so far (or there is none yet).

    The folder is written as ``.tmp-best`` and renamed into place, so an interrupted save keeps the previous best. It
    holds ``best.json`` (``metric``, ``value``, ``step``, ``time``) and the weights: ``save_pretrained`` output for a
    transformers model (``config.json`` + ``model.safetensors``), otherwise ``model.safetensors`` with the state dict.
    Call it on every process; the decision is taken on the main process and broadcast.

    Args:
        accelerator: an ``accelerate.Accelerator``.
        model_or_state: a module (e.g. ``ema.model`` or ``ema.model.backbone``) or a state dict of tensors.
        output_dir: the run folder.
        metric_name: name of the metric, e.g. ``"psnr_novel"`` (the paper picks the best by novel-view PSNR).
        value: its value at ``step``.
        step: the global step.
        mode: ``"max"`` if larger is better, ``"min"`` otherwise.

    Returns:
        True if the weights were saved.
    """
    if mode not in ("max", "min"):
        raise ValueError(f"`mode` must be 'max' or 'min', got {mode!r}")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"`value` of {metric_name!r} is NaN")
    root = Path(output_dir)

    improved, error = False, None
    if accelerator.is_main_process:
        previous = read_best(root)
        if previous is not None and previous.get("metric") != metric_name:
            error = (
                f"`metric_name` is {metric_name!r} but {root / BEST_DIR / BEST_JSON} holds {previous.get('metric')!r}"
            )
        elif previous is None:
            improved = True
        else:
            improved = value > previous["value"] if mode == "max" else value < previous["value"]
    if accelerator.num_processes > 1:  # every rank takes the main process's decision
        from accelerate.utils import broadcast_object_list

        improved, error = broadcast_object_list([improved, error], from_process=0)
    if error is not None:
        raise ValueError(error)
    if not improved:
        return False

    is_hf_model = hasattr(model_or_state, "save_pretrained") and isinstance(model_or_state, nn.Module)
    tensors = None if is_hf_model else _tensors_to_save(model_or_state, accelerator)
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        _clean_tmp(root, _TMP_PREFIX + "best")
        _clean_tmp(root, _TMP_PREFIX + "old-best")
        tmp_dir = root / f"{_TMP_PREFIX}best"
        tmp_dir.mkdir()
        if is_hf_model:
            accelerator.unwrap_model(model_or_state).save_pretrained(str(tmp_dir))
        else:
            from safetensors.torch import save_file

            save_file(tensors, str(tmp_dir / "model.safetensors"), metadata={"format": "pt"})
        record = {"metric": metric_name, "value": value, "step": int(step), "time": time.time()}
        _write_json(tmp_dir / BEST_JSON, record)
        _fsync_dir(tmp_dir)
        _publish(tmp_dir, root / BEST_DIR)
    accelerator.wait_for_everyone()
    return True
