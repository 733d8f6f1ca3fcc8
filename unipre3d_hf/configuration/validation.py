"""Field checks shared by the backbone configurations: a wrong type or an out-of-range value raises a ValueError that
names the configuration, the field and what is allowed, when the config is built and so also when a config.json is
loaded (``from_pretrained`` calls ``__init__``)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def check_ints(config_name: str, minimum: int = 1, **fields) -> None:
    """Every field is an integer (or a list of integers) >= ``minimum``; bools and strings are refused."""
    for name, value in fields.items():
        values = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
                raise ValueError(f"{config_name}: `{name}` must be integers >= {minimum}, got {value!r}")


def check_floats(
    config_name: str, minimum: float = 0.0, maximum: float = math.inf, strict: bool = False, **fields
) -> None:
    """Every field is a finite real number in ``[minimum, maximum]`` (``(minimum, maximum]`` with ``strict``)."""
    for name, value in fields.items():
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (value > minimum if strict else value >= minimum) and value <= maximum
        if not ok:
            low = f"> {minimum}" if strict else f">= {minimum}"
            high = "" if maximum == math.inf else f" and <= {maximum}"
            raise ValueError(f"{config_name}: `{name}` must be a number {low}{high}, got {value!r}")


__all__ = ["check_floats", "check_ints"]
