"""Command-line and YAML arguments of the training scripts, every field checked before anything runs.

``parse_arguments(PretrainArguments, ["--config", "a.yaml", "--max_steps", "50", "--model.initial_scale", "0.05"])``
reads a YAML preset, applies ``--field value`` overrides (values parsed as YAML; dict fields take dotted keys
``--backbone.<key> <value>``), checks every name (an unknown one is an error with a close-match suggestion, nested keys
of a config class too), coerces every value to the field's annotated type (``"5"`` for an int is fine, ``"abc"`` is an
error naming the field and the type) and calls the dataclass's ``validate()`` for the ranges.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import os
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import yaml

__all__ = ["parse_arguments", "config_keys"]

T = TypeVar("T")
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _suggest(name: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def config_keys(config_class: type) -> set[str]:
    """Keyword arguments a config class accepts: the named parameters of every ``__init__`` in its MRO (a transformers
    config takes its own fields and ``PretrainedConfig``'s common ones such as ``initializer_range``)."""
    keys: set[str] = set()
    for klass in inspect.getmro(config_class):
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        for param in inspect.signature(init).parameters.values():
            if param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY) and param.name != "self":
                keys.add(param.name)
    return keys


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _members(tp: Any) -> tuple[Any, ...]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.get_args(tp)
    return (tp,)


def _coerce_one(value: Any, tp: Any) -> Any:
    """``value`` as type ``tp`` (one member of a union), or raises ValueError."""
    base = typing.get_origin(tp) or tp
    if base is type(None):
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~")):
            return None
        raise ValueError
    if value is None:
        raise ValueError
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ValueError
    if base is int:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            text = value.strip().replace("_", "")
            try:
                return int(text)
            except ValueError:
                number = float(text)  # "1e5" is a whole number too
                if number.is_integer():
                    return int(number)
        raise ValueError
    if base is float:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            return float(value.strip())
        raise ValueError
    if base is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ValueError
    if base is list:
        if isinstance(value, (list, tuple)):
            return list(value)
        if isinstance(value, str):
            parsed = yaml.safe_load(value)
            if isinstance(parsed, list):
                return parsed
        raise ValueError
    if base is dict:
        if isinstance(value, Mapping):
            return dict(value)
        raise ValueError
    raise TypeError(f"unsupported field type {tp!r}")


def _coerce(name: str, value: Any, tp: Any) -> Any:
    members = _members(tp)
    # a value already of one of the types is kept as it is (an int stays an int in `int | list | None`)
    for member in members:
        base = typing.get_origin(member) or member
        if base is type(None) and value is None:
            return None
        if base is not type(None) and isinstance(value, base) and not (base is int and isinstance(value, bool)):
            return value
    for member in members:
        try:
            return _coerce_one(value, member)
        except (ValueError, TypeError):
            continue
    expected = " or ".join(_type_name(m) for m in members)
    raise ValueError(f"`{name}` must be {expected}, got {value!r}")


def _parse_cli_value(text: str) -> Any:
    """A command-line value parsed as YAML (``64``, ``[2, 2]``, ``false``, ``null``); YAML 1.1 leaves ``1e-3`` a
    string, which the field's type then coerces."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def format_help(cls: type) -> str:
    """``--help`` text of a dataclass of arguments: its docstring, then every field with its type and default."""
    hints = typing.get_type_hints(cls)
    lines = [
        f"usage: --config PRESET.yaml [--<field> <value> ...]  (values are parsed as YAML; dict fields take "
        f"--<field>.<key> <value>)\n\n{inspect.cleandoc(cls.__doc__ or '')}\n\nfields of {cls.__name__}:"
    ]
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        hint = getattr(hints[f.name], "__name__", str(hints[f.name]))
        lines.append(f"  --{f.name:<30} {hint:<14} default: {default!r}")
    return "\n".join(lines)


def parse_arguments(
    cls: type[T],
    argv: Sequence[str] | None = None,
    config_classes: Mapping[str, type | Callable[[dict], type]] | None = None,
) -> T:
    """Builds the dataclass ``cls`` from ``--config file.yaml`` and ``--field value`` overrides in ``argv``.

    Args:
        cls: a dataclass with annotated fields and optionally a ``validate()`` method (raising ValueError).
        argv: the command line without the program name (default ``sys.argv[1:]``).
        config_classes: for dict fields holding config keyword arguments, the config class whose keys they must be,
            or a callable taking the other parsed values (a dict) and returning it, e.g.
            ``{"backbone": lambda values: CONFIG_MAPPING[PRESETS[values["preset"]]], "model": UniPre3DConfig}``.

    Returns:
        The validated ``cls`` instance.

    Raises:
        ValueError: a malformed command line, an unreadable preset, an unknown field or nested key (with a close
            match), a value of the wrong type, or a value out of range (from ``validate()``).
    """
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    if "-h" in argv or "--help" in argv:
        print(format_help(cls))
        raise SystemExit(0)
    values: dict[str, Any] = {}

    overrides: list[tuple[str, str]] = []
    config_path = None
    i = 0
    while i < len(argv):
        token = argv[i]
        if not token.startswith("--") or len(token) == 2:
            raise ValueError(f"expected `--field value`, got {token!r}")
        key, has_value, text = token[2:].partition("=")
        if not has_value:
            if i + 1 >= len(argv):
                raise ValueError(f"`--{key}` needs a value")
            i += 1
            text = argv[i]
        i += 1
        if key == "config":
            config_path = text
        else:
            overrides.append((key, text))

    if config_path is not None:
        if not os.path.isfile(config_path):
            raise ValueError(f"`--config`: no file at {config_path!r}")
        with open(config_path) as f:
            try:
                loaded = yaml.safe_load(f)
            except yaml.YAMLError as err:
                raise ValueError(f"`--config` {config_path!r} is not valid YAML: {err}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ValueError(f"`--config` {config_path!r} must hold a mapping of fields, got {type(loaded).__name__}")
        for key, value in loaded.items():
            if key not in fields:
                raise ValueError(f"{config_path}: unknown field {key!r}{_suggest(str(key), list(fields))}")
            values[key] = value

    for key, text in overrides:
        head, dot, sub = key.partition(".")
        head = head.replace("-", "_")
        if head not in fields:
            raise ValueError(f"unknown field `--{head}`{_suggest(head, list(fields))}")
        if dot:
            if typing.get_origin(hints[head]) is not dict and hints[head] is not dict:
                raise ValueError(f"only dict fields take dotted keys; `--{head}` is not one (got `--{key}`)")
            if not sub:
                raise ValueError(f"`--{key}` names no key")
            base = values.get(head) or {}
            if not isinstance(base, dict):
                raise ValueError(f"`{head}` must be dict, got {base!r}")
            values[head] = {**base, sub: _parse_cli_value(text)}
        else:
            members = {typing.get_origin(m) or m for m in _members(hints[head])}
            # a str field takes the text as written ("--run_name 007" stays "007"); `null` still means None
            if str in members and not members - {str, type(None)}:
                values[head] = None if type(None) in members and text.lower() in ("null", "none", "~") else text
            else:
                values[head] = _parse_cli_value(text)

    coerced = {name: _coerce(name, value, hints[name]) for name, value in values.items()}
    for name, getter in (config_classes or {}).items():
        if name not in fields:
            raise ValueError(f"`config_classes` names {name!r}, which is no field of {cls.__name__}")
        given = coerced.get(name)
        if not given:
            continue
        if inspect.isclass(getter):
            config_class = getter
        else:
            defaults = {f.name: getattr(cls, f.name, None) for f in fields.values() if f.name not in coerced}
            config_class = getter({**defaults, **coerced})
        known = config_keys(config_class)
        for key in given:
            if key not in known:
                raise ValueError(
                    f"unknown key `{name}.{key}` for {config_class.__name__}{_suggest(str(key), sorted(known))}"
                )
    try:
        args = cls(**coerced)
    except TypeError as err:  # a dataclass without defaults for some fields
        raise ValueError(f"{cls.__name__}: {err}") from None
    if hasattr(args, "validate"):
        args.validate()
    return args
