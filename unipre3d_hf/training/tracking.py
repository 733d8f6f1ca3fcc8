"""Experiment tracking for Accelerate: a dependency-free JSON-lines tracker, and the default tracker list."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from accelerate.tracking import GeneralTracker, on_main_process

__all__ = ["JSONLinesTracker", "build_trackers", "to_json_value"]


def to_json_value(value: Any) -> Any:
    """Tensors and numpy values become Python floats/ints (lists if they have several elements); non-finite floats
    become the strings "nan", "inf", "-inf" so that every line stays strict JSON; other objects become ``str``."""
    if hasattr(value, "tolist") and callable(value.tolist):  # torch.Tensor, numpy arrays and scalars
        value = value.tolist()
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(k): to_json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_value(v) for v in value]
    return str(value)


class JSONLinesTracker(GeneralTracker):
    """Writes one JSON object per :meth:`log` call to ``<logging_dir>/<run_name>/metrics.jsonl``.

    Each line is ``{"step": step, "time": unix_time, **values}``, flushed at once so that a crashed run keeps every
    line written. :meth:`store_init_configuration` writes ``config.json`` beside it. Runs on the main process only.

    Use it as ``Accelerator(log_with=[JSONLinesTracker("run", logging_dir)], ...)`` followed by
    ``accelerator.init_trackers("run", config)``, or take :func:`build_trackers`.

    Args:
        run_name: sub-folder of ``logging_dir`` for this run ("" writes into ``logging_dir`` itself).
        logging_dir: folder of the logs.
    """

    name = "jsonl"
    requires_logging_directory = True
    main_process_only = True

    def __init__(self, run_name: str, logging_dir: str | os.PathLike) -> None:
        super().__init__()
        self.run_name = run_name
        self.logging_dir = Path(logging_dir) / run_name if run_name else Path(logging_dir)
        self._file = None

    @property
    def metrics_path(self) -> Path:
        """``<logging_dir>/<run_name>/metrics.jsonl``."""
        return self.logging_dir / "metrics.jsonl"

    @on_main_process
    def start(self) -> None:
        self.logging_dir.mkdir(parents=True, exist_ok=True)
        if self._file is None:
            self._file = open(self.metrics_path, "a")  # append: a resumed run continues the same file

    @property
    def tracker(self) -> Any:
        """The open ``metrics.jsonl`` file object (None before :meth:`start`)."""
        return self._file

    @on_main_process
    def store_init_configuration(self, values: dict) -> None:
        self.logging_dir.mkdir(parents=True, exist_ok=True)
        with open(self.logging_dir / "config.json", "w") as f:
            json.dump(to_json_value(dict(values)), f, indent=2)
            f.write("\n")

    @on_main_process
    def log(self, values: dict, step: int | None = None, **kwargs: Any) -> None:
        if self._file is None:
            self.start()
        record = {"step": step, "time": time.time()}
        record.update({str(k): to_json_value(v) for k, v in values.items()})
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    @on_main_process
    def finish(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def build_trackers(logging_dir: str | os.PathLike, run_name: str = "") -> list[GeneralTracker | str]:
    """Trackers for ``Accelerator(log_with=...)``: a :class:`JSONLinesTracker`, plus ``"tensorboard"`` when
    tensorboard (or tensorboardX) is installed. Nothing is imported here; pass ``project_dir=logging_dir`` to the
    Accelerator so that TensorBoard has its folder."""
    from accelerate.utils import is_tensorboard_available

    trackers: list[GeneralTracker | str] = [JSONLinesTracker(run_name, logging_dir)]
    if is_tensorboard_available():
        trackers.append("tensorboard")
    return trackers
