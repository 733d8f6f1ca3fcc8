"""Crash-safe training checkpoints that load without running code.

Layout under ``output_dir``::

    checkpoint-<step>/          model.safetensors, optimizer.pt (weights_only), scheduler.json, ema.safetensors,
                                trainer_state.json, rng-<rank>.json, and a ``COMPLETE`` marker (JSON: step, run id,
                                every file's size and SHA-256)
    .tmp-checkpoint-<step>/     a checkpoint being written; garbage if the run died (cleaned at the next save)
    best/                       the best weights so far + best.json {"metric", "value", "step"}

A checkpoint is written into a temporary folder, marked ``COMPLETE`` and only then renamed into place, so a crash at any
moment leaves the latest complete checkpoint intact; :func:`latest_checkpoint` only ever returns marked folders. Before
a resume reads anything, :func:`verify_checkpoint` checks every file against the marker and refuses any file type a
checkpoint does not hold (no pickle is ever unpickled: the optimizer state is read with
``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

__all__ = [
    "COMPLETE_MARKER",
    "CheckpointError",
    "apply_checkpoint",
    "read_checkpoint",
    "verify_checkpoint",
    "checkpoint_info",
    "latest_checkpoint",
    "list_checkpoints",
    "read_best",
    "resolve_resume",
    "resume_candidates",
    "save_best",
    "save_checkpoint",
]

COMPLETE_MARKER = "COMPLETE"
BEST_DIR = "best"
BEST_JSON = "best.json"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
_TMP_PREFIX = ".tmp-"
_RNG_RE = re.compile(r"^rng-\d+\.json$")
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.json"
EMA_FILE = "ema.safetensors"
TRAINER_STATE_FILE = "trainer_state.json"
CHECKPOINT_FILES = (MODEL_FILE, OPTIMIZER_FILE, SCHEDULER_FILE, EMA_FILE, TRAINER_STATE_FILE)


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


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be trusted or read: the message names the folder, the file and why."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _rng_file(rank: int) -> str:
    return f"rng-{rank}.json"


def _allowed_file(name: str) -> bool:
    return name in CHECKPOINT_FILES or _RNG_RE.match(name) is not None


def _rng_state() -> dict[str, Any]:
    """This process's random states as JSON values: Python's ``random``, NumPy's global ``RandomState``, torch's CPU
    generator and every CUDA device's (byte tensors as lists of ints)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "state": list(internal), "gauss_next": gauss},
        "numpy": {"kind": kind, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state().tolist(),
        "cuda": [s.tolist() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }  # fmt: skip
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(x) for x in py["state"]), py["gauss_next"]))
    n = state["numpy"]
    keys = np.asarray(n["keys"], dtype=np.uint32)
    np.random.set_state((str(n["kind"]), keys, int(n["pos"]), int(n["has_gauss"]), float(n["cached_gaussian"])))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if state["cuda"] and torch.cuda.is_available():
        cuda = [torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:  # another number of visible GPUs: restore this process's own device only
            torch.cuda.set_rng_state(cuda[min(torch.cuda.current_device(), len(cuda) - 1)])


def _check_rng_state(state: Any) -> None:
    """Raises ValueError unless ``state`` has the shape :func:`_rng_state` writes."""
    if not isinstance(state, dict) or {"python", "numpy", "torch", "cuda"} - set(state):
        raise ValueError("expected the keys python, numpy, torch, cuda")
    if len(state["python"]["state"]) != 625 or len(state["numpy"]["keys"]) != 624:
        raise ValueError("the Mersenne Twister states have the wrong length")
    if len(state["torch"]) != len(torch.get_rng_state()):
        raise ValueError(f"the torch generator state has {len(state['torch'])} bytes, not {len(torch.get_rng_state())}")


def resume_candidates(output_dir: str | os.PathLike, resume: str | os.PathLike | None) -> list[str]:
    """The checkpoints a resume may use, in the order to try them: ``[]`` for None (and for ``"latest"`` while
    ``output_dir`` has no complete checkpoint yet), every complete checkpoint newest first for ``"latest"`` (a damaged
    one falls back to the one before), ``[resume]`` for a path (that one only). Raises like :func:`resolve_resume`."""
    if resume is None:
        return []
    if str(resume) == "latest":
        return [path for _, path in reversed(list_checkpoints(output_dir))]
    return [resolve_resume(output_dir, resume)]


def save_checkpoint(
    accelerator: Any,
    output_dir: str | os.PathLike,
    step: int,
    keep_last: int | None = 3,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    ema: Any = None,
    trainer_state: Mapping[str, Any] | None = None,
    run_id: str | None = None,
) -> str:
    """Saves the full training state as ``output_dir/checkpoint-<step>``, atomically, in files that load without
    running code.

    Every process must call it. The main process removes stale temporary folders; into ``.tmp-checkpoint-<step>`` it
    writes ``model.safetensors``, ``optimizer.pt`` (tensors and plain values only, read back with
    ``torch.load(weights_only=True)``), ``scheduler.json``, ``ema.safetensors`` and ``trainer_state.json`` (step, the
    caller's ``trainer_state``, the EMA counters, the fp16 grad scaler); every process writes ``rng-<rank>.json``
    (Python, NumPy, torch CPU and CUDA generator states). Then the main process writes the ``COMPLETE`` marker (step,
    run id, and every file's size and SHA-256), renames the folder into place and deletes this run's complete
    checkpoints older than the newest ``keep_last`` (those of another ``run_id`` are never deleted).

    Args:
        accelerator: an ``accelerate.Accelerator`` (single process or DDP; the model and optimizer state are
            replicated, so the main process writes them).
        output_dir: folder holding the checkpoints.
        step: the global optimisation step, >= 0.
        keep_last: how many complete checkpoints of this run to keep (>= 1), or None to keep all.
        model, optimizer, scheduler, ema: what to save (a prepared model / optimizer / scheduler, an ``EMA``).
        trainer_state: further JSON values of the loop (data position, counters).
        run_id: the run the checkpoint belongs to, recorded in ``COMPLETE``.

    Returns:
        The path of the new checkpoint folder.
    """
    if not isinstance(step, int) or step < 0:
        raise ValueError(f"`step` must be a non-negative int, got {step!r}")
    if keep_last is not None and keep_last < 1:
        raise ValueError(f"`keep_last` must be >= 1 or None, got {keep_last}")
    if str(accelerator.distributed_type).split(".")[-1] in ("FSDP", "DEEPSPEED", "MEGATRON_LM"):
        raise ValueError(f"save_checkpoint supports one process or DDP, not {accelerator.distributed_type}")
    root = Path(output_dir)
    tmp_dir = root / f"{_TMP_PREFIX}checkpoint-{step}"
    final_dir = root / f"checkpoint-{step}"

    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        _clean_tmp(root, _TMP_PREFIX + "checkpoint-")
        _clean_tmp(root, _TMP_PREFIX + "old-checkpoint-")
        tmp_dir.mkdir()
    accelerator.wait_for_everyone()

    model_state = _tensors_to_save(model, accelerator)
    if accelerator.is_main_process:
        from safetensors.torch import save_file

        save_file(model_state, str(tmp_dir / MODEL_FILE), metadata={"format": "pt"})
        state = {"step": step, **(trainer_state or {})}
        if optimizer is not None:
            torch.save(optimizer.state_dict(), tmp_dir / OPTIMIZER_FILE)
        if scheduler is not None:
            _write_json(tmp_dir / SCHEDULER_FILE, scheduler.state_dict())
        if ema is not None:
            ema_state = ema.state_dict()
            tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in ema_state.pop("model").items()}
            save_file(tensors, str(tmp_dir / EMA_FILE), metadata={"format": "pt"})
            state["ema"] = ema_state
        scaler = getattr(accelerator, "scaler", None)
        if scaler is not None:
            state["grad_scaler"] = scaler.state_dict()
        _write_json(tmp_dir / TRAINER_STATE_FILE, state)
    _write_json(tmp_dir / _rng_file(accelerator.process_index), _rng_state())
    accelerator.wait_for_everyone()

    if accelerator.is_main_process:
        files = {
            child.name: {"size": child.stat().st_size, "sha256": _sha256(child)}
            for child in sorted(tmp_dir.iterdir())
            if child.is_file()
        }
        marker = {"step": step, "time": time.time(), "run_id": run_id, "num_processes": accelerator.num_processes}
        _write_json(tmp_dir / COMPLETE_MARKER, {**marker, "files": files})
        _fsync_dir(tmp_dir)
        _publish(tmp_dir, final_dir)
        if keep_last is not None:
            mine = [c for _, c in list_checkpoints(root) if (checkpoint_info(c) or {}).get("run_id") == run_id]
            for old in mine[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return str(final_dir)


def verify_checkpoint(path: str | os.PathLike, rank: int | None = None) -> dict[str, Any]:
    """Checks a checkpoint folder before anything is read from it, and returns its ``COMPLETE`` marker.

    Every file must be one a checkpoint of this package holds (``model.safetensors``, ``optimizer.pt``,
    ``scheduler.json``, ``ema.safetensors``, ``trainer_state.json``, ``rng-<rank>.json``): anything else (a pickle of
    an older Accelerate checkpoint, say) is refused, never opened. Every file the marker lists must be there with its
    recorded size and SHA-256. With ``rank``, that process's RNG file must be there too.

    Raises:
        CheckpointError: naming the folder and the bad file.
    """
    folder = Path(path)
    info = checkpoint_info(folder)
    if info is None:
        raise CheckpointError(f"{folder}: no readable {COMPLETE_MARKER} marker (an interrupted or foreign save)")
    files = info.get("files")
    if not isinstance(files, dict):
        raise CheckpointError(
            f"{folder}/{COMPLETE_MARKER} lists no files: the checkpoint was written by an older version of the package "
            "(Accelerate's pickled state), which is not loaded because unpickling can run code"
        )
    for child in sorted(folder.iterdir()):
        if child.name == COMPLETE_MARKER:
            continue
        if not child.is_file() or not _allowed_file(child.name):
            raise CheckpointError(
                f"{child}: unexpected file in a checkpoint (expected only {sorted(CHECKPOINT_FILES)} and "
                "rng-<rank>.json); it is not opened (it could be a pickle, and unpickling can run code)"
            )
        if child.name not in files:
            raise CheckpointError(
                f"{child}: not listed in {COMPLETE_MARKER}, so it was not written with the checkpoint"
            )
    if MODEL_FILE not in files or TRAINER_STATE_FILE not in files:
        raise CheckpointError(f"{folder}: {COMPLETE_MARKER} lists no {MODEL_FILE} or {TRAINER_STATE_FILE}")
    if rank is not None and _rng_file(rank) not in files:
        raise CheckpointError(f"{folder}: no {_rng_file(rank)} for process {rank} (saved by {len(files)} files)")
    for name, meta in files.items():
        if not _allowed_file(name):
            raise CheckpointError(f"{folder}/{COMPLETE_MARKER} lists an unexpected file {name!r}")
        file = folder / name
        if not file.is_file():
            raise CheckpointError(f"{file}: missing (listed in {COMPLETE_MARKER})")
        size = file.stat().st_size
        if size != meta.get("size"):
            raise CheckpointError(f"{file}: {size} bytes, but {meta.get('size')} were written (truncated or changed)")
        if _sha256(file) != meta.get("sha256"):
            raise CheckpointError(f"{file}: its SHA-256 differs from the one written (the file is corrupt or changed)")
    return info


def _read_json(file: Path) -> Any:
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{file}: not readable JSON ({err})") from None


def read_checkpoint(path: str | os.PathLike, rank: int = 0) -> dict[str, Any]:
    """Verifies (:func:`verify_checkpoint`) and reads a checkpoint into CPU memory, without changing any object.

    Returns:
        ``{"path", "info", "model", "optimizer", "scheduler", "ema", "trainer_state", "rng"}`` (absent parts None).

    Raises:
        CheckpointError: naming the file that failed.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(path)
    info = verify_checkpoint(folder, rank)
    files = info["files"]
    out: dict[str, Any] = {"path": str(folder), "info": info}

    def tensors(name: str) -> dict[str, torch.Tensor] | None:
        if name not in files:
            return None
        try:
            return load_file(str(folder / name))
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{folder / name}: not a readable safetensors file ({err})") from None

    out["model"] = tensors(MODEL_FILE)
    out["ema"] = tensors(EMA_FILE)
    out["optimizer"] = None
    if OPTIMIZER_FILE in files:
        try:  # weights_only: tensors, numbers, strings, lists, dicts; any other object is refused, never built
            out["optimizer"] = torch.load(folder / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001  (torch raises UnpicklingError, RuntimeError, EOFError, ...)
            raise CheckpointError(f"{folder / OPTIMIZER_FILE}: not loadable with weights_only=True ({err})") from None
    out["scheduler"] = _read_json(folder / SCHEDULER_FILE) if SCHEDULER_FILE in files else None
    out["trainer_state"] = _read_json(folder / TRAINER_STATE_FILE)
    out["rng"] = _read_json(folder / _rng_file(rank))
    try:
        _check_rng_state(out["rng"])
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{folder / _rng_file(rank)}: not an RNG state of this package ({err})") from None
    return out


def apply_checkpoint(
    loaded: Mapping[str, Any],
    accelerator: Any,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    ema: Any = None,
) -> dict[str, Any]:
    """Restores what :func:`read_checkpoint` read into the training objects and this process's random generators;
    returns the ``trainer_state`` dict.

    Raises:
        CheckpointError: a part is missing or does not fit its object (naming the file).
    """
    folder = Path(loaded["path"])
    try:
        accelerator.unwrap_model(model).load_state_dict(loaded["model"], strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{folder / MODEL_FILE} does not fit the model: {err}") from None
    state = loaded["trainer_state"]
    for obj, key, name in ((optimizer, "optimizer", OPTIMIZER_FILE), (scheduler, "scheduler", SCHEDULER_FILE)):
        if obj is None:
            continue
        if loaded[key] is None:
            raise CheckpointError(f"{folder}: no {name}, but the run has a {key}")
        try:
            obj.load_state_dict(loaded[key])
        except (ValueError, KeyError, TypeError, RuntimeError) as err:
            raise CheckpointError(f"{folder / name} does not fit the {key}: {err}") from None
    if ema is not None:
        if loaded["ema"] is None or "ema" not in state:
            raise CheckpointError(f"{folder}: no {EMA_FILE}, but the run uses EMA")
        try:
            ema.load_state_dict({**state["ema"], "model": loaded["ema"]})
        except (ValueError, KeyError, RuntimeError) as err:
            raise CheckpointError(f"{folder / EMA_FILE} does not fit the EMA model: {err}") from None
    scaler = getattr(accelerator, "scaler", None)
    if scaler is not None and "grad_scaler" in state:
        scaler.load_state_dict(state["grad_scaler"])
    _set_rng_state(loaded["rng"])
    return state


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
